"""What the write model costs on this MongoDB-wire server, with the Kafka side left out.

Both models keep exactly one document per ``_id``, so both keep the exactly-once guarantee
when a batch is re-read: replace-upserts (ours; a re-read record overwrites its document, so a
record whose content changed under the same key wins) and insert-and-skip-duplicates (a
re-read record is refused with code 11000 and skipped; right for immutable records only).
Each is timed on a first load (every ``_id`` new) and on a redelivery of the same documents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection

from bench.load import BATCH, DB, insert_skipping_duplicates
from bench.timing import Sample, timed
from bench.topics import unique
from kafka_mongo_etl.mongo_sink import MongoSink


def documents(count: int, partitions: int = 3) -> dict[str, dict[str, Any]]:
    """``{_id: document}`` shaped as ours builds them from the produce task's records."""
    batch = "bench/write-model"
    return {
        f"{batch}/{num}": {
            "num": num,
            "batch": batch,
            "_kafka": {"partition": num % partitions, "offset": num // partitions},
        }
        for num in range(count)
    }


def _batches(docs: dict[str, dict[str, Any]]) -> Iterator[dict[str, dict[str, Any]]]:
    items = list(docs.items())
    for begin in range(0, len(items), BATCH):
        yield dict(items[begin : begin + BATCH])


def upsert(collection: Collection, docs: dict[str, dict[str, Any]]) -> int:
    sink = MongoSink(collection)
    return sum(sink.write(batch).written for batch in _batches(docs))


def insert_skip_duplicates(collection: Collection, docs: dict[str, dict[str, Any]]) -> int:
    return sum(
        insert_skipping_duplicates(collection, [{"_id": _id, **doc} for _id, doc in batch.items()])
        for batch in _batches(docs)
    )


@dataclass(frozen=True)
class WriteModel:
    name: str
    label: str
    write: Callable[[Collection, dict[str, dict[str, Any]]], int]


MODELS = (
    WriteModel("upsert", "replace-upsert, unordered bulk_write (ours)", upsert),
    WriteModel("insert_skip", "insert_many(ordered=False), skip code 11000", insert_skip_duplicates),
)


def measure(model: WriteModel, mongo_uri: str, docs: dict[str, dict[str, Any]]) -> tuple[Sample, Sample]:
    """(first load, redelivery) of ``docs`` into a fresh collection, which is dropped afterwards."""
    client: MongoClient = MongoClient(mongo_uri)
    name = unique("wm")
    collection = client[DB][name]
    try:
        first_seconds, first_written = timed(lambda: model.write(collection, docs))
        again_seconds, again_written = timed(lambda: model.write(collection, docs))
        stored = collection.count_documents({})
        client[DB].drop_collection(name)
    finally:
        client.close()
    detail = {"in_mongo": stored}
    return (
        Sample(first_seconds, len(docs), {**detail, "acknowledged": first_written}),
        Sample(again_seconds, len(docs), {**detail, "acknowledged": again_written}),
    )
