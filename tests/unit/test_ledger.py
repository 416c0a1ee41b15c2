"""``kafka_mongo_etl.ledger`` over a fake collection: what the drain records of its commits and
what it reads back when Kafka forgot a group's offsets. tests/integration/test_offset_ledger.py
runs it on the real server."""

from __future__ import annotations

import datetime as dt

from fakes import (
    TOPIC,
    FakeCollection,
    FakeConsumer,
    FakeLease,
    FakePartition,
    FakeSink,
    build_with,
    versions,
)

from kafka_mongo_etl.drain import Drain, DrainSettings
from kafka_mongo_etl.ledger import OffsetLedger


def test_recorded_offsets_are_read_back_for_the_partitions_asked_for_only() -> None:
    ledger = OffsetLedger(FakeCollection(), "orders", "g")  # type: ignore[arg-type]
    ledger.record({0: 10, 2: 7})
    assert ledger.read([0, 1, 2]) == {0: 10, 2: 7}
    assert ledger.read([2]) == {2: 7}
    assert ledger.read([]) == {}


def test_the_latest_commit_wins_even_one_that_moved_the_offset_back() -> None:
    """An offset reset on purpose is a commit in Kafka; the drain records it like any other."""
    ledger = OffsetLedger(FakeCollection(), "orders", "g")  # type: ignore[arg-type]
    ledger.record({0: 10})
    ledger.record({0: 3, 1: 4})
    assert ledger.read([0, 1]) == {0: 3, 1: 4}


def test_topics_and_groups_sharing_the_collection_keep_their_own_offsets() -> None:
    collection = FakeCollection()
    ledgers = {
        (topic, group): OffsetLedger(collection, topic, group)  # type: ignore[arg-type]
        for topic in ("orders", "orders.v2")
        for group in ("g", "g.other")
    }
    for n, ledger in enumerate(ledgers.values()):
        ledger.record({0: n})
    assert [ledger.read([0]) for ledger in ledgers.values()] == [{0: 0}, {0: 1}, {0: 2}, {0: 3}]
    assert len(collection.documents) == 4


def test_a_record_is_one_unordered_bulk_write_of_upserts_naming_topic_group_partition_and_time() -> None:
    collection = FakeCollection()
    before = dt.datetime.now(dt.UTC)
    OffsetLedger(collection, "orders", "g").record({1: 5, 0: 9})  # type: ignore[arg-type]
    [(requests, ordered)] = collection.bulk_writes
    assert ordered is False and len(requests) == 2
    stored = collection.documents["orders:g:1"]
    assert {k: stored[k] for k in ("topic", "group_id", "partition", "offset")} == {
        "topic": "orders",
        "group_id": "g",
        "partition": 1,
        "offset": 5,
    }
    assert stored["committed_at"].tzinfo is not None and stored["committed_at"] >= before


def test_nothing_to_record_writes_nothing() -> None:
    collection = FakeCollection()
    OffsetLedger(collection, "orders", "g").record({})  # type: ignore[arg-type]
    assert collection.bulk_writes == []


def test_a_drain_resumes_from_the_ledger_it_recorded_when_kafka_forgot_the_offsets() -> None:
    """Two drains over the real ledger class: the second finds no offset in Kafka (forgotten
    after offsets.retention.minutes) and starts where the first one committed."""
    collection = FakeCollection()
    logs = {0: FakePartition(list(versions(["a", "b"], rounds=2))), 1: FakePartition([])}
    events: list[tuple[object, ...]] = []
    first = FakeConsumer(logs, events)
    ledger = OffsetLedger(collection, TOPIC, "g")  # type: ignore[arg-type]
    Drain(
        first, TOPIC, "g", FakeSink(events), build_with(), DrainSettings(), FakeLease(), ledger=ledger
    ).run()
    assert ledger.read([0, 1]) == {0: 4, 1: 0}

    logs[0].records.extend(versions(["c"], rounds=1))
    second = FakeConsumer(logs, [])  # Kafka forgot every offset of the group
    sink = FakeSink([])
    summary = Drain(second, TOPIC, "g", sink, build_with(), DrainSettings(), FakeLease(), ledger=ledger).run()
    assert summary.records == 1 and summary.partitions[0].from_ledger and set(sink.documents) == {"c"}
    assert ledger.read([0, 1]) == {0: 5, 1: 0} == second.group_offsets
