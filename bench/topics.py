"""Topics for the benchmark: created before the clock starts, checked after it stops."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_mongo_etl import offsets


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def create_topic(bootstrap_servers: str, topic: str, partitions: int, timeout: float = 30.0) -> str:
    """Create ``topic`` and wait until every partition has a leader: no contender's clock should
    include the broker finishing the creation (it takes longer as the broker holds more topics)."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    future = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic]
    future.result(timeout)
    deadline = time.monotonic() + timeout
    while True:
        found = admin.list_topics(topic=topic, timeout=timeout).topics.get(topic)
        if (
            found is not None
            and found.error is None
            and len(found.partitions) == partitions
            and all(p.leader >= 0 and p.error is None for p in found.partitions.values())
        ):
            return topic
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic} has no leader for every partition after {timeout:.0f}s")
        # Nothing to wait on but time: the broker gives no signal when the leaders are elected.
        time.sleep(0.05)


def records_on(bootstrap_servers: str, topic: str) -> int:
    """How many offsets the topic holds (sum of high - low watermarks over its partitions)."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": unique("bench_count")})
    try:
        return offsets.records_on(consumer, topic, timeout=30)
    finally:
        consumer.close()


def delete_topic(bootstrap_servers: str, topic: str, timeout: float = 30.0) -> None:
    """Delete ``topic`` (a large one the rest of the run does not need: its disk back)."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    admin.delete_topics([topic])[topic].result(timeout)
