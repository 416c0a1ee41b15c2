"""What each stage of the record path costs, per record, against a naive decode loop.

    .venv/bin/python -m bench.record_path [--records 100000] [--repeats 5] [--before FILE]

On the project's own records (``{"num": n, "batch": ...}`` keyed ``batch/n``), pure CPU, no broker
or server. The stages, each timed on inputs the previous one made:

- ``decode``: ``decode_json`` (UTF-8, JSON, int64 and double); ``checks``: ``check_id`` and
  ``check_fields`` (MongoDB's names and nesting); ``encode``: the finished document's BSON, the 16
  MiB bound, the ``RawBSONDocument``; ``whole``: ``json_document``'s builder called per record,
  which also makes the ``_id``, the identity, the document (``_id``, the value, ``_kafka``) and the
  ``Document``; ``batch``: the same documents as the drain builds them, ``build_documents`` on
  batches of 5,000 with the garbage collector paused, as ``Drain.build`` runs it (for a version
  without ``build_documents``, ``whole``'s builder per record);
- ``naive``: ``json.loads``, ``_id``, ``_kafka``, ``bson.encode`` (the bench's ``raw_decode``).

``--before FILE`` loads another version of records.py (``git show REV:plugins/kafka_mongo_etl/
records.py > FILE``) and times its stages in the same rounds, so a busy machine hits both alike.
Contenders take turns in each repeat; the best time is the one least disturbed by other work.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import bson
from confluent_kafka import Message

from bench.load import _document
from kafka_mongo_etl import records
from kafka_mongo_etl.ids import batch_id, id_function, record_key

BATCH = batch_id("kafka_to_mongo", "manual__2026-12-01T00:00:00+00:00")
STAGES = ("decode", "checks", "encode", "whole", "batch")
DRAIN_BATCH = 5_000  # DrainSettings.batch_size's default


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


def stages(module: ModuleType, batch: list[Message]) -> dict[str, Callable[[], Any]]:
    """One callable per stage of ``module``'s record path over ``batch``."""
    by_key = id_function("key")
    values = [module.decode_json(m) for m in batch]
    ids = [by_key(m, v) for m, v in zip(batch, values, strict=True)]
    # The documents as the record path makes them (a records.py before kafka_position: its form).
    position = getattr(module, "kafka_position", None) or (
        lambda m: {
            "partition": m.partition(),
            "offset": m.offset(),
            "applied": {str(m.partition()): m.offset()},
        }
    )
    documents = [{"_id": i, **v, "_kafka": position(m)} for m, v, i in zip(batch, values, ids, strict=True)]
    to_document = module.json_document(by_key)
    # How the drain builds a batch (a records.py before build_documents: record by record).
    many = getattr(module, "build_documents", None)

    def build(messages: list[Message]) -> Any:
        gc.disable()  # as Drain.build does, in both versions
        try:
            return many(to_document, messages) if many else [to_document(m) for m in messages]
        finally:
            gc.enable()

    def checks() -> None:
        for message, value, _id in zip(batch, values, ids, strict=True):
            module.check_id(_id, message)
            module.check_fields(value, message)

    return {
        "decode": lambda: [module.decode_json(m) for m in batch],
        "checks": checks,
        "encode": lambda: [module.encode(d, m) for d, m in zip(documents, batch, strict=True)],
        "whole": lambda: [to_document(m) for m in batch],
        "batch": lambda: [build(batch[at : at + DRAIN_BATCH]) for at in range(0, len(batch), DRAIN_BATCH)],
    }


def naive(batch: list[Message]) -> None:
    for message in batch:
        bson.encode(_document(message))  # the document raw_decode encodes, written the same way


def load_records(path: Path) -> ModuleType:
    """Another version of records.py, as a module of its own (it imports the current errors, ids)."""
    spec = importlib.util.spec_from_file_location("records_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def best_of(contenders: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Each contender's best CPU time (what this process ran, not what a busy machine gave others),
    run in turn within each repeat."""
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeats):
        for name, work in contenders.items():
            began = time.process_time()
            work()
            best[name] = min(best[name], time.process_time() - began)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", type=Path, help="another records.py to time beside this one")
    args = parser.parse_args()
    batch = messages(args.records)
    versions = {"now": records, **({"before": load_records(args.before)} if args.before else {})}
    contenders = {"naive": lambda: naive(batch)}
    for version, module in versions.items():
        contenders.update({f"{version}.{stage}": work for stage, work in stages(module, batch).items()})
    # The prepared inputs of every stage, for both versions, are hundreds of thousands of objects
    # that the drain never holds at once; frozen, the collector's passes cost what the work's own
    # garbage costs, and not whichever stage happens to trigger a full pass over them.
    gc.collect()
    gc.freeze()
    best = best_of(contenders, args.repeats)
    micro = {name: 1e6 * seconds / args.records for name, seconds in best.items()}
    print(f"{args.records} records, best of {args.repeats} turns; CPU microseconds per record")
    print(f"  {'stage':<10}" + "".join(f"{version:>10}" for version in versions))
    for stage in STAGES:
        print(f"  {stage:<10}" + "".join(f"{micro[f'{version}.{stage}']:>10.2f}" for version in versions))
    print(f"  {'naive':<10}{micro['naive']:>10.2f}")
    for version in versions:
        print(f"  naive / {version}.batch: {micro['naive'] / micro[f'{version}.batch']:.2f}")


if __name__ == "__main__":
    main()
