"""Gaps are loud: records deleted by retention before they were loaded (AdminClient.delete_records
on the real broker) fail the run by default or are counted when skipped knowingly; a committed
offset past the end of the log fails saying how to reset."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_mongo_etl.clients import EtlConsumerHook
from kafka_mongo_etl.errors import OffsetAboveWatermarkError, RetentionGapError
from kafka_mongo_etl.tasks import ConsumeJob, run_consume


@pytest.fixture
def job(connections, make_job) -> ConsumeJob:
    return make_job()


def fill(bootstrap: str, topic: str, partitions: int, per_partition: int) -> None:
    """``per_partition`` records ``{"num": n}`` keyed ``p<partition>-<n>`` in every partition."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap})
    for p in range(partitions):
        for n in range(per_partition):
            producer.produce(topic, key=f"p{p}-{n}", value=json.dumps({"num": n}).encode(), partition=p)
    assert producer.flush(30) == 0


def commit(bootstrap: str, topic: str, group: str, offsets: dict[int, int]) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


def delete_before(bootstrap: str, topic: str, offsets: dict[int, int]) -> None:
    """What retention does: the records below ``offsets`` are gone, the low watermark moves up."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.delete_records([TopicPartition(topic, p, o) for p, o in offsets.items()])
    for future in futures.values():
        future.result(30)


def ids_in(collection) -> set:
    return {d["_id"] for d in collection.find({}, {"_id": 1})}


def test_records_lost_to_retention_fail_the_run_naming_them(
    job, kafka_broker, mongo_client, committed_offsets
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    fill(bootstrap, job.topic, partitions=3, per_partition=30)
    # The group had loaded 10 of partition 0, 25 of partition 1 and all of partition 2 ...
    commit(bootstrap, job.topic, job.consumer_group, {0: 10, 1: 25, 2: 30})
    # ... when retention deleted the first 20 records of every partition.
    delete_before(bootstrap, job.topic, {0: 20, 1: 20, 2: 20})

    with pytest.raises(RetentionGapError) as err:
        run_consume(job)
    message = str(err.value)
    assert "partition 0: 10 records (offsets 10..19)" in message
    assert "partition 1" not in message and "partition 2" not in message
    assert "on_retention_gap='skip'" in message
    from airflow.sdk.exceptions import AirflowFailException

    assert isinstance(err.value, AirflowFailException)  # a retry would find the same gap
    db = mongo_client[job.mongo_db]
    assert db.testnum.count_documents({}) == 0
    assert committed_offsets(job.topic, job.consumer_group, 3) == {0: 10, 1: 25, 2: 30}
    audit = db.etl_runs.find_one({"_id": job.batch})
    assert audit["state"] == "failed" and "partition 0: 10 records" in audit["error"]

    # The user accepts the loss knowingly: the same run again, told to skip.
    result = run_consume(replace(job, on_retention_gap="skip"))
    assert result["lost_to_retention"] == {"0": 10}
    assert result["partitions"]["0"]["lost"] == 10 and result["partitions"]["1"]["lost"] == 0
    assert result["records"] == 10 + 5
    assert ids_in(db.testnum) == {f"p0-{n}" for n in range(20, 30)} | {f"p1-{n}" for n in range(25, 30)}
    assert committed_offsets(job.topic, job.consumer_group, 3) == {0: 30, 1: 30, 2: 30}
    # The audit document is the successful try's: the count of what was lost, no stale error.
    audit = db.etl_runs.find_one({"_id": job.batch})
    assert audit["state"] == "success" and "error" not in audit
    assert audit["lost_to_retention"] == {"0": 10}


def test_a_new_group_starts_at_the_earliest_record_left_without_a_gap(
    job, kafka_broker, mongo_client
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    fill(bootstrap, job.topic, partitions=1, per_partition=30)
    delete_before(bootstrap, job.topic, {0: 12})
    result = run_consume(job)
    assert result["records"] == 18 and result["lost_to_retention"] == {}
    assert ids_in(mongo_client[job.mongo_db].testnum) == {f"p0-{n}" for n in range(12, 30)}


def test_a_committed_offset_past_the_end_fails_saying_how_to_reset(
    job, kafka_broker, mongo_client, committed_offsets
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    fill(bootstrap, job.topic, partitions=2, per_partition=30)
    # As if the topic had been deleted and created again after the group read 50 records.
    commit(bootstrap, job.topic, job.consumer_group, {0: 50, 1: 30})
    with pytest.raises(OffsetAboveWatermarkError) as err:
        run_consume(replace(job, on_retention_gap="skip"))
    message = str(err.value)
    assert "partition 0: committed 50, high watermark 30" in message and "partition 1" not in message
    assert f"--group {job.consumer_group} --topic {job.topic}:0 --reset-offsets --to-earliest" in message
    assert mongo_client[job.mongo_db].testnum.count_documents({}) == 0
    assert committed_offsets(job.topic, job.consumer_group, 2) == {0: 50, 1: 30}


def test_a_fetch_below_the_low_watermark_is_an_error_not_a_silent_jump(job, kafka_broker) -> None:
    """Retention that deletes records during a drain: the consumer does not skip to the earliest
    offset (auto.offset.reset=error), so the drain fails and its retry meets the gap above."""
    bootstrap = kafka_broker.bootstrap_servers
    fill(bootstrap, job.topic, partitions=1, per_partition=30)
    delete_before(bootstrap, job.topic, {0: 20})
    consumer = EtlConsumerHook(job.topic, job.consumer_group).get_conn
    try:
        consumer.assign([TopicPartition(job.topic, 0, 5)])
        messages = consumer.consume(num_messages=10, timeout=10)
    finally:
        consumer.close()
    assert messages, "the consumer returned nothing within 10 s"
    assert messages[0].error() is not None
    assert messages[0].error().code() == KafkaError._AUTO_OFFSET_RESET
    assert all(m.error() is not None for m in messages)
