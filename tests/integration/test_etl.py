"""The ETL against the real broker and Mongo-wire server: exact counts and _id sets."""

from __future__ import annotations

import datetime as dt
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_mongo_etl.clients import EtlConsumerHook
from kafka_mongo_etl.drain import DrainSettings, drain_to_watermark, json_document
from kafka_mongo_etl.errors import DrainBusyError, TopicNotFoundError
from kafka_mongo_etl.ids import id_function, record_key
from kafka_mongo_etl.lease import DrainLease
from kafka_mongo_etl.mongo_sink import MongoSink, WriteResult
from kafka_mongo_etl.records import BadRecordError
from kafka_mongo_etl.tasks import ConsumeJob, default_group_id, run_consume, run_produce

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture
def job(connections, make_job) -> ConsumeJob:
    return make_job()


def produce(topic: str, batch: str, start: int, count: int, partitions: int = 3) -> dict[str, Any]:
    return run_produce(
        kafka_conn_id="kafka_default",
        topic=topic,
        partitions=partitions,
        batch=batch,
        start=start,
        count=count,
    )


def ids_in(collection) -> set:
    return {doc["_id"] for doc in collection.find({}, {"_id": 1})}


def expected_ids(batch: str, start: int, count: int) -> set[str]:
    return {record_key(batch, n) for n in range(start, start + count)}


def drain_into(job: ConsumeJob, sink: MongoSink, to_document=None, overlap: bool = True):
    """drain_to_watermark of the job's topic into ``sink`` in batches of 100; closes the consumer."""
    consumer = EtlConsumerHook(job.topic, job.consumer_group).get_conn
    try:
        return drain_to_watermark(
            consumer,
            job.topic,
            job.consumer_group,
            sink,
            to_document or json_document(id_function("key")),
            DrainSettings(batch_size=100, overlap=overlap),
        )
    finally:
        consumer.close()


def test_consume_loads_exactly_the_batch_and_a_rerun_changes_nothing(job, mongo_client) -> None:
    summary = produce(job.topic, job.batch, 0, 500)
    assert (summary["count"], summary["first"], summary["last"]) == (500, 0, 499)

    result = run_consume(job, summary)
    collection = mongo_client[job.mongo_db]["testnum"]
    assert result["loaded"] == 500 and result["records"] == 500
    assert collection.count_documents({}) == 500
    assert ids_in(collection) == expected_ids(job.batch, 0, 500)
    assert sorted(d["num"] for d in collection.find({}, {"num": 1})) == list(range(500))
    assert sum(p["end"] - p["start"] for p in result["partitions"].values()) == 500

    again = run_consume(job, summary)
    assert again["records"] == 0 and again["loaded"] == 0
    assert collection.count_documents({}) == 500
    audit = list(mongo_client[job.mongo_db]["etl_runs"].find())
    assert len(audit) == 1 and audit[0]["_id"] == job.batch and audit[0]["state"] == "success"


def test_retried_produce_and_retried_consume_add_no_document(job, mongo_client) -> None:
    produce(job.topic, job.batch, 0, 200)
    produce(job.topic, job.batch, 0, 200)  # the retry of the same run re-sends the same keys
    first = run_consume(job)
    assert first["records"] == 400
    collection = mongo_client[job.mongo_db]["testnum"]
    assert collection.count_documents({}) == 200
    assert ids_in(collection) == expected_ids(job.batch, 0, 200)

    # A consume retry that finds nothing committed (a crash before the commit) re-reads it all.
    from dataclasses import replace

    reread = run_consume(replace(job, group_id=job.consumer_group + ".reread"))
    assert reread["records"] == 400
    assert collection.count_documents({}) == 200


def test_records_after_the_snapshot_stay_for_the_next_run(job, kafka_broker, mongo_client) -> None:
    produce(job.topic, "test/first", 0, 300)
    collection = mongo_client[job.mongo_db]["testnum"]

    class ProducesMoreOnFirstWrite(MongoSink):
        produced_more = False

        def write(self, documents):
            if not self.produced_more:
                produce(job.topic, "test/later", 1000, 150)
                self.produced_more = True
            return super().write(documents)

    summary = drain_into(job, ProducesMoreOnFirstWrite(collection))
    assert summary.records == 300
    assert ids_in(collection) == expected_ids("test/first", 0, 300)

    second = run_consume(job)
    assert second["records"] == 150
    assert ids_in(collection) == expected_ids("test/first", 0, 300) | expected_ids("test/later", 1000, 150)


def test_offsets_are_committed_only_for_acknowledged_writes(job, mongo_client, committed_offsets) -> None:
    produce(job.topic, job.batch, 0, 300, partitions=1)
    collection = mongo_client[job.mongo_db]["testnum"]

    class FailsOnSecondWrite(MongoSink):
        writes = 0

        def write(self, documents):
            self.writes += 1
            if self.writes == 2:
                raise RuntimeError("MongoDB went away")
            return super().write(documents)

    with pytest.raises(RuntimeError, match="MongoDB went away"):
        drain_into(job, FailsOnSecondWrite(collection))
    committed = committed_offsets(job.topic, job.consumer_group, 1)
    documents = collection.count_documents({})
    # Whatever the first batch held was written and committed; nothing of the failed one.
    assert committed[0] == documents
    assert 0 < documents < 300

    run_consume(job)
    assert ids_in(collection) == expected_ids(job.batch, 0, 300)
    assert committed_offsets(job.topic, job.consumer_group, 1) == {0: 300}


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "in turn"])
def test_each_write_starts_after_the_previous_commit_and_the_next_batch_is_built_meanwhile(
    job, mongo_client, committed_offsets, overlap
) -> None:
    produce(job.topic, job.batch, 0, 500, partitions=1)
    collection = mongo_client[job.mongo_db]["testnum"]
    built_at: dict[int, float] = {}  # offset -> when its document was built
    build = json_document(id_function("key"))

    def to_document(message):
        built_at[message.offset()] = time.monotonic()
        return build(message)

    class SlowRecordingSink(MongoSink):
        active = most_active = 0
        # (first offset written, offset committed when the write began, when it ended)
        writes: list[tuple[int, int, float]] = []

        def write(self, documents):
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            try:
                committed = committed_offsets(job.topic, job.consumer_group, 1)[0]
                time.sleep(0.3)  # room for the main thread to read and build the next batch
                return super().write(documents)
            finally:
                first = min(document.message.offset() for document in documents)
                self.writes.append((first, committed, time.monotonic()))
                self.active -= 1

    sink = SlowRecordingSink(collection)
    summary = drain_into(job, sink, to_document, overlap=overlap)
    assert summary.records == summary.loaded == 500
    assert ids_in(collection) == expected_ids(job.batch, 0, 500)
    assert committed_offsets(job.topic, job.consumer_group, 1) == {0: 500}
    assert sink.most_active == 1
    # Batches of 100 (the first may be smaller when the first fetch is slow to arrive).
    firsts = [first for first, _, _ in sink.writes]
    assert firsts[0] == 0 and firsts == sorted(set(firsts)) and len(firsts) >= 5
    # Nothing of a batch was committed before its write began (a group with no commit yet reads
    # as a negative offset), and every batch before the one preceding it was. In turn, the
    # preceding batch was committed too; with overlap its commit runs while this write begins.
    began_at = [max(committed, 0) for _, committed, _ in sink.writes]
    if overlap:
        assert began_at[0] == 0
        assert all(began_at[k] in (firsts[k - 1], firsts[k]) for k in range(1, len(firsts)))
    else:
        assert began_at == firsts
    # Whether batch k + 1 was built before batch k's write ended.
    built_early = [built_at[firsts[k + 1]] < sink.writes[k][2] for k in range(len(firsts) - 1)]
    assert built_early == [overlap] * (len(firsts) - 1)


def test_a_bad_record_read_during_a_write_fails_the_drain_after_that_write_is_committed(
    job, kafka_broker, mongo_client, committed_offsets
) -> None:
    produce(job.topic, job.batch, 0, 250, partitions=1)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
    producer.produce(job.topic, value=b'{"num": 250,', key=b"truncated", partition=0)
    assert producer.flush(10) == 0
    del producer
    produce(job.topic, job.batch, 251, 49, partitions=1)
    collection = mongo_client[job.mongo_db]["testnum"]

    class SlowSink(MongoSink):
        def write(self, documents):
            time.sleep(0.2)  # the bad record is read while this write is in flight
            return super().write(documents)

    # Batches of at most 100: the one before the bad record's is being written when the bad
    # record is built; it is committed, and nothing from the bad record's batch is.
    with pytest.raises(BadRecordError, match=r"\[0\]@250 is not JSON"):
        drain_into(job, SlowSink(collection))
    committed = committed_offsets(job.topic, job.consumer_group, 1)[0]
    assert 150 < committed <= 250
    assert ids_in(collection) == expected_ids(job.batch, 0, committed)


def test_consumer_is_closed_when_the_write_fails(job, monkeypatch) -> None:
    produce(job.topic, job.batch, 0, 10)
    opened: list[Consumer] = []
    original = EtlConsumerHook._get_client

    def recording(self, config):
        consumer = original(self, config)
        opened.append(consumer)
        return consumer

    class BrokenSink:
        def __init__(self, *_args) -> None:
            pass

        def write(self, documents) -> WriteResult:
            raise RuntimeError("write refused")

    monkeypatch.setattr(EtlConsumerHook, "_get_client", recording)
    monkeypatch.setattr("kafka_mongo_etl.tasks.MongoSink", BrokenSink)
    with pytest.raises(RuntimeError, match="write refused"):
        run_consume(job)
    assert len(opened) == 1
    with pytest.raises(RuntimeError, match="closed"):
        opened[0].assignment()


def test_empty_topic_finishes_at_once_with_nothing_loaded(job, kafka_broker, mongo_client) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap_servers})
    admin.create_topics([NewTopic(job.topic, num_partitions=3, replication_factor=1)])[job.topic].result(30)
    result = run_consume(job)
    assert (result["records"], result["loaded"], result["batches"]) == (0, 0, 0)
    assert mongo_client[job.mongo_db]["testnum"].count_documents({}) == 0


def test_missing_topic_fails_naming_it(job) -> None:
    with pytest.raises(TopicNotFoundError, match=job.topic):
        run_consume(job)


def test_many_partitions(job, mongo_client, committed_offsets) -> None:
    produce(job.topic, job.batch, 0, 1200, partitions=12)
    result = run_consume(job)
    assert len(result["partitions"]) == 12
    assert all(p["committed"] == p["end"] for p in result["partitions"].values())
    assert ids_in(mongo_client[job.mongo_db]["testnum"]) == expected_ids(job.batch, 0, 1200)
    assert committed_offsets(job.topic, job.consumer_group, 12) == {
        int(p): v["end"] for p, v in result["partitions"].items()
    }


def test_later_offset_wins_for_one_id_in_a_batch(job, kafka_broker, mongo_client) -> None:
    from confluent_kafka import Producer

    produce(job.topic, job.batch, 0, 1, partitions=1)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
    producer.produce(job.topic, key=record_key(job.batch, 0), value=b'{"num": 0, "version": 2}')
    producer.produce(job.topic, key=record_key(job.batch, 0), value=b'{"num": 0, "version": 3}')
    assert producer.flush(30) == 0
    result = run_consume(job)
    assert (result["records"], result["loaded"], result["skipped"]) == (3, 1, 2)
    doc = mongo_client[job.mongo_db]["testnum"].find_one({"_id": record_key(job.batch, 0)})
    assert doc["version"] == 3 and doc["_kafka"]["offset"] == 2


def test_overlapping_drains_take_turns_and_load_one_copy(job, mongo_client) -> None:
    from dataclasses import replace

    produce(job.topic, job.batch, 0, 2000)
    runs = [replace(job, batch=f"test/run-{i}", run_id=f"run-{i}") for i in range(2)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = [future.result(timeout=120) for future in [pool.submit(run_consume, r) for r in runs]]
    assert sorted(r["records"] for r in results) == [0, 2000]
    assert ids_in(mongo_client[job.mongo_db]["testnum"]) == expected_ids(job.batch, 0, 2000)


def test_a_held_lease_refuses_a_second_drain(mongo_client, mongo_db) -> None:
    leases = mongo_client[mongo_db]["etl_leases"]
    held = DrainLease(leases, "drain:t:g", owner="run-a", ttl=60)
    held.acquire(wait=0)
    with pytest.raises(DrainBusyError, match="run-a"):
        DrainLease(leases, "drain:t:g", owner="run-b", ttl=60).acquire(wait=0)
    held.release()
    DrainLease(leases, "drain:t:g", owner="run-b", ttl=60).acquire(wait=0)


def test_default_group_is_per_target() -> None:
    assert default_group_id("testnum", "testnum") != default_group_id("testnum", "other")


def _bootstrap(job: ConsumeJob) -> str:
    from airflow.providers.apache.kafka.hooks.base import KafkaBaseHook

    return (
        KafkaBaseHook(job.kafka_conn_id).get_connection(job.kafka_conn_id).extra_dejson["bootstrap.servers"]
    )


@pytest.mark.airflow
def test_dag_runs_load_exactly_their_own_batches(airflow_db, connections, topic, mongo_db, mongo_client):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS)).dags["kafka_to_mongo"]
    conf = {"topic": topic, "count": 500, "mongo_db": mongo_db}
    first = dag.test(run_conf=conf, logical_date=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    assert first.state == "success"
    collection = mongo_client[mongo_db]["testnum"]
    first_batch = f"kafka_to_mongo/{first.run_id}"
    assert collection.count_documents({}) == 500
    assert ids_in(collection) == expected_ids(first_batch, 0, 500)
    assert sorted(d["num"] for d in collection.find({}, {"num": 1})) == list(range(500))

    second = dag.test(run_conf=conf, logical_date=dt.datetime(2026, 3, 1, 1, tzinfo=dt.UTC))
    assert second.state == "success"
    second_batch = f"kafka_to_mongo/{second.run_id}"
    assert collection.count_documents({}) == 1000
    assert ids_in(collection) == expected_ids(first_batch, 0, 500) | expected_ids(second_batch, 0, 500)
    audit = {d["_id"]: d for d in mongo_client[mongo_db]["etl_runs"].find()}
    assert set(audit) == {first_batch, second_batch}
    assert audit[second_batch]["loaded"] == 500 and audit[second_batch]["produced"]["count"] == 500
    assert audit[second_batch]["group_id"] == default_group_id(mongo_db, "testnum")


def test_drains_of_single_partitions_together_load_everything(job, kafka_broker, mongo_client) -> None:
    from dataclasses import replace

    produce(job.topic, job.batch, 0, 900, partitions=3)
    per_partition = [replace(job, partitions=(p,)) for p in range(3)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run_consume, per_partition))
    assert [list(r["partitions"]) for r in results] == [["0"], ["1"], ["2"]]
    assert sum(r["records"] for r in results) == 900
    assert ids_in(mongo_client[job.mongo_db]["testnum"]) == expected_ids(job.batch, 0, 900)
    audit_ids = {d["_id"] for d in mongo_client[job.mongo_db]["etl_runs"].find()}
    assert audit_ids == {f"{job.batch}:{p}" for p in range(3)}
    with pytest.raises(TopicNotFoundError, match=r"no partition \[7\]"):
        run_consume(replace(job, partitions=(7,)))


def test_insert_mode_loads_exactly_once_and_keeps_the_first_version(job, kafka_broker, mongo_client) -> None:
    from dataclasses import replace

    from confluent_kafka import Producer

    inserting = replace(job, write_mode="insert")
    produce(job.topic, job.batch, 0, 300)
    assert run_consume(inserting)["loaded"] == 300
    collection = mongo_client[job.mongo_db]["testnum"]
    # A re-read of everything (a crash before any commit) inserts nothing new.
    reread = run_consume(replace(inserting, group_id=job.consumer_group + ".reread"))
    assert reread["records"] == 300 and reread["dead_letters"] == 0
    assert collection.count_documents({}) == 300
    assert ids_in(collection) == expected_ids(job.batch, 0, 300)

    # A changed record with an existing _id is skipped: the first version stays.
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
    producer.produce(job.topic, key=record_key(job.batch, 7), value=b'{"num": 7, "version": 2}')
    assert producer.flush(30) == 0
    run_consume(inserting)
    assert "version" not in collection.find_one({"_id": record_key(job.batch, 7)})


def test_insert_mode_sends_a_unique_index_violation_to_dead_letters(job, kafka_broker, mongo_client) -> None:
    from dataclasses import replace

    from confluent_kafka import Producer

    from kafka_mongo_etl.tasks import DeadLetterPolicy

    collection = mongo_client[job.mongo_db]["testnum"]
    collection.create_index("email", unique=True)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap_servers})
    admin.create_topics([NewTopic(job.topic, num_partitions=1, replication_factor=1)])[job.topic].result(30)
    for key, email in (("a", "x@example.org"), ("b", "y@example.org"), ("c", "x@example.org")):
        producer.produce(job.topic, key=key, value=json.dumps({"email": email}).encode())
    assert producer.flush(30) == 0
    lenient = replace(job, write_mode="insert", dead_letter_policy=DeadLetterPolicy(max_count=None))
    result = run_consume(lenient)
    assert (result["loaded"], result["dead_letters"]) == (2, 1)
    assert ids_in(collection) == {"a", "b"}
    assert mongo_client[job.mongo_db]["testnum_dlq"].find_one()["key"] == b"c"
