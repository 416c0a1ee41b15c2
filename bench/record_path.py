"""What encoding at decode time costs: the record path now vs the dict path it replaced.

    .venv/bin/python -m bench.record_path [--records 100000] [--repeats 5]

Times, on the project's own records (``{"num": n, "batch": ...}`` keyed ``batch/n``):

- ``dict path``: the record path before issue 10 (decode, checks, a dict), without the BSON
  encoding, which happened later, inside pymongo's bulk write;
- ``dict path + encode``: the same plus encoding each upsert as pymongo does for a dict;
- ``record path``: today's path (decode, MongoDB's rules, BSON once, the identity);
- ``record path + encode``: the same plus encoding each upsert as pymongo does, which for a
  ``RawBSONDocument`` body copies its bytes.

Pure CPU, no broker or server; the contenders take turns, ``--repeats`` times; the best time
is the one least disturbed by other work on the machine. Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import bson
from confluent_kafka import Message

from kafka_mongo_etl.ids import batch_id, id_function, record_key
from kafka_mongo_etl.records import json_document

BATCH = batch_id("kafka_to_mongo", "manual__2026-12-01T00:00:00+00:00")


def messages(count: int) -> list[Message]:
    return [
        Message(
            topic="testnum",
            partition=n % 3,
            offset=n // 3,
            key=record_key(BATCH, n).encode(),
            value=json.dumps({"num": n, "batch": BATCH}, separators=(",", ":")).encode(),
        )
        for n in range(count)
    ]


def dict_path(message: Message) -> tuple[Any, dict[str, Any]]:
    """The pre-issue-10 record path, as it was (checks that could raise other errors included)."""
    value = json.loads(message.value().decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("not an object")
    if [key for key in value if key.startswith("$")]:
        raise ValueError("invalid field")
    _id = message.key().decode("utf-8")
    value.pop("_id", None)
    value["_kafka"] = {"partition": message.partition(), "offset": message.offset()}
    return _id, value


def upsert_bytes(_id: Any, body: Any) -> bytes:
    """One update statement of a bulk write, encoded the way pymongo encodes it."""
    return bson.encode({"q": {"_id": _id}, "u": body, "upsert": True})


def timed(contenders: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Each contender's times, run in turn within each repeat (so a busy spell hits them all)."""
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, work in contenders.items():
            began = time.perf_counter()
            work()
            seconds[name].append(time.perf_counter() - began)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    batch = messages(args.records)
    to_document = json_document(id_function("key"))

    def old() -> None:
        for message in batch:
            dict_path(message)

    def old_encoded() -> None:
        for message in batch:
            upsert_bytes(*dict_path(message))

    def new() -> None:
        for message in batch:
            to_document(message)

    def new_encoded() -> None:
        for message in batch:
            document = to_document(message)
            upsert_bytes(document.id, document.body)

    times = timed(
        {
            "dict path": old,
            "dict path + encode": old_encoded,
            "record path": new,
            "record path + encode": new_encoded,
        },
        args.repeats,
    )
    print(f"{args.records} records, {args.repeats} runs each, alternating: best and median")
    for name, seconds in times.items():
        best, median = min(seconds), statistics.median(seconds)
        print(f"  {name:<22} {best:7.3f} s  {median:7.3f} s  {args.records / best:>10,.0f} records/s at best")
    for stage in ("", " + encode"):
        ratio = min(times[f"record path{stage}"]) / min(times[f"dict path{stage}"])
        print(f"  record path{stage} / dict path{stage}: {ratio:.2f} (best times)")


if __name__ == "__main__":
    main()
