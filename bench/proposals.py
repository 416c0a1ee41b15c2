"""Changes to the project's code that the profiles suggest, measured without editing it.

Most wrap the unmodified project code from the outside, so the same run shows the effect:

- ``produce_with_metadata_first``: ask the producer for the topic's metadata before
  ``produce_batch``. The idempotent producer otherwise holds the first records for about half a
  second (it has no producer id and no partition leaders yet).
- ``CappedConsume``: never ask ``consume`` for more records than are left below the snapshot.
  ``consume(num_messages=n, timeout=t)`` returns early only when it has ``n`` messages, so the
  drain's last, partial batch otherwise always waits the full ``poll_timeout`` (1 s).
- ``SMALL_PREFETCH``: a consumer setting (``queued.min.messages``) a connection's extra can
  already override; the memory section measures it.

``produce_batch_proposed`` is the exception: a copy of ``produce_batch``'s loop with four
changes, because a loop cannot be changed from outside. It is measured, never used by the ETL.
"""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka import KafkaError, Message, Producer, TopicPartition

from bench.load import LoadTarget, NullSink
from bench.topics import unique
from kafka_mongo_etl.clients import (
    PRODUCER_REQUIRED,
    PRODUCER_TUNING,
    EtlConsumerHook,
    EtlProducerHook,
    on_client_error,
)
from kafka_mongo_etl.drain import drain_to_watermark, json_document
from kafka_mongo_etl.errors import DeliveryError
from kafka_mongo_etl.ids import id_function, record_key
from kafka_mongo_etl.produce import produce_batch

# librdkafka prefetches up to queued.min.messages records per partition; CONSUMER_TUNING sets
# 100,000. Two drain batches are enough to keep the drain fed.
SMALL_PREFETCH = {"queued.min.messages": 10_000}
# json.dumps with non-default separators builds a new JSONEncoder on every call.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
POLL_EVERY = 1_000


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


def produce_batch_proposed(producer: Producer, topic: str, batch: str, start: int, count: int) -> int:
    """``produce_batch``'s loop with four changes; returns the records sent.

    1. ``list_topics`` first (no half-second wait for the idempotent producer's first records);
    2. one reusable ``JSONEncoder`` instead of ``json.dumps(..., separators=...)`` per record;
    3. the producer built with ``delivery.report.only.error=true`` (a Python callback only for
       failures; the tally counts failures, and ``flush``'s return counts what is still queued);
    4. ``poll(0)`` every ``POLL_EVERY`` records instead of every record (a full queue is still
       served at once through ``BufferError``).
    """
    failed: list[str] = []

    def on_error(err: KafkaError | None, _message: Message) -> None:
        if err is not None:
            failed.append(str(err))

    producer.list_topics(topic=topic, timeout=30)
    produce, poll = producer.produce, producer.poll
    for num in range(start, start + count):
        key = record_key(batch, num)
        value = _ENCODE({"num": num, "batch": batch})
        while True:
            try:
                produce(topic, value=value, key=key, on_delivery=on_error)
                break
            except BufferError:
                poll(0.1)
        if num % POLL_EVERY == 0:
            poll(0)
    remaining = producer.flush(120)
    if failed or remaining:
        raise DeliveryError(topic, len(failed) + remaining, count, failed[0] if failed else "still queued")
    return count


def produce_proposed(bootstrap_servers: str, topic: str, count: int) -> None:
    """The proposed loop on the producer ``EtlProducerHook`` would build, plus report-only-errors."""
    producer = Producer(
        {
            "error_cb": on_client_error,
            **PRODUCER_TUNING,
            "bootstrap.servers": bootstrap_servers,
            "delivery.report.only.error": True,
            **PRODUCER_REQUIRED,
        }
    )
    produce_batch_proposed(producer, topic, unique("bench/proposed"), 0, count)
