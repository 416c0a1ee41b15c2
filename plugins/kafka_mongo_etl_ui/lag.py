"""How far a consumer group is behind, per partition, read from Kafka now.

Lag is ``high watermark - committed offset``: the records the next run would drain, by the one
rule in ``kafka_mongo_etl.offsets.lag``. A partition the group never committed on (or committed
below the records retention left) is read from its earliest offset, where the ETL's drain starts,
so its lag is every record still on the partition. The admin client only reads offsets: it joins
no group, commits nothing, and never creates the topic.
"""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass

from airflow.exceptions import AirflowException
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from kafka_mongo_etl import offsets
from kafka_mongo_etl.clients import admin_client
from kafka_mongo_etl.errors import TopicNotFoundError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int | None
    earliest: int
    high: int

    @property
    def lag(self) -> int:
        return offsets.lag(self.earliest, self.high, self.committed)


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

    Raises ``TopicNotFoundError``, ``KafkaException`` (broker away) or ``TimeoutError``
    (``offsets.group_offsets``).
    """
    found = offsets.group_offsets(admin, topic, group_id, timeout)
    return ConsumerLag(
        topic,
        group_id,
        tuple(PartitionLag(p.partition, p.committed, earliest=p.low, high=p.high) for p in found.values()),
    )


def consumer_lag(kafka_conn_id: str, topic: str, group_id: str, timeout: float = 5.0) -> ConsumerLag:
    """``read_consumer_lag`` through the connection's admin client; a failure becomes ``error``."""
    try:
        return read_consumer_lag(admin_client(kafka_conn_id), topic, group_id, timeout)
    except KafkaException as err:
        error = err.args[0].str() if err.args and hasattr(err.args[0], "str") else str(err)
    except (concurrent.futures.TimeoutError, TimeoutError):
        error = f"Kafka did not answer within {timeout:.0f}s"
    except TopicNotFoundError as err:
        error = str(err)
    except AirflowException as err:
        # The connection is missing or unusable.
        error = str(err)
    log.warning("Consumer lag of %s on %s unavailable: %s", group_id, topic, error)
    return ConsumerLag(topic, group_id, error=error)
