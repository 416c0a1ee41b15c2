"""Drain every partition of a topic up to the high watermarks seen at start, into a sink.

The stopping line is a snapshot of the high watermarks taken before the first fetch; records
produced after it stay for the next run. A partition is done when the consumer's *position*
reaches its snapshot (not when "the last offset seen" is high - 1: transaction markers and
compaction leave gaps). Offsets are committed synchronously, batch by batch, and only after the
sink acknowledged every record of the batch, so a crash at any point re-reads, and never skips.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import bson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from kafka_mongo_etl.errors import EtlError, TopicNotFoundError
from kafka_mongo_etl.ids import IdFunction
from kafka_mongo_etl.metadata import topic_metadata
from kafka_mongo_etl.mongo_sink import WriteResult

log = logging.getLogger(__name__)


class Sink(Protocol):
    def write(self, documents: dict[Any, dict[str, Any]]) -> WriteResult: ...


class Lease(Protocol):
    def renew(self) -> None: ...


class BadRecordError(EtlError):
    """A record that cannot become a document; ``code`` names the kind, the message the record."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be loaded, and why (``stage`` is ``decode`` or ``write``)."""

    message: Message
    code: str
    reason: str
    stage: str


class DeadLetterSink(Protocol):
    def write(self, dead_letters: list[DeadLetter]) -> None: ...


# MongoDB refuses documents over 16 MiB; leave room for the _id and the _kafka field.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024 - 16 * 1024
# JSON smaller than this cannot expand past the limit as BSON, so its size is not measured.
_MEASURE_ABOVE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class DrainSettings:
    batch_size: int = 5_000
    poll_timeout: float = 1.0
    # How long the position may stay below the snapshot with nothing to read (an open
    # transaction under read_committed) before the drain stops and reports the partition.
    stall_timeout: float = 30.0
    metadata_timeout: float = 15.0
    progress_every: float = 10.0


@dataclass
class PartitionProgress:
    start: int
    end: int
    committed: int
    records: int = 0

    @property
    def done(self) -> bool:
        return self.committed >= self.end


@dataclass
class DrainSummary:
    topic: str
    group_id: str
    partitions: dict[int, PartitionProgress] = field(default_factory=dict)
    records: int = 0
    loaded: int = 0
    skipped: int = 0
    batches: int = 0
    seconds: float = 0.0
    stalled: dict[int, int] = field(default_factory=dict)
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def records_per_second(self) -> float:
        return round(self.records / self.seconds, 1) if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["partitions"] = {str(p): asdict(v) for p, v in self.partitions.items()}
        data["stalled"] = {str(p): offset for p, offset in self.stalled.items()}
        data["records_per_second"] = self.records_per_second
        return data


def json_document(id_for: IdFunction) -> Callable[[Message], tuple[Any, dict[str, Any]]]:
    """Turn a record whose value is a JSON object into ``(_id, document)``."""

    def to_document(message: Message) -> tuple[Any, dict[str, Any]]:
        raw = message.value()
        where = f"{message.topic()}[{message.partition()}]@{message.offset()}"
        if raw is None:
            raise BadRecordError("tombstone", f"record {where} has no value (a tombstone)")
        # Decoded here, not by json.loads: that would also take UTF-16 and UTF-32 by their BOM.
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BadRecordError("not_utf8", f"record {where} is not UTF-8: {err}") from None
        try:
            value = json.loads(text)
        except ValueError as err:
            raise BadRecordError("not_json", f"record {where} is not JSON: {err}") from None
        if not isinstance(value, dict):
            kind = type(value).__name__
            raise BadRecordError("not_object", f"record {where} is JSON but not an object ({kind})")
        dollar = [key for key in value if key.startswith("$")]
        if dollar:
            raise BadRecordError(
                "invalid_field", f"record {where} has top-level field names starting with $: {dollar[:3]}"
            )
        try:
            _id = id_for(message, value)
        except (ValueError, UnicodeDecodeError) as err:
            raise BadRecordError("no_id", f"record {where}: {err}") from None
        value.pop("_id", None)
        value["_kafka"] = {"partition": message.partition(), "offset": message.offset()}
        if len(raw) > _MEASURE_ABOVE_BYTES:
            size = len(bson.encode(value))
            if size > MAX_DOCUMENT_BYTES:
                raise BadRecordError(
                    "too_large", f"record {where} makes a {size}-byte document, over MongoDB's 16 MiB limit"
                )
        return _id, value

    return to_document


def high_watermarks(consumer: Consumer, topic: str, timeout: float) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}`` read from the partition leaders now (not cached)."""
    found = topic_metadata(consumer, topic, timeout).topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        reason = found.error if found is not None else "no metadata"
        raise TopicNotFoundError(
            f"topic {topic!r} does not exist on the broker ({reason}); produce to it first or check "
            "the topic name"
        )
    return {
        partition: consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout, cached=False
        )
        for partition in sorted(found.partitions)
    }


_COORDINATOR_NOT_READY = (
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
)


def committed_offsets(
    consumer: Consumer, partitions: list[TopicPartition], timeout: float
) -> list[TopicPartition]:
    """The group's committed offsets, retrying while the group coordinator is not ready.

    A broker answers NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS while it is still loading
    the offsets topic (a fresh or just-restarted cluster); those are worth waiting for.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.committed(partitions, timeout=timeout)
        except KafkaException as err:
            error = err.args[0]
            waiting = error.retriable() or error.code() in _COORDINATOR_NOT_READY
            if not waiting or time.monotonic() >= deadline:
                raise
            log.info("Group coordinator not ready (%s); asking again", error.str())
            # Nothing to wait on but time: the coordinator gives no signal when it is ready.
            time.sleep(0.5)


def _commit(consumer: Consumer, topic: str, offsets: dict[int, int]) -> None:
    committed = consumer.commit(
        offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
    )
    failed = [tp for tp in committed or [] if tp.error is not None]
    if failed:
        raise KafkaException(failed[0].error)


def drain_to_watermark(
    consumer: Consumer,
    topic: str,
    group_id: str,
    sink: Sink,
    to_document: Callable[[Message], tuple[Any, dict[str, Any]]],
    settings: DrainSettings | None = None,
    lease: Lease | None = None,
    dead_letters: DeadLetterSink | None = None,
    partitions: Collection[int] | None = None,
) -> DrainSummary:
    """Load ``topic`` from the group's committed offsets (earliest if none) to the snapshot.

    ``consumer`` must have ``enable.auto.commit=false``; it is assigned, never subscribed.
    Records that cannot be loaded go to ``dead_letters`` before their offsets are committed;
    without a dead-letter sink the first such record fails the drain. ``partitions`` limits the
    drain to those partitions (one mapped task per partition). The caller closes the consumer.
    """
    settings = settings or DrainSettings()
    began = time.monotonic()
    summary = DrainSummary(topic=topic, group_id=group_id)
    watermarks = high_watermarks(consumer, topic, settings.metadata_timeout)
    if partitions is not None:
        missing = set(partitions) - set(watermarks)
        if missing:
            raise TopicNotFoundError(f"topic {topic!r} has no partition {sorted(missing)}")
        watermarks = {p: watermarks[p] for p in sorted(partitions)}
    committed = committed_offsets(
        consumer, [TopicPartition(topic, p) for p in watermarks], settings.metadata_timeout
    )
    for tp in committed:
        if tp.error is not None:
            raise KafkaException(tp.error)
        low, high = watermarks[tp.partition]
        # No commit yet (negative offset) or one below a deleted segment: start at the earliest.
        start = tp.offset if tp.offset >= low else low
        summary.partitions[tp.partition] = PartitionProgress(start=start, end=high, committed=start)
    pending = {p for p, progress in summary.partitions.items() if not progress.done}
    log.info(
        "Draining %s for group %s to %s",
        topic,
        group_id,
        ", ".join(f"p{p}: {v.start}->{v.end}" for p, v in summary.partitions.items()),
    )
    if not pending:
        summary.seconds = round(time.monotonic() - began, 3)
        log.info("Nothing to drain: every partition is at its high watermark")
        return summary

    consumer.assign([TopicPartition(topic, p, summary.partitions[p].start) for p in sorted(pending)])
    last_progress = time.monotonic()
    next_report = began + settings.progress_every
    while pending:
        # Ask for no more than is left below the snapshot: consume() returns as soon as it has
        # them, instead of waiting out poll_timeout for a batch that cannot fill.
        left = sum(summary.partitions[p].end - summary.partitions[p].committed for p in pending)
        wanted = max(1, min(settings.batch_size, left))
        messages = consumer.consume(num_messages=wanted, timeout=settings.poll_timeout)
        documents: dict[Any, dict[str, Any]] = {}
        sources: dict[Any, Message] = {}
        dead: list[DeadLetter] = []
        next_offsets: dict[int, int] = {}
        in_snapshot = 0
        for message in messages:
            if message.error() is not None:
                raise KafkaException(message.error())
            partition, offset = message.partition(), message.offset()
            progress = summary.partitions[partition]
            if offset >= progress.end:
                continue  # after the snapshot: left for the next run, never committed here
            next_offsets[partition] = offset + 1
            progress.records += 1
            in_snapshot += 1
            try:
                _id, document = to_document(message)
            except BadRecordError as err:
                if dead_letters is None:
                    raise
                dead.append(DeadLetter(message, err.code, str(err), "decode"))
                continue
            # The later offset wins within a batch; Python dicts keep the first insertion
            # position, which does not matter to an unordered bulk write.
            documents[_id] = document
            sources[_id] = message
        summary.records += in_snapshot
        summary.skipped += in_snapshot - len(documents) - len(dead)
        if documents:
            result = sink.write(documents)
            summary.loaded += result.written - len(result.rejected)
            summary.batches += 1
            for _id, reason in result.rejected.items():
                if dead_letters is None:
                    raise BadRecordError("rejected", f"record {_id!r}: {reason}")
                dead.append(DeadLetter(sources[_id], "rejected", reason, "write"))
        if dead:
            # Written before the commit: a crash here re-reads the batch and rewrites the same
            # dead-letter documents (their _id is topic:partition:offset).
            dead_letters.write(dead)
            summary.dead_letters += len(dead)
            for letter in dead:
                summary.dead_letter_reasons[letter.code] = summary.dead_letter_reasons.get(letter.code, 0) + 1

        # Partitions whose position reached the snapshot are done, even when the records that
        # moved it were not data (transaction markers): commit that position too.
        positions = consumer.position([TopicPartition(topic, p) for p in pending])
        for tp in positions:
            progress = summary.partitions[tp.partition]
            if tp.offset >= progress.end:
                next_offsets[tp.partition] = progress.end
        if next_offsets:
            if lease is not None:
                lease.renew()
            _commit(consumer, topic, next_offsets)
            for partition, offset in next_offsets.items():
                summary.partitions[partition].committed = offset
            last_progress = time.monotonic()
        done = {p for p in pending if summary.partitions[p].done}
        if done:
            consumer.pause([TopicPartition(topic, p) for p in done])
            pending -= done

        now = time.monotonic()
        if pending and now - last_progress > settings.stall_timeout:
            summary.stalled = {p: summary.partitions[p].committed for p in sorted(pending)}
            log.warning(
                "Stopping with partitions below their snapshot after %.0fs without progress "
                "(an open transaction?): %s",
                settings.stall_timeout,
                ", ".join(
                    f"p{p} at offset {summary.partitions[p].committed} of {summary.partitions[p].end}"
                    for p in sorted(pending)
                ),
            )
            break
        if now >= next_report:
            _log_progress(summary, began)
            next_report = now + settings.progress_every

    summary.seconds = round(time.monotonic() - began, 3)
    log.info(
        "Drained %s records from %s in %.2fs (%.0f records/s): %s loaded, %s superseded in-batch, "
        "%s dead letters",
        summary.records,
        topic,
        summary.seconds,
        summary.records_per_second,
        summary.loaded,
        summary.skipped,
        summary.dead_letters,
    )
    return summary


def _log_progress(summary: DrainSummary, began: float) -> None:
    elapsed = time.monotonic() - began
    parts = []
    for partition, progress in summary.partitions.items():
        total = progress.end - progress.start
        pct = 100.0 if total <= 0 else 100.0 * (progress.committed - progress.start) / total
        parts.append(f"p{partition} {pct:.0f}%")
    log.info(
        "Drain progress: %s records in %.0fs (%.0f records/s); %s",
        summary.records,
        elapsed,
        summary.records / elapsed if elapsed else 0.0,
        ", ".join(parts),
    )
