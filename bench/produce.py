"""Produce contenders: N records ``{"num": n}`` to a fresh topic each, timed from client creation
to the last acknowledgement (``flush``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message, Producer

from bench.timing import Sample
from bench.topics import create_topic, records_on, unique
from kafka_mongo_etl.clients import EtlProducerHook
from kafka_mongo_etl.produce import produce_batch

log = logging.getLogger(__name__)

PARTITIONS = 3  # the DAG's default for a new topic


@dataclass(frozen=True)
class ProduceContender:
    name: str
    label: str
    run: Callable[[str, str, int], None]  # (bootstrap_servers, topic, count)


def ours(_bootstrap_servers: str, topic: str, count: int) -> None:
    """The produce task's code: the hook's idempotent, tuned producer and ``produce_batch``."""
    producer = EtlProducerHook(kafka_config_id="kafka_default").get_producer()
    produce_batch(producer, topic, unique("bench/batch"), 0, count)


def raw_confluent(bootstrap_servers: str, topic: str, count: int) -> None:
    """A raw confluent-kafka loop tuned by hand, with the same delivery guarantee as ours:
    idempotent, ``acks=all``, lz4, large batches, the topic's metadata fetched first, delivery
    reports for failures only, ``poll`` only when the local queue is full, one ``flush``."""
    failures: list[KafkaError] = []

    def on_error(err: KafkaError | None, _message: Message) -> None:
        if err is not None:
            failures.append(err)

    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500_000,
            "delivery.report.only.error": True,
            "on_delivery": on_error,
        }
    )
    producer.list_topics(topic=topic, timeout=30)
    produce, dumps, batch = producer.produce, json.dumps, unique("bench/raw")
    for num in range(count):
        key = f"{batch}/{num}"
        value = dumps({"num": num, "batch": batch}, separators=(",", ":"))
        try:
            produce(topic, value, key)
        except BufferError:
            producer.poll(0.1)
            produce(topic, value, key)
    remaining = producer.flush(120)
    if failures or remaining:
        raise RuntimeError(f"{len(failures) + remaining} of {count} records not delivered")


def tutorial(bootstrap_servers: str, topic: str, count: int) -> None:
    """The tutorial's kafka-python producer, without its ``sleep(5)`` between messages."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=[bootstrap_servers],
        value_serializer=lambda value: json.dumps(value).encode("utf-8"),
    )
    try:
        for num in range(count):
            producer.send(topic, value={"num": num})
        producer.flush()
    finally:
        producer.close()


CONTENDERS = (
    ProduceContender("ours", "ours: produce_batch (EtlProducerHook)", ours),
    ProduceContender("raw", "raw confluent-kafka loop, hand-tuned", raw_confluent),
    ProduceContender("tutorial", "tutorial kafka-python, no sleep", tutorial),
)


def measure(bootstrap_servers: str, count: int, contender: ProduceContender) -> Sample:
    """One timed run into a fresh topic; the topic's offsets are counted after the clock stops."""
    topic = create_topic(bootstrap_servers, unique(f"bench_produce_{contender.name}"), PARTITIONS)
    began = time.perf_counter()
    contender.run(bootstrap_servers, topic, count)
    seconds = time.perf_counter() - began
    landed = records_on(bootstrap_servers, topic)
    if landed != count:
        log.error("%s produced %s records, expected %s", contender.name, landed, count)
    return Sample(seconds, count, {"on_topic": landed})
