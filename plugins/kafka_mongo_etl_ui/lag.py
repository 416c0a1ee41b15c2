"""How far a consumer group is behind, per partition, read from Kafka now.

Lag is ``high watermark - committed offset``: the records the next run would drain. A partition
the group never committed on is read from its earliest offset (where the ETL's drain starts a
group without commits), so its lag is every record still on the partition. The admin
client only reads offsets: it joins no group and commits nothing.
"""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass

from airflow.exceptions import AirflowException
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from kafka_mongo_etl.clients import admin_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int | None
    earliest: int
    high: int

    @property
    def lag(self) -> int:
        start = self.committed if self.committed is not None else self.earliest
        return max(self.high - start, 0)


@dataclass(frozen=True)
class ConsumerLag:
    """A group's lag on a topic, or the reason it could not be read (``error``)."""

    topic: str
    group_id: str
    partitions: tuple[PartitionLag, ...] = ()
    error: str | None = None

    @property
    def total(self) -> int:
        return sum(partition.lag for partition in self.partitions)


def read_consumer_lag(admin: AdminClient, topic: str, group_id: str, timeout: float = 5.0) -> ConsumerLag:
    """Committed offsets of ``group_id`` and watermarks of every partition of ``topic``.

    Raises ``KafkaException`` (unknown topic, broker away) or ``TimeoutError``.
    """
    wait = timeout + 1.0
    # describe_topics, not list_topics(topic): a metadata request for one topic can create it
    # on brokers with auto.create.topics.enable.
    description = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)[topic].result(wait)
    partitions = [TopicPartition(topic, info.id) for info in description.partitions]
    group = ConsumerGroupTopicPartitions(group_id, partitions)
    committed_future = admin.list_consumer_group_offsets([group], request_timeout=timeout)[group_id]
    latest = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions}, request_timeout=timeout)
    earliest = admin.list_offsets({tp: OffsetSpec.earliest() for tp in partitions}, request_timeout=timeout)
    committed = {tp.partition: tp.offset for tp in committed_future.result(wait).topic_partitions}
    high = {tp.partition: future.result(wait).offset for tp, future in latest.items()}
    low = {tp.partition: future.result(wait).offset for tp, future in earliest.items()}
    return ConsumerLag(
        topic,
        group_id,
        tuple(
            PartitionLag(
                partition=p,
                # A negative offset is librdkafka's "no committed offset" (OFFSET_INVALID).
                committed=committed[p] if committed.get(p, -1) >= 0 else None,
                earliest=low[p],
                high=high[p],
            )
            for p in sorted(high)
        ),
    )


def consumer_lag(kafka_conn_id: str, topic: str, group_id: str, timeout: float = 5.0) -> ConsumerLag:
    """``read_consumer_lag`` through the connection's admin client; a failure becomes ``error``."""
    try:
        return read_consumer_lag(admin_client(kafka_conn_id), topic, group_id, timeout)
    except KafkaException as err:
        error = err.args[0].str() if err.args and hasattr(err.args[0], "str") else str(err)
    except (concurrent.futures.TimeoutError, TimeoutError):
        error = f"Kafka did not answer within {timeout:.0f}s"
    except AirflowException as err:
        # The connection is missing or unusable.
        error = str(err)
    log.warning("Consumer lag of %s on %s unavailable: %s", group_id, topic, error)
    return ConsumerLag(topic, group_id, error=error)
