"""Changes to the project's code that the profiles suggest, measured without editing it.

Each wraps the unmodified project code from the outside, so the same run shows the effect:

- ``produce_with_metadata_first``: ask the producer for the topic's metadata before
  ``produce_batch``. The idempotent producer otherwise holds the first records for about half a
  second (it has no producer id and no partition leaders yet).
- ``CappedConsume``: never ask ``consume`` for more records than are left below the snapshot.
  ``consume(num_messages=n, timeout=t)`` returns early only when it has ``n`` messages, so the
  drain's last, partial batch otherwise always waits the full ``poll_timeout`` (1 s).
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import TopicPartition

from bench.load import LoadTarget, NullSink
from bench.topics import unique
from kafka_mongo_etl.clients import EtlConsumerHook, EtlProducerHook
from kafka_mongo_etl.drain import drain_to_watermark, json_document
from kafka_mongo_etl.ids import id_function
from kafka_mongo_etl.produce import produce_batch


def produce_with_metadata_first(_bootstrap_servers: str, topic: str, count: int) -> None:
    producer = EtlProducerHook(kafka_config_id="kafka_default").get_producer()
    producer.list_topics(topic=topic, timeout=30)
    produce_batch(producer, topic, unique("bench/batch"), 0, count)


class CappedConsume:
    """A consumer for ``drain_to_watermark`` that caps ``num_messages`` at the offsets left.

    It learns the snapshot from the drain's own ``get_watermark_offsets`` calls and the start
    offsets from its ``assign``; what is left is ``end - position`` over the unpaused partitions
    (an upper bound on the records left: transaction markers take offsets too).
    """

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self._ends: dict[tuple[str, int], int] = {}
        self._starts: dict[tuple[str, int], int] = {}
        self._paused: set[tuple[str, int]] = set()

    def get_watermark_offsets(self, partition: TopicPartition, *args: Any, **kwargs: Any) -> Any:
        low, high = self._consumer.get_watermark_offsets(partition, *args, **kwargs)
        self._ends[(partition.topic, partition.partition)] = high
        return low, high

    def assign(self, partitions: list[TopicPartition]) -> None:
        self._starts = {(tp.topic, tp.partition): tp.offset for tp in partitions}
        self._consumer.assign(partitions)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self._paused.update((tp.topic, tp.partition) for tp in partitions)
        self._consumer.pause(partitions)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        active = [key for key in self._starts if key not in self._paused]
        positions = self._consumer.position([TopicPartition(topic, p) for topic, p in active])
        left = 0
        for tp in positions:
            key = (tp.topic, tp.partition)
            position = tp.offset if tp.offset >= 0 else self._starts[key]
            left += max(0, self._ends[key] - position)
        return self._consumer.consume(num_messages=max(1, min(num_messages, left)), timeout=timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def null_sink_capped(target: LoadTarget) -> dict[str, Any]:
    """``ours_null_sink`` with ``CappedConsume``: the drain's own cost after the proposed change."""
    consumer = EtlConsumerHook(target.topic, target.group, "kafka_default").get_conn
    try:
        summary = drain_to_watermark(
            CappedConsume(consumer),
            target.topic,
            target.group,
            NullSink(),
            json_document(id_function("key")),
        )
    finally:
        consumer.close()
    return {"records": summary.records, "batches": summary.batches}
