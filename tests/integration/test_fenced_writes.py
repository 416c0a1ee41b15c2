"""Fenced writes on the real MongoDB-wire server: a write delivered late — a try paused past its
lease, a request the network held back, a re-read of one partition after a crash — never
replaces, updates or deletes content newer than its own record; and the batch boundaries never
change what is stored (a property test against applying the records one by one).

Each "try" here is its own ``MongoSink`` (its own write model), fed through the drain's own
``build`` and ``write`` steps with records made in the test, so the order in which two tries'
writes reach the server is the test's to choose. The assertions are on the final content.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import bson
import pytest
from confluent_kafka import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo.collection import Collection

from kafka_mongo_etl import write_models
from kafka_mongo_etl.drain import Drain, PartitionProgress
from kafka_mongo_etl.ids import id_function
from kafka_mongo_etl.mongo_sink import MongoSink
from kafka_mongo_etl.records import (
    MAX_STATEMENT_BYTES,
    STATEMENT_OVERHEAD_BYTES,
    json_document,
    kafka_position,
)
from kafka_mongo_etl.write_models import record_builder

TOPIC = "orders"
PARTITIONS = 3
# What the tests compare: the stored content, without the write's own clock.
CLOCK_FIELDS = ("_created_at", "_updated_at", "_deleted_at")


def record(
    partition: int, offset: int, key: str, value: dict[str, Any] | None, topic: str = TOPIC
) -> Message:
    """A record as the consumer returns it; a value of None is a tombstone."""
    raw = None if value is None else json.dumps(value).encode()
    return Message(topic=topic, partition=partition, offset=offset, key=key.encode(), value=raw)


class _DeadLetters:
    """Drain.write hands refused records to the batch's dead letters; nothing is written here."""

    def write(self, dead_letters) -> None:  # pragma: no cover - these tests call build and write only
        raise AssertionError("not called")


@dataclass
class Try:
    """One drain's writer: its own sink (and write model), the drain's build and write steps."""

    collection: Collection
    mode: str = "replace"
    id_strategy: str = "key"
    id_field: str | None = None

    def __post_init__(self) -> None:
        self.sink = MongoSink(self.collection, self.mode)
        id_for = id_function(self.id_strategy, self.id_field)
        self.to_document = record_builder(self.mode, json_document(id_for), id_for, self.id_strategy)

    def write(self, records: list[Message]) -> Drain:
        """Build and write ``records`` as one batch; the drain (its summary, its dead letters)."""
        drain = Drain(None, TOPIC, "g", self.sink, self.to_document, dead_letters=_DeadLetters())
        drain.summary.partitions = {
            p: PartitionProgress(start=0, end=10**9, committed=0) for p in range(PARTITIONS)
        }
        batch = drain.build(records)
        drain.write(batch)
        drain.dead = batch.dead
        return drain


@pytest.fixture
def collection(mongo_client, mongo_db) -> Collection:
    return mongo_client[mongo_db]["orders"]


def content(collection: Collection) -> dict[Any, dict[str, Any]]:
    """``{_id: document}`` without the write's clock (kept as whether the field is there)."""
    stored = {}
    for document in collection.find():
        for name in CLOCK_FIELDS:
            if name in document:
                document[name] = True
        stored[document["_id"]] = document
    return stored


def live(collection: Collection) -> dict[Any, dict[str, Any]]:
    """The documents a reader sees: tombstone markers filtered out."""
    return {_id: doc for _id, doc in content(collection).items() if "_deleted_at" not in doc}


# ---------------------------------------------------------------------------------------------
# Late writes


@pytest.mark.parametrize("rewrite_next", [False, True], ids=["insert-first", "rewrite-first"])
@pytest.mark.parametrize("mode", ["replace", "update"])
def test_an_older_batch_written_late_leaves_the_newer_content(collection, mode, rewrite_next) -> None:
    older = [record(0, n, key, {"v": 1, "key": key, "old": True}) for n, key in enumerate("abc")]
    newer = [record(0, 3 + n, key, {"v": 2, "key": key}) for n, key in enumerate("abc")]
    zombie, successor = Try(collection, mode), Try(collection, mode)
    zombie.sink.model.rewrite_next = rewrite_next
    # The successor re-read the zombie's batch and went on; the zombie's write arrives last.
    successor.write(older + newer)
    late = zombie.write(older)
    stored = live(collection)
    assert {_id: doc["v"] for _id, doc in stored.items()} == {"a": 2, "b": 2, "c": 2}
    # replace: the latest version whole; update: its fields set on what the earlier one set.
    assert all(("old" in doc) == (mode == "update") for doc in stored.values())
    assert all(doc["_kafka"]["applied"] == {"orders:0": doc["_kafka"]["offset"]} for doc in stored.values())
    assert late.summary.stale == 3 and late.summary.loaded == 3


def test_a_late_tombstone_does_not_delete_a_newer_document(collection) -> None:
    history = [record(0, 0, "a", {"v": 1}), record(0, 1, "a", None), record(0, 2, "a", {"v": 2})]
    zombie, successor = Try(collection, "delete_on_tombstone"), Try(collection, "delete_on_tombstone")
    successor.write(history)
    late = zombie.write(history[1:2])  # the zombie's batch held only the tombstone
    assert {_id: doc["v"] for _id, doc in live(collection).items()} == {"a": 2}
    assert (late.summary.deleted, late.summary.stale) == (0, 1)


def test_a_late_older_value_does_not_bring_a_deleted_document_back(collection) -> None:
    zombie, successor = Try(collection, "delete_on_tombstone"), Try(collection, "delete_on_tombstone")
    # a: written and deleted by the successor; b: the successor read only b's tombstone (its
    # value was the zombie's to write), so b was never stored when the tombstone came.
    successor.write([record(0, 0, "a", {"v": 1}), record(0, 1, "a", None)])
    successor.write([record(1, 1, "b", None)])
    zombie.write([record(0, 0, "a", {"v": 1}), record(1, 0, "b", {"v": 1})])
    assert live(collection) == {}
    markers = content(collection)
    assert set(markers) == {"a", "b"}
    assert markers["a"] == {
        "_id": "a",
        "_deleted_at": True,
        "_kafka": {"topic": TOPIC, "partition": 0, "offset": 1, "applied": {"orders:0": 1}},
    }
    # A newer value brings the key back, and its marker is gone.
    successor.write([record(1, 2, "b", {"v": 3})])
    assert {_id: doc["v"] for _id, doc in live(collection).items()} == {"b": 3}
    assert set(content(collection)) == {"a", "b"}


def test_tombstone_markers_are_purged_by_a_ttl_index(collection) -> None:
    Try(collection, "delete_on_tombstone").write([record(0, 0, "a", None)])
    index = collection.index_information()[write_models.MARKER_INDEX]
    assert index["key"] == [("_deleted_at", 1)]
    assert index["expireAfterSeconds"] == write_models.MARKER_RETENTION.total_seconds()
    assert isinstance(collection.find_one({"_id": "a"})["_deleted_at"], dt.datetime)
    # Made again on the next sink (another run): the same index, no error.
    Try(collection, "delete_on_tombstone").write([record(0, 1, "b", None)])
    assert len(collection.index_information()) == 2


def test_insert_mode_keeps_the_first_version_in_a_batch_and_against_late_writes(collection) -> None:
    zombie, successor = Try(collection, "insert"), Try(collection, "insert")
    successor.write([record(0, 0, "a", {"v": 1}), record(0, 1, "a", {"v": 2})])
    assert {_id: doc["v"] for _id, doc in live(collection).items()} == {"a": 1}
    zombie.write([record(0, 1, "a", {"v": 2})])
    successor.write([record(0, 2, "a", {"v": 3})])
    assert {_id: doc["v"] for _id, doc in live(collection).items()} == {"a": 1}


def test_update_mode_merges_the_versions_of_a_batch_in_offset_order(collection) -> None:
    Try(collection, "update").write(
        [record(0, 0, "a", {"a": 1, "b": 2}), record(0, 1, "a", {"a": 3}), record(0, 2, "b", {"x": 1})]
    )
    stored = live(collection)
    assert {k: v for k, v in stored["a"].items() if k in ("a", "b")} == {"a": 3, "b": 2}
    assert stored["a"]["_kafka"] == {"topic": TOPIC, "partition": 0, "offset": 1, "applied": {"orders:0": 1}}


def test_two_drains_interleaved_leave_the_latest_version_of_every_key(collection) -> None:
    """A whole-topic drain and a per-partition drain of partition 0 write the same records in
    other batches, their writes interleaved (finding 2's overlap): the latest version wins."""
    records = [record(n % 2, n // 2, "abcd"[n % 4], {"v": n}) for n in range(16)]
    whole, one = Try(collection), Try(collection)
    partition0 = [r for r in records if r.partition() == 0]
    whole.write(records[:6])
    one.write(partition0[:5])  # behind the whole drain's first batch
    whole.write(records[6:16])
    one.write(partition0[5:])
    one.write(partition0[:2])  # a retry of its first batch, delivered last
    latest = {r.key().decode(): json.loads(r.value())["v"] for r in records}
    assert {_id: doc["v"] for _id, doc in live(collection).items()} == latest


def test_a_reread_of_one_partition_never_restores_an_older_version_from_it(collection) -> None:
    """Finding 10: one _id from two partitions (ids from a field). The drain wrote partition 0's
    version and then partition 1's; a crash, and partition 0 is read again."""
    drain = Try(collection, id_strategy="field", id_field="order")
    drain.write([record(0, 0, "k0", {"order": "X", "v": 1}), record(1, 0, "k1", {"order": "X", "v": 2})])
    assert live(collection)["X"]["v"] == 2
    reread = Try(collection, id_strategy="field", id_field="order").write(
        [record(0, 0, "k0", {"order": "X", "v": 1})]
    )
    stored = live(collection)["X"]
    assert stored["v"] == 2
    assert stored["_kafka"] == {
        "topic": TOPIC,
        "partition": 1,
        "offset": 0,
        "applied": {"orders:0": 0, "orders:1": 0},
    }
    assert reread.summary.stale == 1


def test_two_topics_into_one_collection_are_fenced_apart(collection) -> None:
    """The same partition number of two topics: each topic's offsets are its own. Topic B's
    record at a low offset is newer than nothing of B, so it applies; a re-read of A stays stale."""
    writer = Try(collection)
    writer.write([record(0, 0, "a", {"v": 1}), record(0, 500, "a", {"v": 2})])
    writer.write([record(0, 3, "a", {"v": 3}, topic="returns")])
    assert live(collection)["a"]["v"] == 3
    reread = Try(collection).write([record(0, 0, "a", {"v": 1})])
    late = Try(collection).write([record(0, 2, "a", {"v": 0}, topic="returns")])
    stored = live(collection)["a"]
    assert stored["v"] == 3
    assert stored["_kafka"] == {
        "topic": "returns",
        "partition": 0,
        "offset": 3,
        "applied": {"orders:0": 500, "returns:0": 3},
    }
    assert (reread.summary.stale, late.summary.stale) == (1, 1)


@pytest.mark.parametrize("mode", ["replace", "update", "delete_on_tombstone"])
def test_a_fence_written_before_the_topic_key_is_kept(collection, mode) -> None:
    """A document stored by an earlier version (``applied`` keyed by partition alone) is fenced
    as the writing topic's: an older record stays stale, a newer one applies and moves the old
    entries under the topic's name."""
    legacy = {"partition": 0, "offset": 5, "applied": {"0": 5, "2": 9}}
    collection.insert_many([{"_id": "a", "v": 5, "_kafka": legacy}, {"_id": "b", "v": 5, "_kafka": legacy}])
    older = Try(collection, mode).write([record(0, 4, "a", {"v": 4}), record(2, 9, "b", {"v": 4})])
    assert older.summary.stale == 2
    assert {_id: doc["v"] for _id, doc in live(collection).items()} == {"a": 5, "b": 5}
    newer = Try(collection, mode).write([record(0, 6, "a", {"v": 6})])
    assert newer.summary.stale == 0
    stored = content(collection)
    assert stored["a"]["v"] == 6
    assert stored["a"]["_kafka"] == {
        "topic": TOPIC,
        "partition": 0,
        "offset": 6,
        "applied": {"orders:0": 6, "orders:2": 9},
    }
    # The moved entry still fences partition 2.
    assert Try(collection, mode).write([record(2, 8, "a", {"v": 0})]).summary.stale == 1
    assert stored["b"]["_kafka"] == legacy


def test_the_largest_document_with_a_large_id_goes_through_the_fence(collection) -> None:
    """Just under 16 MiB with a 64 KiB _id, written and then rewritten (the fenced pipeline
    carries the _id twice): stored, never a command-level failure that would wedge the batch."""
    key = "k" * 64 * 1024
    frame = len(
        bson.encode({"_id": key, "v": 0, "blob": "", "_kafka": kafka_position(record(0, 1, key, {}))})
    )
    room = MAX_STATEMENT_BYTES - STATEMENT_OVERHEAD_BYTES - len(bson.encode({"_id": key})) - frame
    drain = Try(collection)
    for offset in (0, 1):
        drain.write([record(0, offset, key, {"v": offset, "blob": "x" * room})])
    stored = collection.find_one({"_id": key}, {"blob": 0})
    assert stored["v"] == 1 and stored["_kafka"]["applied"] == {"orders:0": 1}


# ---------------------------------------------------------------------------------------------
# Batch boundaries do not change the result


def one_by_one(mode: str, records: list[Message]) -> tuple[dict[str, dict[str, Any]], set[tuple[int, int]]]:
    """What applying ``records`` one at a time stores by each mode's rule, and which records the
    collection's validator (no field ``bad``) refuses: the oracle of the property test."""
    stored: dict[str, dict[str, Any]] = {}
    refused = set()
    for message in records:
        key, partition, offset = message.key().decode(), message.partition(), message.offset()
        value = None if message.value() is None else json.loads(message.value())
        current = stored.get(key)
        applied = dict(current["_kafka"]["applied"]) if current else {}
        fence = f"{TOPIC}:{partition}"
        if applied.get(fence, -1) >= offset:
            continue
        kafka = {
            "topic": TOPIC,
            "partition": partition,
            "offset": offset,
            "applied": {**applied, fence: offset},
        }
        if value is None:
            stored[key] = {"_id": key, "_deleted_at": True, "_kafka": kafka}
            continue
        if mode == "insert":
            new = None if current else {"_id": key, **value, "_kafka": kafka}
        elif mode == "update":
            new = {
                "_id": key,
                **(current or {}),
                **value,
                "_kafka": kafka,
                "_created_at": True,
                "_updated_at": True,
            }
        else:
            new = {"_id": key, **value, "_kafka": kafka}
        if new is not None and "bad" in new:
            refused.add((partition, offset))
        elif new is not None:
            stored[key] = new
    return stored, refused


values = st.fixed_dictionaries(
    {}, optional={"x": st.integers(0, 3), "y": st.integers(0, 3), "bad": st.just(True)}
)


def histories(mode: str) -> st.SearchStrategy[list[Message]]:
    """Records over few keys and partitions (one key in several partitions too), offsets in order."""
    value = st.one_of(values, st.none()) if mode == "delete_on_tombstone" else values
    steps = st.lists(st.tuples(st.integers(0, PARTITIONS - 1), st.sampled_from("abc"), value), max_size=24)

    def numbered(items: list[tuple[int, str, dict | None]]) -> list[Message]:
        offsets = dict.fromkeys(range(PARTITIONS), 0)
        history = []
        for partition, key, item in items:
            history.append(record(partition, offsets[partition], key, item))
            offsets[partition] += 1
        return history

    return steps.map(numbered)


@pytest.mark.parametrize("mode", write_models.WRITE_MODES)
def test_batch_boundaries_do_not_change_what_is_stored(mode, mongo_client, mongo_db) -> None:
    database = mongo_client[mongo_db]
    runs = iter(range(10**6))

    @settings(
        max_examples=10,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(history=histories(mode))
    def check(history: list[Message]) -> None:
        expected, refused = one_by_one(mode, history)
        stored = {}
        for batch_size in (1, 7, 5000):
            collection = database.create_collection(f"run{next(runs)}", validator={"bad": {"$exists": False}})
            writer = Try(collection, mode)
            dead: set[tuple[int, int]] = set()
            for start in range(0, len(history), batch_size):
                batch = history[start : start + batch_size]
                drain = writer.write(batch)
                summary = drain.summary
                assert summary.loaded + summary.skipped + len(drain.dead) == len(batch)
                dead |= {(d.message.partition(), d.message.offset()) for d in drain.dead}
            stored[batch_size] = content(collection)
            assert stored[batch_size] == stored[1], f"batch size {batch_size} and 1 differ"
            assert stored[batch_size] == expected, "not what writing the records one by one stores"
            # Versions superseded in a batch are never sent, so never refused: fewer dead letters
            # (the collection is the same); one by one, exactly the refused records.
            assert dead == refused if batch_size == 1 else dead <= refused
            collection.drop()

    check()
