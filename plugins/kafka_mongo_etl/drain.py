"""Drain every partition of a topic up to the high watermarks seen at start, into a sink.

The stopping line is a snapshot of the high watermarks taken before the first fetch; records
produced after it stay for the next run. A partition is done when the consumer's *position*
reaches its snapshot (not when "the last offset seen" is high - 1: transaction markers and
compaction leave gaps). Offsets are committed synchronously, batch by batch, and only after the
sink acknowledged every record of the batch, so a crash at any point re-reads, and never skips.
While one batch is written, the next is read and built, and the batch before it is committed
(at most one write in flight); commits stay in order, each after its own batch's write.
"""

from __future__ import annotations

import functools
import gc
import itertools
import logging
import operator
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import Future, wait
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from kafka_mongo_etl import offsets as kafka_offsets
from kafka_mongo_etl.errors import (
    LeaseLostError,
    OffsetAboveWatermarkError,
    RetentionGapError,
    TopicNotFoundError,
)
from kafka_mongo_etl.offsets import committed_offsets, committed_or_none, partitions_of
from kafka_mongo_etl.records import (
    BadRecordError,
    DeadLetter,
    Document,
    RecordBuilder,
    build_documents,
    json_document,
)
from kafka_mongo_etl.write_models import WriteResult

# Where the record path's and the offset readers' names used to live; kept for callers of the
# drain module (the readers live in ``offsets``).
__all__ = [
    "BadRecordError",
    "DeadLetter",
    "DrainSettings",
    "DrainSummary",
    "committed_offsets",
    "drain_to_watermark",
    "json_document",
    "partitions_of",
]

log = logging.getLogger(__name__)


class Sink(Protocol):
    def write(self, documents: Sequence[Document]) -> WriteResult: ...


class Lease(Protocol):
    def renew(self) -> None: ...

    def abandon(self) -> None: ...

    def settled(self) -> None: ...


class DeadLetterSink(Protocol):
    def write(self, dead_letters: list[DeadLetter]) -> None: ...


class Ledger(Protocol):
    """The drain's own record of its committed offsets (``ledger.OffsetLedger``)."""

    def read(self, partitions: Iterable[int]) -> dict[int, int]: ...

    def record(self, offsets: dict[int, int]) -> None: ...


@dataclass(frozen=True)
class DrainSettings:
    batch_size: int = 5_000
    poll_timeout: float = 1.0
    # How long the position may stay below the snapshot with nothing to read (an open
    # transaction under read_committed) before the drain stops and reports the partition.
    stall_timeout: float = 30.0
    metadata_timeout: float = 15.0
    progress_every: float = 10.0
    # A committed offset below the low watermark (records deleted by retention before they were
    # loaded): "fail" the drain before it reads anything, or "skip" to the earliest record left
    # and count what was lost (``DrainSummary.lost_to_retention``).
    on_retention_gap: str = "fail"
    # Read and build the next batch while the previous one is being written (one write in
    # flight, commits in order). False: each batch is read, written and committed in turn.
    overlap: bool = True


@dataclass
class PartitionProgress:
    start: int
    end: int
    committed: int
    records: int = 0
    # Offsets between the group's committed offset and the low watermark, deleted by retention
    # before they were loaded (only with on_retention_gap="skip"; "fail" stops the drain).
    lost: int = 0
    # Kafka had forgotten the group's committed offset: the start came from the offset ledger.
    from_ledger: bool = False

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
    # Documents deleted by tombstones (write_mode delete_on_tombstone); counted in loaded too.
    deleted: int = 0
    # Writes the fence left without effect (the document had applied a newer or the same record
    # of that partition: a re-read, a late write); counted in loaded too. See docs/fencing.md.
    stale: int = 0
    skipped: int = 0
    batches: int = 0
    seconds: float = 0.0
    stalled: dict[int, int] = field(default_factory=dict)
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def records_per_second(self) -> float:
        return round(self.records / self.seconds, 1) if self.seconds > 0 else 0.0

    @property
    def lost_to_retention(self) -> dict[int, int]:
        """``{partition: records}`` deleted by retention before they were loaded (skipped)."""
        return {p: progress.lost for p, progress in self.partitions.items() if progress.lost}

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["partitions"] = {str(p): asdict(v) for p, v in self.partitions.items()}
        data["stalled"] = {str(p): offset for p, offset in self.stalled.items()}
        data["records_per_second"] = self.records_per_second
        data["lost_to_retention"] = {str(p): lost for p, lost in self.lost_to_retention.items()}
        return data


def _commit(consumer: Consumer, topic: str, offsets: dict[int, int]) -> None:
    committed = consumer.commit(
        offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
    )
    failed = [tp for tp in committed or [] if tp.error is not None]
    if failed:
        raise KafkaException(failed[0].error)


@dataclass
class Batch:
    """What one ``consume()`` call brought that lies inside the snapshot."""

    # Every record that became a document, in read order: several may share an _id (the write
    # model folds them as its mode says, with the result of writing them one by one).
    documents: list[Document] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    # partition -> the offset after the last record of the batch: what to commit once written.
    # A partition whose position reached the snapshot when the batch was read commits the
    # snapshot's offset (what moved it there may have been transaction markers, not records).
    next_offsets: dict[int, int] = field(default_factory=dict)
    records: int = 0

    @property
    def empty(self) -> bool:
        return not self.documents and not self.dead


RETENTION_GAP_POLICIES = ("fail", "skip")


def start_offsets(
    committed: Sequence[TopicPartition],
    watermarks: dict[int, tuple[int, int]],
    on_retention_gap: str = "fail",
    group_id: str = "<group>",
    ledger: dict[int, int] | None = None,
) -> dict[int, PartitionProgress]:
    """Where each partition's drain starts (the group's committed offset) and ends (the snapshot).

    Where Kafka has no committed offset but ``ledger`` (the drain's own record, ``ledger.py``)
    has one, Kafka forgot it (``offsets.retention.minutes`` after its last commit) and the
    ledger's offset counts as the committed one. A group with neither starts at the low
    watermark. A committed offset below it means records were deleted by retention before this
    group loaded them: ``RetentionGapError`` (not retried), or with ``on_retention_gap="skip"``
    a warning, a start at the low watermark and the count in ``PartitionProgress.lost``. A
    committed offset above the high watermark means the log was truncated below what the group
    has read: ``OffsetAboveWatermarkError``.
    """
    if on_retention_gap not in RETENTION_GAP_POLICIES:
        raise ValueError(
            f"unknown on_retention_gap {on_retention_gap!r}; choose one of "
            f"{', '.join(RETENTION_GAP_POLICIES)}"
        )
    ledger = ledger or {}
    progress = {}
    gaps: dict[int, tuple[int, int]] = {}
    above: dict[int, tuple[int, int]] = {}
    forgotten: dict[int, int] = {}
    topic = ""
    for tp in committed:
        if tp.error is not None:
            raise KafkaException(tp.error)
        topic = tp.topic
        low, high = watermarks[tp.partition]
        offset = committed_or_none(tp.offset)
        if offset is None and tp.partition in ledger:
            offset = forgotten[tp.partition] = ledger[tp.partition]
        # No commit yet: start at the earliest record.
        start, lost = (low, 0) if offset is None else (offset, 0)
        if offset is not None and offset < low:
            gaps[tp.partition] = (offset, low)
            start, lost = low, low - offset
        elif offset is not None and offset > high:
            above[tp.partition] = (offset, high)
        progress[tp.partition] = PartitionProgress(
            start=start, end=high, committed=start, lost=lost, from_ledger=tp.partition in forgotten
        )
    _check_starts(topic, group_id, on_retention_gap, forgotten, above, gaps)
    return progress


def _check_starts(
    topic: str,
    group_id: str,
    on_retention_gap: str,
    forgotten: dict[int, int],
    above: dict[int, tuple[int, int]],
    gaps: dict[int, tuple[int, int]],
) -> None:
    """Say where the ledger stood in for Kafka, and raise or warn for what ``start_offsets`` found
    outside the log: offsets above it, records deleted below it."""
    if forgotten:
        log.warning(
            "Kafka has no committed offset of group %s for %s, although the drain committed one "
            "(it forgets them offsets.retention.minutes after their last commit); going on from "
            "the offset ledger's: %s",
            group_id,
            topic,
            ", ".join(f"p{p} at {offset}" for p, offset in sorted(forgotten.items())),
        )
    if above:
        raise OffsetAboveWatermarkError(topic, group_id, above)
    if gaps:
        lost = "; ".join(
            f"partition {p}: {low - offset} records (offsets {offset}..{low - 1})"
            for p, (offset, low) in sorted(gaps.items())
        )
        if on_retention_gap == "fail":
            raise RetentionGapError(topic, lost, forgotten=sorted(set(forgotten) & set(gaps)))
        log.warning(
            "Records of %s were deleted by retention before they were loaded, skipped as "
            "on_retention_gap=skip asks: %s",
            topic,
            lost,
        )


_ERROR = operator.methodcaller("error")
_PARTITION = operator.methodcaller("partition")
_OFFSET = operator.methodcaller("offset")


class Drain:
    """One drain of ``topic`` for ``group_id`` from the committed offsets to the snapshot.

    The steps, in order, each small enough to read alone: ``snapshot`` (watermarks and where
    each partition starts), ``read_batch``, ``build`` (records to documents or dead letters),
    ``mark_read`` (which partitions are read to the snapshot), ``write``, ``dead_letter``,
    ``commit`` (only what was written), ``stalled`` (stop?). With ``DrainSettings.overlap``,
    ``write`` and ``dead_letter`` of one batch run in a writer thread while the main thread
    reads and builds the next; the main thread waits for that write, starts the next one, then
    commits the first (each commit after its own write, in order).
    """

    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        group_id: str,
        sink: Sink,
        to_document: RecordBuilder,
        settings: DrainSettings | None = None,
        lease: Lease | None = None,
        dead_letters: DeadLetterSink | None = None,
        partitions: Collection[int] | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.consumer = consumer
        self.topic = topic
        self.sink = sink
        self.to_document = to_document
        self.settings = settings or DrainSettings()
        self.lease = lease
        self.dead_letters = dead_letters
        self.only = partitions
        self.ledger = ledger
        self.summary = DrainSummary(topic=topic, group_id=group_id)
        # Partitions not yet committed up to the snapshot, and those not yet read up to it.
        self.pending: set[int] = set()
        self.unread: set[int] = set()
        self.read_to: dict[int, int] = {}
        # partition -> the offset of its latest end-of-partition event (see mark_read).
        self.fetched_to: dict[int, int] = {}
        self.began = self.last_progress = time.monotonic()
        # Writes started (in either thread) that have not returned: a stop that interrupted one
        # in the main thread leaves it counted, as the server may still apply it.
        self._writes_open = 0
        self._writes_lock = threading.Lock()
        self._writer: _Writer | None = None

    def run(self) -> DrainSummary:
        self.snapshot()
        if self.pending:
            progress = self.summary.partitions
            self.consumer.assign(
                [TopicPartition(self.topic, p, progress[p].start) for p in sorted(self.pending)]
            )
        writer = self._writer = _Writer() if self.settings.overlap else None
        in_flight: tuple[Batch, Future[None]] | None = None
        next_report = self.began + self.settings.progress_every
        try:
            while self.pending:
                batch = self.read() if self.unread else None
                acknowledged = None
                if in_flight is not None:
                    (acknowledged, written), in_flight = in_flight, None
                    written.result()  # the write's error is raised here
                if batch is not None and writer is not None and not batch.empty:
                    # The next write starts before the acknowledged one's commit: the commit's
                    # round trips (lease, Kafka, ledger) overlap it, and commits stay in order.
                    in_flight, batch = (batch, writer.submit(functools.partial(self.store, batch))), None
                if acknowledged is not None:
                    self.commit(acknowledged)
                if batch is not None:
                    self.store(batch)
                    self.commit(batch)
                if self.stalled():
                    break
                if time.monotonic() >= next_report:
                    _log_progress(self.summary, self.began)
                    next_report = time.monotonic() + self.settings.progress_every
            if in_flight is not None:
                written, in_flight = in_flight, None
                self.settle(*written)
            self.commit_every_partition()
        except BaseException as err:
            stopped, lost = not isinstance(err, Exception), isinstance(err, LeaseLostError)
            self.stop_writing(in_flight, writer, stopped=stopped, lost=lost)
            raise
        finally:
            if writer is not None:
                writer.close()
        return self.finish()

    def snapshot(self) -> None:
        """The stopping line (high watermarks now) and each partition's committed start."""
        watermarks = kafka_offsets.watermarks(self.consumer, self.topic, None, self.settings.metadata_timeout)
        if self.only is not None:
            missing = set(self.only) - set(watermarks)
            if missing:
                raise TopicNotFoundError(f"topic {self.topic!r} has no partition {sorted(missing)}")
            watermarks = {p: watermarks[p] for p in sorted(self.only)}
        committed = committed_offsets(
            self.consumer, [TopicPartition(self.topic, p) for p in watermarks], self.settings.metadata_timeout
        )
        forgotten = [
            tp.partition for tp in committed if committed_or_none(tp.offset) is None and tp.error is None
        ]
        recorded = self.ledger.read(forgotten) if self.ledger is not None and forgotten else {}
        self.summary.partitions = start_offsets(
            committed, watermarks, self.settings.on_retention_gap, self.summary.group_id, recorded
        )
        self.pending = {p for p, progress in self.summary.partitions.items() if not progress.done}
        self.unread = set(self.pending)
        self.read_to = {p: progress.start for p, progress in self.summary.partitions.items()}
        log.info(
            "Draining %s for group %s to %s",
            self.topic,
            self.summary.group_id,
            ", ".join(f"p{p}: {v.start}->{v.end}" for p, v in self.summary.partitions.items()),
        )
        if not self.pending:
            log.info("Nothing to drain: every partition is at its high watermark")

    def read_batch(self) -> list[Message]:
        # Ask for no more than is left below the snapshot: consume() returns as soon as it has
        # them, instead of waiting out poll_timeout for a batch that cannot fill.
        progress = self.summary.partitions
        left = sum(progress[p].end - self.read_to[p] for p in self.unread)
        wanted = max(1, min(self.settings.batch_size, left))
        messages = self.consumer.consume(num_messages=wanted, timeout=self.settings.poll_timeout)
        # Events are rare (one per partition that reached its end): a pass in C finds whether
        # there are any before a pass in Python takes them out.
        if any(map(_ERROR, messages)):
            messages = [message for message in messages if not self._end_of_partition(message)]
        return messages

    def _end_of_partition(self, message: Message) -> bool:
        """Note an end-of-partition event (``enable.partition.eof``) and leave it out of the batch.

        Its offset is where the consumer's fetcher stands: everything below it was fetched, and
        every record below it that a read_committed consumer returns came before the event.
        """
        error = message.error()
        if error is None or error.code() != KafkaError._PARTITION_EOF:
            return False
        partition = message.partition()
        self.fetched_to[partition] = max(self.fetched_to.get(partition, -1), message.offset())
        return True

    def read(self) -> Batch:
        return self.mark_read(self.build(self.read_batch()))

    def build(self, messages: list[Message]) -> Batch:
        """Documents (every version, in read order) and dead letters of the snapshot's records."""
        # Every document of a batch lives until the batch is committed, so each of the garbage
        # collector's young-generation passes during the build walks thousands of survivors and
        # moves them on, to be walked again by the next generation's passes: 0.1 to 0.25 µs a
        # record (bench.record_path). The build makes no reference cycles, so the collector is
        # paused for it (for the whole process, as gc.disable is, for a few milliseconds) and its
        # next pass walks the batch once. A caller that had disabled it finds it disabled.
        if not gc.isenabled():
            return self._build(messages)
        gc.disable()
        try:
            return self._build(messages)
        finally:
            gc.enable()

    def _build(self, messages: list[Message]) -> Batch:
        batch = Batch()
        if any(map(_ERROR, messages)):  # end-of-partition events are gone (read_batch): a failure
            for message in messages:
                if message.error() is not None:
                    raise KafkaException(message.error())
        progress = self.summary.partitions
        partitions = list(map(_PARTITION, messages))
        offsets = list(map(_OFFSET, messages))
        # A partition's records come in offset order, so the last of each is its highest: when
        # none is past the snapshot, the batch is kept whole, and counted in C.
        last = dict(zip(partitions, offsets, strict=True))
        if all(offset < progress[partition].end for partition, offset in last.items()):
            kept = messages
        else:  # records after the snapshot are left for the next run, never committed here
            inside = [
                offset < progress[partition].end
                for partition, offset in zip(partitions, offsets, strict=True)
            ]
            kept = list(itertools.compress(messages, inside))
            partitions = list(itertools.compress(partitions, inside))
            last = dict(zip(partitions, itertools.compress(offsets, inside), strict=True))
        batch.next_offsets = {partition: offset + 1 for partition, offset in last.items()}
        batch.documents, refused = build_documents(self.to_document, kept)
        if refused:
            if self.dead_letters is None:
                raise refused[0][1]
            batch.dead = [DeadLetter(message, err.code, str(err), "decode") for message, err in refused]
        for partition, count in Counter(partitions).items():
            progress[partition].records += count
        batch.records = len(kept)
        self.summary.records += batch.records
        return batch

    def mark_read(self, batch: Batch) -> Batch:
        """Note how far each partition is read; pause those whose position reached the snapshot.

        A position at the snapshot is done even when what moved it was not data (transaction
        markers): the batch commits that position too. So is a partition whose fetcher reached
        the snapshot (an end-of-partition event at or past it) while the position stayed below:
        librdkafka moves the position past an aborted transaction's records only when it reads
        the abort marker, and a marker above the snapshot (another transaction opened before the
        abort, and is still open) is not read before that transaction ends. The records between
        are ones a read_committed consumer never returns; committing the snapshot skips nothing.
        """
        progress = self.summary.partitions
        for partition, offset in batch.next_offsets.items():
            self.read_to[partition] = max(self.read_to[partition], offset)
        done = set()
        for tp in self.consumer.position([TopicPartition(self.topic, p) for p in self.unread]):
            end = progress[tp.partition].end
            if tp.offset >= end or self.fetched_to.get(tp.partition, -1) >= end:
                batch.next_offsets[tp.partition] = progress[tp.partition].end
                self.read_to[tp.partition] = progress[tp.partition].end
                done.add(tp.partition)
        if done:
            self.consumer.pause([TopicPartition(self.topic, p) for p in sorted(done)])
            self.unread -= done
        return batch

    def store(self, batch: Batch) -> None:
        """What the writer thread does with a batch: its documents, then its dead letters."""
        with self._writes_lock:
            self._writes_open += 1
        try:
            self.write(batch)
            self.dead_letter(batch)
        except Exception:
            # The server answered (or the client gave up on it): this write is over either way.
            self._write_over()
            raise
        self._write_over()

    def _write_over(self) -> None:
        with self._writes_lock:
            self._writes_open -= 1

    def writing(self) -> bool:
        """Whether a write of this drain may still be running or about to start."""
        with self._writes_lock:
            if self._writes_open:
                return True
        return self._writer is not None and not self._writer.idle(0)

    def stop_writing(
        self, in_flight: tuple[Batch, Future[None]] | None, writer: _Writer | None, stopped: bool, lost: bool
    ) -> None:
        """What an error on its way out of ``run`` does about the write in flight and the lease.

        An ``Exception`` of the main thread (a bad record without a dead-letter sink, say) lets
        the write in flight finish and commits it if acknowledged, as if the batches had been
        written in turn; after a lost lease (``lost``) it is waited for and not committed. A
        stop (``BaseException``: SIGTERM's ``StopRequested``, Airflow's timeout) commits nothing,
        keeps a write that has not started from starting, and waits for a running one only
        briefly (Airflow's SIGKILL follows a SIGTERM within 5 s).

        The lease is abandoned *first* and taken back (``settled``) only once no write of this
        drain can be running: a stop that arrives during any of this (a second SIGTERM, the
        timeout while the main thread waits for the write in flight) leaves the lease to expire
        by its ttl instead of releasing it under a write that may still land.
        """
        if self.lease is not None:
            self.lease.abandon()
        if stopped:
            if writer is not None:
                writer.cancel_waiting()
                writer.idle(STOP_WAIT)
        elif in_flight is not None:
            self.settle_quietly(*in_flight, commit=not lost)
        if self.lease is not None and not self.writing():
            self.lease.settled()

    def settle(self, batch: Batch, written: Future[None]) -> None:
        """Wait for ``batch``'s write (its error is raised here), then commit it."""
        written.result()
        self.commit(batch)

    def settle_quietly(self, batch: Batch, written: Future[None], commit: bool) -> None:
        """Wait for the write in flight when the drain failed; commit it if it was acknowledged
        and ``commit`` (not after a lost lease: the lease's owner commits now)."""
        try:
            written.result()
        except Exception as err:  # noqa: BLE001 - the error already leaving the drain is the one to report
            log.warning("The write in flight when the drain failed did not complete: %s", err)
            return
        if not commit:
            log.warning("The write in flight when the lease was lost landed; its offsets are not committed")
            return
        try:
            self.commit(batch)
        except Exception as err:  # noqa: BLE001
            log.warning("The write in flight when the drain failed landed; its commit failed: %s", err)

    def write(self, batch: Batch) -> None:
        if not batch.documents:
            return
        result = self.sink.write(batch.documents)
        self.summary.loaded += result.written - result.superseded - len(result.rejected)
        self.summary.skipped += result.superseded
        self.summary.deleted += result.deleted
        self.summary.stale += result.stale
        if result.stale:
            log.info(
                "%s of %s writes changed nothing: their documents hold these records or newer ones "
                "(a re-read, or a late write). If every write of a run is stale, the topic may have "
                "been re-created: see docs/fencing.md",
                result.stale,
                result.written - result.superseded - len(result.rejected),
            )
        self.summary.batches += 1
        for document, reason in result.rejected:
            if self.dead_letters is None:
                raise BadRecordError("rejected", f"record {document.id!r}: {reason}")
            batch.dead.append(DeadLetter(document.message, "rejected", reason, "write"))

    def dead_letter(self, batch: Batch) -> None:
        if not batch.dead:
            return
        # Written before the commit: a crash here re-reads the batch and rewrites the same
        # dead-letter documents (their _id is topic:partition:offset).
        assert self.dead_letters is not None  # build() and write() raise without a dead-letter sink
        self.dead_letters.write(batch.dead)
        self.summary.dead_letters += len(batch.dead)
        reasons = self.summary.dead_letter_reasons
        for letter in batch.dead:
            reasons[letter.code] = reasons.get(letter.code, 0) + 1

    def commit(self, batch: Batch) -> None:
        """Commit what was written; a partition committed up to its snapshot is done."""
        progress = self.summary.partitions
        offsets = batch.next_offsets
        if offsets:
            self.commit_fenced(offsets)
            for partition, offset in offsets.items():
                progress[partition].committed = offset
            self.last_progress = time.monotonic()
        self.pending -= {p for p in self.pending if progress[p].done}

    def commit_every_partition(self) -> None:
        """At the end, commit every partition's offset again, also those with nothing to read.

        Kafka forgets a committed offset ``offsets.retention.minutes`` after its last commit;
        a partition that gets no records would otherwise lose its offset, and be re-read from
        its start, however often the drain runs. Only offsets already committed (so written)
        are committed again.
        """
        offsets = {p: progress.committed for p, progress in self.summary.partitions.items()}
        if offsets:
            self.commit_fenced(offsets)

    def commit_fenced(self, offsets: dict[int, int]) -> None:
        """The lease's fencing check, the synchronous commit, then the ledger's record of it."""
        if self.lease is not None:
            self.lease.renew()
        _commit(self.consumer, self.topic, offsets)
        if self.ledger is not None:
            self.ledger.record(offsets)

    def stalled(self) -> bool:
        """True when a partition stayed below its snapshot for ``stall_timeout`` (an open transaction)."""
        if not self.pending or time.monotonic() - self.last_progress <= self.settings.stall_timeout:
            return False
        progress = self.summary.partitions
        self.summary.stalled = {p: progress[p].committed for p in sorted(self.pending)}
        log.warning(
            "Stopping with partitions below their snapshot after %.0fs without progress "
            "(an open transaction?): %s",
            self.settings.stall_timeout,
            ", ".join(
                f"p{p} at offset {progress[p].committed} of {progress[p].end}" for p in sorted(self.pending)
            ),
        )
        return True

    def finish(self) -> DrainSummary:
        summary = self.summary
        summary.seconds = round(time.monotonic() - self.began, 3)
        log.info(
            "Drained %s records from %s in %.2fs (%.0f records/s): %s loaded, %s superseded in-batch, "
            "%s dead letters",
            summary.records,
            self.topic,
            summary.seconds,
            summary.records_per_second,
            summary.loaded,
            summary.skipped,
            summary.dead_letters,
        )
        return summary


# How long a stopped drain waits for the write it has in flight (see Drain.run).
STOP_WAIT = 3.0


class _Writer:
    """One thread that runs the drain's writes, one at a time, in the order given.

    A daemon thread, so that a try stopped while its write waits on a silent server exits
    without waiting for that write (a thread pool's threads are joined at interpreter exit).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[None], Callable[[], None]] | None] = queue.SimpleQueue()
        self._last: Future[None] | None = None
        self._thread = threading.Thread(target=self._work, name="drain-write", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], None]) -> Future[None]:
        future: Future[None] = Future()
        self._jobs.put((future, work))
        self._last = future
        return future

    def cancel_waiting(self) -> None:
        """Keep the write handed over last from starting, if it has not started yet."""
        if self._last is not None:
            self._last.cancel()

    def idle(self, timeout: float) -> bool:
        """Whether every write handed over has finished, waiting up to ``timeout`` s for it."""
        return self._last is None or wait([self._last], timeout).not_done == set()

    def close(self) -> None:
        """The thread ends after the write it is running, if any."""
        self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, work = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled by a stop before it started
            try:
                work()
            except BaseException as err:  # noqa: BLE001 - handed to the main thread by the future
                future.set_exception(err)
            else:
                future.set_result(None)


def drain_to_watermark(
    consumer: Consumer,
    topic: str,
    group_id: str,
    sink: Sink,
    to_document: RecordBuilder,
    settings: DrainSettings | None = None,
    lease: Lease | None = None,
    dead_letters: DeadLetterSink | None = None,
    partitions: Collection[int] | None = None,
    ledger: Ledger | None = None,
) -> DrainSummary:
    """Load ``topic`` from the group's committed offsets (earliest if none) to the snapshot.

    ``consumer`` must have ``enable.auto.commit=false``; it is assigned, never subscribed.
    Records that cannot be loaded go to ``dead_letters`` before their offsets are committed;
    without a dead-letter sink the first such record fails the drain. ``partitions`` limits the
    drain to those partitions (one mapped task per partition). ``ledger`` records every commit
    and answers where Kafka forgot one (``ledger.py``). The caller closes the consumer.
    """
    freeze_heap()
    return Drain(
        consumer, topic, group_id, sink, to_document, settings, lease, dead_letters, partitions, ledger
    ).run()


def freeze_heap() -> None:
    """Keep the objects that exist at a process's first drain out of the garbage collector's
    passes for the rest of the process (``gc.freeze``); later drains leave the heap as it is.

    A drain's batches of documents live long enough to reach the collector's oldest generation,
    and every 20,000 records or so that makes CPython walk the whole heap: Airflow's and the
    clients' hundreds of thousands of objects, 0.1 to 0.7 s each time on this project's bench
    machine, against 0.3 s to drain those 20,000 records. Frozen, the imported modules' objects
    are never walked again; what the drain and the task make later is collected as before.
    Never unfrozen: that would only defer the walk to whatever runs after the drain (Airflow's
    LocalExecutor freezes around its forks and Celery's workers until they are ready).
    """
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.freeze()


_heap_frozen = False


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
