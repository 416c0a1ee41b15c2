"""Where a topic's partitions stand and how far a consumer group is behind, read from Kafka now.

The one module that asks Kafka for topic metadata, watermarks and committed offsets, and the one
statement of the arithmetic on them; the drain, the on-arrival trigger, the ETL page and the
tooling all call it.

The words, per partition:

- **low / high watermark**: the first offset still on the partition, and the offset the next
  record will get. A consumer with ``isolation.level=read_committed`` (the ETL's) is told the
  last stable offset as its high watermark: records of open transactions are not counted.
- **committed**: the offset the group's next read starts from. librdkafka reports a partition
  the group never committed on as ``OFFSET_INVALID`` (-1001; any negative offset is "none"):
  ``None`` here, everywhere.
- **lag**: ``high - max(committed, low)``, never below 0 — the records the group's next drain
  reads. Without a commit the drain starts at the low watermark; a commit below it (records
  deleted by retention before the group loaded them) leaves the records from the low watermark
  on (the drain decides what the gap means: ``drain.start_offsets``); a commit above the high
  watermark (a truncated log) has nothing to read.

Two ways in, with the same arithmetic: a ``Consumer`` that is never assigned or subscribed (its
``group.id`` is the group asked about; ``committed()`` joins no group and commits nothing), and
an ``AdminClient`` (``group_offsets``: any group, never creates the topic; its high watermark is
the log end, where a read_committed consumer is told the last stable offset).

Topic existence: ``topic_partitions`` answers ``[]`` for a topic the broker does not know,
``partitions_of`` raises ``TopicNotFoundError``. Both send a metadata request naming the topic,
which on a broker with ``auto.create.topics.enable=true`` *creates* it when the client is not a
consumer (librdkafka's consumers default to ``allow.auto.create.topics=false``); to look
without creating from an admin client, use ``describe_topic``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import OffsetSpec, TopicDescription

from kafka_mongo_etl.errors import TopicNotFoundError
from kafka_mongo_etl.metadata import topic_metadata

log = logging.getLogger(__name__)

# librdkafka's "no committed offset" (-1001); any negative committed offset means the same.
NO_COMMIT = OFFSET_INVALID


def committed_or_none(offset: int) -> int | None:
    """``offset``, or ``None`` for librdkafka's negative "no committed offset" values."""
    return offset if offset >= 0 else None


def lag(low: int, high: int, committed: int | None) -> int:
    """The records the group's next drain reads: ``high - max(committed, low)``, at least 0.

    ``committed`` is ``None`` (or negative) when the group has no committed offset.
    """
    start = low if committed is None or committed < low else committed
    return max(high - start, 0)


@dataclass(frozen=True)
class PartitionOffsets:
    """One partition's watermarks and the group's committed offset (``None``: none)."""

    partition: int
    low: int
    high: int
    committed: int | None = None

    @property
    def lag(self) -> int:
        """Records the group's next drain reads (see ``lag``)."""
        return lag(self.low, self.high, self.committed)

    @property
    def records(self) -> int:
        """Offsets on the partition now (``high - low``; transaction markers count too)."""
        return self.high - self.low


def total_lag(offsets: dict[int, PartitionOffsets]) -> int:
    """The lag summed over the partitions of ``offsets``."""
    return sum(partition.lag for partition in offsets.values())


# --- topic existence -------------------------------------------------------------------------


def topic_partitions(client: Any, topic: str, timeout: float) -> list[int]:
    """The sorted partition ids of ``topic`` from the broker's metadata; ``[]`` if it has none.

    ``client`` is a ``Consumer``, ``Producer`` or ``AdminClient``. A topic the broker does not
    know, or reports with an error, has no partitions. Raises ``KafkaException`` when the broker
    cannot be reached within ``timeout`` (or refuses the login: ``metadata.topic_metadata``).
    """
    found = topic_metadata(client, topic, timeout).topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        return []
    return sorted(found.partitions)


def partitions_of(client: Any, topic: str, timeout: float) -> list[int]:
    """The sorted partition ids of ``topic``; ``TopicNotFoundError`` if the broker has none."""
    found = topic_metadata(client, topic, timeout).topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        reason = found.error if found is not None else "no metadata"
        raise TopicNotFoundError(
            f"topic {topic!r} does not exist on the broker ({reason}); produce to it first or check "
            "the topic name"
        )
    return sorted(found.partitions)


def describe_topic(admin: Any, topic: str, timeout: float) -> TopicDescription | None:
    """``topic``'s description from an ``AdminClient``, or ``None`` if the broker does not know it.

    Never creates the topic, whatever ``auto.create.topics.enable`` says (no metadata request
    names it). Waits in short steps, serving the client's error callback in between, so that a
    refused login fails at once (``clients.on_client_error``) instead of after ``timeout``.
    Raises ``KafkaException`` (``_TIMED_OUT`` when the broker did not answer in time).
    """
    future = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)[topic]
    deadline = time.monotonic() + timeout
    while not future.done() and time.monotonic() < deadline:
        admin.poll(0)
        concurrent.futures.wait([future], timeout=0.2)
    try:
        return future.result(timeout=max(0.1, deadline - time.monotonic()))
    except KafkaException as err:
        if err.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return None
        raise
    except concurrent.futures.TimeoutError:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"describing topic {topic!r}")) from None


# --- through a consumer ----------------------------------------------------------------------

_LEADER_MOVING = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
)

_COORDINATOR_NOT_READY = (
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
)


def watermarks(
    consumer: Any, topic: str, partitions: Iterable[int] | None, timeout: float
) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}`` read from the partition leaders now (never the cache).

    ``partitions=None`` reads every partition of ``topic`` (``TopicNotFoundError`` if it has
    none). Asks again, within ``timeout`` in all, while a partition's leader is moving or being
    elected (right after the topic was created, after a broker restart); then raises
    ``KafkaException``.
    """
    wanted = partitions_of(consumer, topic, timeout) if partitions is None else sorted(partitions)
    deadline = time.monotonic() + timeout
    return {p: _watermark(consumer, TopicPartition(topic, p), deadline) for p in wanted}


def _watermark(consumer: Any, tp: TopicPartition, deadline: float) -> tuple[int, int]:
    while True:
        try:
            return consumer.get_watermark_offsets(
                tp, timeout=max(0.1, deadline - time.monotonic()), cached=False
            )
        except KafkaException as err:
            error = err.args[0]
            if not (error.retriable() or error.code() in _LEADER_MOVING) or time.monotonic() >= deadline:
                raise
            log.info(
                "Watermarks of %s[%s] not available yet (%s); asking again",
                tp.topic,
                tp.partition,
                error.str(),
            )
            # The leader's election gives the client no event to wait on.
            time.sleep(0.2)


def committed(
    consumer: Any, topic: str, partitions: Iterable[int] | None, timeout: float
) -> dict[int, int | None]:
    """``{partition: offset}`` the consumer's group (its ``group.id``) has committed; ``None``: none.

    ``partitions=None`` reads every partition of ``topic`` (``TopicNotFoundError`` if it has
    none). Joins no group and commits nothing. Asks again, within ``timeout`` in all, while the
    group coordinator is not ready (a fresh or just-restarted broker loading its offsets topic);
    then, or for an error on one partition, raises ``KafkaException``.
    """
    wanted = partitions_of(consumer, topic, timeout) if partitions is None else sorted(partitions)
    if not wanted:
        return {}
    found = committed_offsets(consumer, [TopicPartition(topic, p) for p in wanted], timeout)
    failed = [tp for tp in found if tp.error is not None]
    if failed:
        raise KafkaException(failed[0].error)
    return {tp.partition: committed_or_none(tp.offset) for tp in found}


def committed_offsets(
    consumer: Any, partitions: list[TopicPartition], timeout: float
) -> list[TopicPartition]:
    """``consumer.committed(partitions)`` as librdkafka answers it (negative offsets, per-partition
    errors left on each ``TopicPartition``), asking again while the group coordinator is not
    ready. Prefer ``committed``; this is for callers that keep the raw answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.committed(partitions, timeout=max(0.1, deadline - time.monotonic()))
        except KafkaException as err:
            error = err.args[0]
            waiting = error.retriable() or error.code() in _COORDINATOR_NOT_READY
            if not waiting or time.monotonic() >= deadline:
                raise
            log.info("Group coordinator not ready (%s); asking again", error.str())
            # Nothing to wait on but time: the coordinator gives no signal when it is ready.
            time.sleep(0.5)


def partition_offsets(
    consumer: Any, topic: str, timeout: float, partitions: Iterable[int] | None = None
) -> dict[int, PartitionOffsets]:
    """Watermarks and the consumer's group's committed offsets of ``topic``'s partitions.

    ``partitions=None``: every partition, and ``{}`` for a topic the broker does not know (so a
    watcher sees "nothing yet" rather than an error). Watermarks are read first, then the
    committed offsets.
    """
    wanted = topic_partitions(consumer, topic, timeout) if partitions is None else sorted(partitions)
    if not wanted:
        return {}
    marks = watermarks(consumer, topic, wanted, timeout)
    commits = committed(consumer, topic, wanted, timeout)
    return {p: PartitionOffsets(p, low, high, commits.get(p)) for p, (low, high) in marks.items()}


def records_on(consumer: Any, topic: str, timeout: float) -> int:
    """Offsets on ``topic`` now (high minus low, summed over its partitions); 0 if it is unknown."""
    wanted = topic_partitions(consumer, topic, timeout)
    return sum(high - low for low, high in watermarks(consumer, topic, wanted, timeout).values())


# --- through an admin client -----------------------------------------------------------------


def group_offsets(admin: Any, topic: str, group_id: str, timeout: float) -> dict[int, PartitionOffsets]:
    """Watermarks of every partition of ``topic`` and ``group_id``'s committed offsets on them,
    through an ``AdminClient``: any group, and the topic is never created (``describe_topic``).

    The high watermark is the log end (the admin API's default isolation, read_uncommitted).
    Raises ``TopicNotFoundError`` for an unknown topic, ``KafkaException`` when the broker
    refuses, ``concurrent.futures.TimeoutError`` when it does not answer within ``timeout``.
    """
    description = describe_topic(admin, topic, timeout)
    if description is None:
        raise TopicNotFoundError(
            f"topic {topic!r} does not exist on the broker; produce to it first or check the topic name"
        )
    wait = timeout + 1.0
    tps = [TopicPartition(topic, info.id) for info in description.partitions]
    group = ConsumerGroupTopicPartitions(group_id, tps)
    committed_future = admin.list_consumer_group_offsets([group], request_timeout=timeout)[group_id]
    latest = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=timeout)
    earliest = admin.list_offsets({tp: OffsetSpec.earliest() for tp in tps}, request_timeout=timeout)
    found = committed_future.result(wait).topic_partitions
    commits = {tp.partition: committed_or_none(tp.offset) for tp in found}
    high = {tp.partition: future.result(wait).offset for tp, future in latest.items()}
    low = {tp.partition: future.result(wait).offset for tp, future in earliest.items()}
    return {p: PartitionOffsets(p, low[p], high[p], commits.get(p)) for p in sorted(high)}
