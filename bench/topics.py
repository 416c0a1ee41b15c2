"""Topics for the benchmark: created before the clock starts, checked after it stops."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_mongo_etl.clients import PRODUCER_REQUIRED, PRODUCER_TUNING


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def create_topic(bootstrap_servers: str, topic: str, partitions: int) -> str:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)
    return topic


def records_on(bootstrap_servers: str, topic: str) -> int:
    """How many offsets the topic holds (sum of high - low watermarks over its partitions)."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": unique("bench_count")})
    try:
        metadata = consumer.list_topics(topic, timeout=30)
        total = 0
        for partition in metadata.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=30, cached=False
            )
            total += high - low
        return total
    finally:
        consumer.close()


def producer_config(bootstrap_servers: str) -> dict:
    """What ``EtlProducerHook`` builds from a connection whose extra is only ``bootstrap.servers``."""
    return {**PRODUCER_TUNING, "bootstrap.servers": bootstrap_servers, **PRODUCER_REQUIRED}
