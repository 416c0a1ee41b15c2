"""The offset ledger against the real broker and MongoDB-wire server: when Kafka forgets a group's
committed offsets (deleting the empty group has the same effect as offsets.retention.minutes
passing), the next drain resumes from the ledger if the records are still there, and fails
naming the loss (or counts it, with on_retention_gap=skip) if retention deleted them unloaded."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_mongo_etl.errors import RetentionGapError
from kafka_mongo_etl.ledger import LEDGER_COLLECTION
from kafka_mongo_etl.tasks import ConsumeJob, run_consume


@pytest.fixture
def job(connections, make_job) -> ConsumeJob:
    return make_job()


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)


def produce_versions(bootstrap: str, topic: str, keys: range, version: int) -> None:
    """Version ``version`` of keys ``k<n>``, all to partition 0 (partition 1 stays idle)."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for n in keys:
        producer.produce(topic, key=f"k{n}", value=json.dumps({"num": n, "v": version}).encode(), partition=0)
    assert producer.flush(30) == 0


def forget_offsets(bootstrap: str, group: str) -> None:
    """What Kafka does offsets.retention.minutes after the group's last commit."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_consumer_groups([group], request_timeout=30)[group].result(30)


def delete_before(bootstrap: str, topic: str, partition: int, offset: int) -> None:
    """What retention does: the records below ``offset`` are gone, the low watermark moves up."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_records([TopicPartition(topic, partition, offset)]).values():
        future.result(30)


def contents(collection) -> dict[str, int]:
    return {d["_id"]: d["v"] for d in collection.find()}


def test_a_drain_after_kafka_forgot_its_offsets_resumes_from_the_ledger(
    job, kafka_broker, mongo_client, committed_offsets
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    create_topic(bootstrap, job.topic, partitions=2)
    produce_versions(bootstrap, job.topic, range(40), version=0)
    produce_versions(bootstrap, job.topic, range(20), version=1)
    assert run_consume(job)["records"] == 60
    db = mongo_client[job.mongo_db]
    ledger = {d["partition"]: d["offset"] for d in db[LEDGER_COLLECTION].find()}
    # Partition 1 never had a record: committed (0) all the same, so Kafka keeps it alive.
    assert ledger == {0: 60, 1: 0} == committed_offsets(job.topic, job.consumer_group, 2)

    forget_offsets(bootstrap, job.consumer_group)
    assert all(o < 0 for o in committed_offsets(job.topic, job.consumer_group, 2).values())
    produce_versions(bootstrap, job.topic, range(10, 50), version=2)  # 10 new keys, 30 new versions

    result = run_consume(replace(job, batch="test/run-2", run_id="run-2"))
    assert result["records"] == 40, "exactly the new records, not the whole log again"
    assert result["partitions"]["0"]["from_ledger"] and result["partitions"]["0"]["start"] == 60
    assert result["lost_to_retention"] == {}
    expected = {f"k{n}": 1 for n in range(10)} | {f"k{n}": 2 for n in range(10, 50)}
    assert contents(db.testnum) == expected
    assert committed_offsets(job.topic, job.consumer_group, 2) == {0: 100, 1: 0}
    assert {d["partition"]: d["offset"] for d in db[LEDGER_COLLECTION].find()} == {0: 100, 1: 0}


def test_records_deleted_while_kafka_had_forgotten_the_offsets_fail_the_run_naming_them(
    job, kafka_broker, mongo_client, committed_offsets
) -> None:
    """A week-long pause: Kafka forgot the offsets, and retention deleted records that were
    never loaded. Without the ledger the drain would start at the low watermark and say nothing."""
    bootstrap = kafka_broker.bootstrap_servers
    create_topic(bootstrap, job.topic, partitions=2)
    produce_versions(bootstrap, job.topic, range(30), version=0)
    run_consume(job)
    forget_offsets(bootstrap, job.consumer_group)
    produce_versions(bootstrap, job.topic, range(30), version=1)  # offsets 30..59, never loaded
    delete_before(bootstrap, job.topic, 0, 45)

    retry = replace(job, batch="test/run-2", run_id="run-2")
    with pytest.raises(RetentionGapError) as err:
        run_consume(retry)
    message = str(err.value)
    assert "partition 0: 15 records (offsets 30..44)" in message and "partition 1" not in message
    assert "forgotten the group's committed offsets of partition(s) 0" in message
    db = mongo_client[job.mongo_db]
    assert contents(db.testnum) == {f"k{n}": 0 for n in range(30)}, "nothing loaded"
    assert all(o < 0 for o in committed_offsets(job.topic, job.consumer_group, 2).values())

    # Accepted knowingly: the loss is counted, the rest loaded.
    result = run_consume(replace(retry, on_retention_gap="skip"))
    assert result["lost_to_retention"] == {"0": 15} and result["records"] == 15
    assert contents(db.testnum) == {f"k{n}": 0 for n in range(15)} | {f"k{n}": 1 for n in range(15, 30)}
    assert committed_offsets(job.topic, job.consumer_group, 2) == {0: 60, 1: 0}
