"""produce never lets a metadata request create its topic: on a broker with
auto.create.topics.enable=true (Kafka's default, and the apache/kafka image's), a new topic gets
the partitions asked for, not the broker's default of 1."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from devstack.kafka import KafkaBroker
from devstack.process import free_port
from kafka_mongo_etl.offsets import describe_topic
from kafka_mongo_etl.produce import ensure_topic
from kafka_mongo_etl.tasks import run_produce


@pytest.fixture(scope="module")
def auto_creating_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(
        tmp_path_factory.mktemp("kafka-auto-create"),
        port=free_port(),
        controller_port=free_port(),
        extra_properties={"auto.create.topics.enable": "true", "num.partitions": "1"},
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def admin(auto_creating_broker: KafkaBroker) -> AdminClient:
    return AdminClient({"bootstrap.servers": auto_creating_broker.bootstrap_servers})


def new_topic() -> str:
    return f"t_topics_{uuid.uuid4().hex[:10]}"


def partition_count(admin: AdminClient, topic: str) -> int:
    """The topic's partitions, asked until the broker knows it (bounded): a topic just created
    reaches the broker's metadata a moment after ``create_topics`` returns. Describing never
    creates it."""
    deadline = time.monotonic() + 30
    while (found := describe_topic(admin, topic, timeout=10)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert found is not None, f"the broker does not know {topic} 30 s after it was created"
    return len(found.partitions)


def test_the_broker_does_auto_create_on_a_named_metadata_request(admin: AdminClient) -> None:
    # The control: what ensure_topic must not do. An admin client's metadata request for a named
    # topic makes this broker create it, with 1 partition.
    topic = new_topic()
    admin.list_topics(topic=topic, timeout=10)
    # The broker creates it in the background: ask until it is there (bounded).
    deadline = time.monotonic() + 30
    while topic not in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.2)
    assert partition_count(admin, topic) == 1


def test_ensure_topic_creates_the_topic_with_the_partitions_asked_for(admin: AdminClient) -> None:
    topic = new_topic()
    assert ensure_topic(admin, topic, partitions=4, timeout=15) is True
    assert partition_count(admin, topic) == 4
    assert ensure_topic(admin, topic, partitions=4, timeout=15) is False
    # An existing topic keeps its own count.
    assert ensure_topic(admin, topic, partitions=9, timeout=15) is False
    assert partition_count(admin, topic) == 4


def test_an_existing_topic_is_left_as_it_is(admin: AdminClient) -> None:
    topic = new_topic()
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    assert ensure_topic(admin, topic, partitions=6, timeout=15) is False
    assert partition_count(admin, topic) == 2


def test_produce_task_gets_its_partitions_on_an_auto_creating_broker(
    auto_creating_broker: KafkaBroker, admin: AdminClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = {
        "conn_type": "kafka",
        "extra": {"bootstrap.servers": auto_creating_broker.bootstrap_servers},
    }
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_DEFAULT", json.dumps(connection))
    topic = new_topic()
    summary = run_produce(
        kafka_conn_id="kafka_default", topic=topic, partitions=5, batch="test/topics", start=0, count=50
    )
    assert summary["count"] == 50
    assert partition_count(admin, topic) == 5
    watermarks = [admin_watermark(auto_creating_broker, topic, p) for p in range(5)]
    assert sum(watermarks) == 50


def admin_watermark(broker: KafkaBroker, topic: str, partition: int) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": "watermarks"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)[1]
    finally:
        consumer.close()
