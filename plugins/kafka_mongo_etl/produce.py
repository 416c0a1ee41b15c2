"""Produce one numbered batch to a topic.

Delivery guarantee: at least once per record, and every re-send of a batch carries the same
keys, so the MongoDB load (keyed by record key) keeps exactly one copy.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_mongo_etl.errors import DeliveryError
from kafka_mongo_etl.ids import record_key
from kafka_mongo_etl.metadata import topic_metadata
from kafka_mongo_etl.offsets import describe_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProduceSummary:
    topic: str
    batch: str
    count: int
    first: int
    last: int
    seconds: float
    records_per_second: float

    def as_dict(self) -> dict:
        return asdict(self)


def ensure_topic(admin: AdminClient, topic: str, partitions: int, timeout: float = 30.0) -> bool:
    """Create ``topic`` with ``partitions`` unless it exists; True if it was created.

    An existing topic keeps its partition count (changing it would move keys between partitions).
    The topic is *described*, never looked up by a metadata request that names it: on a broker
    with ``auto.create.topics.enable=true`` (Kafka's default) that request alone would create it
    with the broker's default partition count before ``create_topics`` could.
    """
    existing = describe_topic(admin, topic, timeout)
    if existing is not None:
        if len(existing.partitions) != partitions:
            log.info(
                "Topic %s exists with %s partitions (asked for %s); leaving it as it is",
                topic,
                len(existing.partitions),
                partitions,
            )
        return False
    future = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=-1)])[topic]
    try:
        future.result(timeout)
    except KafkaException as err:
        if err.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise
    log.info("Created topic %s with %s partitions", topic, partitions)
    return True


# One encoder for the batch: json.dumps with separators builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":")).encode
# Serving delivery reports after every record costs a fifth of the loop; the producer is set to
# report failures only (clients.PRODUCER_TUNING), so every thousand records is enough.
_POLL_EVERY = 1000


class _DeliveryTally:
    """The one delivery callback: counts failed records (the producer reports only failures).

    With ``delivery.report.only.error`` a success calls nothing; a record is acknowledged when
    the producer has settled it (``flush()`` returned with it out of the queue) without a
    failure report. So the acknowledged count is known only once every handed record is
    settled: handed − failed.
    """

    def __init__(self) -> None:
        self.failed = 0
        self.first_error: str | None = None

    def __call__(self, err: KafkaError | None, _message: Message) -> None:
        if err is None:
            return
        self.failed += 1
        if self.first_error is None:
            self.first_error = str(err)


def _settle_after_failure(producer: Producer, timeout: float) -> int:
    """Stop at the first delivery error: drop what is still queued, settle every handed record.

    Records still waiting in the local queue (and those in flight, if they do not settle within
    ``timeout``) are purged; each purged record gets its failure report, so afterwards the tally
    has counted every record that was not acknowledged. Returns the records left unsettled.
    """
    producer.purge(in_queue=True, in_flight=False)
    remaining = producer.flush(timeout)
    if remaining:
        producer.purge(in_queue=True, in_flight=True)
        remaining = producer.flush(1.0)
    return remaining


def produce_batch(
    producer: Producer,
    topic: str,
    batch: str,
    start: int,
    count: int,
    flush_timeout: float = 120.0,
    progress_every: float = 10.0,
    where: str = "",
) -> ProduceSummary:
    """Send ``{"num": n, "batch": batch}`` keyed ``batch/n`` for n in ``start .. start+count-1``.

    The first delivery error stops the loop: nothing more is queued, what is still queued is
    dropped, and ``DeliveryError`` says how many records were acknowledged and how many were
    not (the task's retry sends the whole batch again, under the same keys). A broker outage
    therefore fails the task once the oldest queued record reaches ``message.timeout.ms``
    (30 s by default, clients.PRODUCER_TUNING). ``where`` names the connection in that error.
    """
    tally = _DeliveryTally()
    timed_out: str | None = None
    began = time.monotonic()
    # Metadata before the first record, twice. Without it the first batch waits about half a
    # second, and a refused login surfaces here, at once. The second request is answered by a
    # broker the first one named: when the first answer came over the bootstrap connection,
    # which librdkafka then drops, the idempotent producer found no broker to ask for its
    # producer id and retries only on its 500 ms timer, unless another metadata answer arrives
    # (librdkafka 2.16, seen with debug=eos in 3 of 60 starts; 0 of 60 with the second request).
    topic_metadata(producer, topic, timeout=30.0)
    topic_metadata(producer, topic, timeout=30.0)
    handed = _send(producer, topic, batch, start, count, tally, began + progress_every, progress_every)
    if tally.failed:
        log.error(
            "Delivery to %s failed (%s) after %s of %s records were handed to the producer; stopping",
            topic,
            tally.first_error,
            handed,
            count,
        )
        remaining = _settle_after_failure(producer, timeout=min(flush_timeout, 10.0))
    else:
        remaining = producer.flush(flush_timeout)
        if remaining:
            timed_out = f"{remaining} still queued after {flush_timeout:.0f}s"
            remaining = _settle_after_failure(producer, timeout=0)
    seconds = time.monotonic() - began
    stopped_early = handed < count
    # Not acknowledged: the failure reports, anything that never settled, and the records the
    # loop never handed over because it stopped at the first error.
    failed = tally.failed + remaining + (count - handed)
    if failed:
        first_error = timed_out or tally.first_error or "no delivery report"
        raise DeliveryError(topic, failed, count, first_error, where=where, stopped_early=stopped_early)
    summary = ProduceSummary(
        topic=topic,
        batch=batch,
        count=count,
        first=start,
        last=start + count - 1,
        seconds=round(seconds, 3),
        records_per_second=round(count / seconds, 1) if seconds > 0 else float(count),
    )
    log.info(
        "Produced %s records (%s..%s) to %s in %.2fs (%.0f records/s)",
        count,
        summary.first,
        summary.last,
        topic,
        seconds,
        summary.records_per_second,
    )
    return summary


def _send(
    producer: Producer,
    topic: str,
    batch: str,
    start: int,
    count: int,
    tally: _DeliveryTally,
    next_report: float,
    progress_every: float,
) -> int:
    """Hand the batch's records to ``producer`` until done or the first delivery error; how
    many were handed over. Logs progress every ``progress_every`` seconds."""
    produce = producer.produce
    handed = 0
    for num in range(start, start + count):
        key = record_key(batch, num)
        value = _encode({"num": num, "batch": batch})
        while not tally.failed:
            try:
                produce(topic, value=value, key=key, on_delivery=tally)
                handed += 1
                break
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                producer.poll(0.1)
        if tally.failed:
            break
        if num % _POLL_EVERY == 0:
            producer.poll(0)
            if time.monotonic() >= next_report:
                log.info("Produced %s of %s records to %s", num - start + 1, count, topic)
                next_report += progress_every
    return handed
