"""The drain's interleavings against a small fake Kafka consumer, in milliseconds, without services.

``FakeConsumer`` answers the dozen calls the drain makes (``list_topics``, ``get_watermark_offsets``,
``committed``, ``assign``, ``consume``, ``position``, ``pause``, ``commit``, ``close``, ``poll``) from
an in-memory log per partition. An offset that holds ``None`` is a transaction marker, one that holds
``ABORTED`` a record of an aborted transaction: a read_committed consumer returns neither, and, as
librdkafka does, its position moves past a marker but not past aborted records (until the next
marker or record). With ``eof=True`` it reports reaching the end of what it may fetch, as
``enable.partition.eof`` does. The integration tests against the real broker
prove the fake honest where it matters (tests/integration/test_lease.py, test_offset_ledger.py).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType, SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID, KafkaError, TopicPartition

from kafka_mongo_etl import drain as drain_module
from kafka_mongo_etl.drain import Drain, DrainSettings
from kafka_mongo_etl.errors import RetentionGapError, StopRequested
from kafka_mongo_etl.ids import id_function
from kafka_mongo_etl.records import Document, json_document
from kafka_mongo_etl.sigterm import stop_on_sigterm
from kafka_mongo_etl.write_models import WriteResult

TOPIC = "t"


ABORTED = ("<aborted>", {})


@dataclass
class FakeMessage:
    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _error: KafkaError | None = None

    def error(self) -> KafkaError | None:
        return self._error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)


@dataclass
class FakePartition:
    """One partition's log: ``records[i]`` is offset ``low + i``; ``None`` is never returned
    under read_committed. ``stable`` (the last stable offset, default: the end of the log) is
    the high end a read_committed watermark query reports and how far a fetch reads."""

    records: list[tuple[str, dict[str, Any]] | None] = field(default_factory=list)
    low: int = 0
    stable: int | None = None

    @property
    def high(self) -> int:
        return self.low + len(self.records)

    @property
    def lso(self) -> int:
        return self.high if self.stable is None else self.stable


def versions(keys: Sequence[str], rounds: int) -> list[tuple[str, dict[str, Any]]]:
    """``rounds`` versions of every key, in order: key k's last version is ``{"v": rounds - 1}``."""
    return [(key, {"v": v}) for v in range(rounds) for key in keys]


class FakeConsumer:
    """The calls the drain makes on a confluent-kafka ``Consumer``, over ``FakePartition``s.

    ``events`` is shared with the fake sink, so a test can check that a commit came after the
    write of its records. ``group_offsets`` is what the group has committed.
    """

    def __init__(
        self,
        partitions: dict[int, FakePartition],
        events: list[tuple[Any, ...]] | None = None,
        group_offsets: dict[int, int] | None = None,
        on_consume: Callable[[FakeConsumer], None] | None = None,
        eof: bool = False,
    ) -> None:
        self.partitions = partitions
        self.eof = eof
        self.fetched: dict[int, int] = {}
        self.eof_at: dict[int, int] = {}
        self.events = events if events is not None else []
        self.group_offsets = dict(group_offsets or {})
        self.on_consume = on_consume
        self.positions: dict[int, int] = {}
        self.paused: set[int] = set()
        self.closed = False

    def list_topics(self, topic: str, timeout: float) -> Any:
        found = SimpleNamespace(error=None, partitions={p: None for p in self.partitions})
        return SimpleNamespace(topics={topic: found} if topic == TOPIC else {})

    def poll(self, timeout: float) -> None:
        return None

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float = 0, cached: bool = False
    ) -> tuple[int, int]:
        log = self.partitions[tp.partition]
        return log.low, log.lso

    def committed(self, partitions: list[TopicPartition], timeout: float = 0) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.group_offsets.get(tp.partition, OFFSET_INVALID))
            for tp in partitions
        ]

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.positions = {tp.partition: tp.offset for tp in partitions}
        self.fetched = dict(self.positions)
        self.paused = set()

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in partitions}

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.positions[tp.partition]) for tp in partitions]

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        if self.on_consume is not None:
            self.on_consume(self)
        messages: list[FakeMessage] = []
        for p in sorted(self.positions):
            if p in self.paused:
                continue
            log = self.partitions[p]
            while self.fetched[p] < log.lso and len(messages) < num_messages:
                offset = self.fetched[p]
                self.fetched[p] += 1
                entry = log.records[offset - log.low]
                if entry is ABORTED:
                    continue  # dropped by the fetcher; the position stays
                self.positions[p] = offset + 1
                if entry is not None:
                    key, value = entry
                    messages.append(FakeMessage(TOPIC, p, offset, key.encode(), json.dumps(value).encode()))
            at = self.fetched[p]
            if self.eof and at >= log.lso and self.eof_at.get(p) != at and len(messages) < num_messages:
                self.eof_at[p] = at
                messages.append(FakeMessage(TOPIC, p, at, None, None, KafkaError(KafkaError._PARTITION_EOF)))
        if not messages:
            time.sleep(min(max(timeout, 0), 0.01))  # what consume() waits when nothing comes
        return messages

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> list[TopicPartition]:
        assert not asynchronous, "the drain commits synchronously"
        for tp in offsets:
            self.group_offsets[tp.partition] = tp.offset
        self.events.append(("commit", {tp.partition: tp.offset for tp in offsets}))
        return [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in offsets]

    def close(self) -> None:
        self.closed = True


class FakeSink:
    """A collection as a dict ``{_id: document}``; ``before_write(n)`` runs before the n-th write."""

    def __init__(
        self, events: list[tuple[Any, ...]], before_write: Callable[[int], None] | None = None
    ) -> None:
        self.events = events
        self.before_write = before_write
        self.documents: dict[Any, dict[str, Any]] = {}
        self.writes = 0

    def write(self, documents: Sequence[Document]) -> WriteResult:
        self.writes += 1
        if self.before_write is not None:
            self.before_write(self.writes)
        for document in documents:
            self.documents[document.id] = dict(document.body or {})
        self.events.append(("write", sorted((d.message.partition(), d.message.offset()) for d in documents)))
        return WriteResult(written=len(documents), inserted=len(documents), replaced=0)


class FakeLease:
    """Records what the drain asks of its lease; ``released`` is what ``DrainLease.release`` would do."""

    def __init__(self) -> None:
        self.renewals = 0
        self.abandoned = False

    def renew(self) -> None:
        self.renewals += 1

    def abandon(self) -> None:
        self.abandoned = True

    def settled(self) -> None:
        self.abandoned = False


def build_with(
    fail_at: dict[int, BaseException] | None = None, after: threading.Event | None = None
) -> Callable[[Any], Document]:
    """The real JSON record builder keyed by the record key; raises ``fail_at[offset]`` there
    (once ``after`` is set, when given)."""
    build = json_document(id_function("key"))

    def to_document(message: Any) -> Document:
        if fail_at and message.offset() in fail_at:
            if after is not None:
                assert after.wait(30)
            raise fail_at[message.offset()]
        return build(message)

    return to_document


def committed_in(events: list[tuple[Any, ...]]) -> dict[int, int]:
    offsets: dict[int, int] = {}
    for event in events:
        if event[0] == "commit":
            offsets.update(event[1])
    return offsets


# --- the stop path (issue 19, finding 5) ------------------------------------------------------


class Blocked:
    """A sink's n-th write blocks until ``release`` is set; ``entered`` says it started."""

    def __init__(self, at_write: int) -> None:
        self.at_write = at_write
        self.entered = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()

    def __call__(self, n: int) -> None:
        if n == self.at_write:
            self.entered.set()
            self.release.wait(30)


def one_partition(count: int) -> dict[int, FakePartition]:
    return {0: FakePartition(versions([f"k{n}" for n in range(count)], rounds=1))}


def _stack(frame: FrameType | None) -> list[str]:
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return names


@contextlib.contextmanager
def sigterm_while_blocked(inside: str) -> Iterator[None]:
    """Send the main thread SIGTERM while it is blocked in a wait called from ``inside``.

    Sent again while it stays there: a signal that lands just before the thread enters a
    blocking lock wait is noticed only when that wait ends by itself (CPython checks for
    signals between bytecodes, and the wait's C call is not interrupted). To the main thread
    itself: a process-directed signal may be delivered to another thread. A no-op handler
    outside ``stop_on_sigterm`` absorbs any signal that arrives after the drain stopped.
    """
    main = threading.main_thread().ident
    assert main is not None
    done = threading.Event()

    def send() -> None:
        while not done.wait(0.05):
            stack = _stack(sys._current_frames().get(main))
            if stack and stack[0] == "wait" and inside in stack:
                signal.pthread_kill(main, signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5)
        signal.signal(signal.SIGTERM, previous)


def test_a_stop_while_a_failed_drain_waits_for_its_write_in_flight_leaves_the_lease_to_expire() -> None:
    """Finding 5: batch 3 fails to build (a plain Exception) while batch 2 is being written, so the
    main thread waits in ``settle_quietly``; SIGTERM arrives there. The stop must not let the
    lease be released while batch 2's write still runs, and must commit nothing after batch 1."""
    events: list[tuple[Any, ...]] = []
    consumer = FakeConsumer(one_partition(300), events)
    blocked = Blocked(at_write=2)
    sink = FakeSink(events, before_write=blocked)
    lease = FakeLease()
    drain = Drain(
        consumer,
        TOPIC,
        "g",
        sink,
        build_with({250: ValueError("a builder bug")}),
        DrainSettings(batch_size=100, stall_timeout=60),
        lease,
    )
    try:
        with sigterm_while_blocked("settle_quietly"), pytest.raises(StopRequested), stop_on_sigterm():
            drain.run()
        assert blocked.entered.is_set() and drain.writing(), "batch 2's write is still running"
        assert lease.abandoned, "released while a write of this drain may still land"
        assert committed_in(events) == {0: 100}
    finally:
        blocked.release.set()
    # The write left running lands later; nothing commits it.
    _wait_until(lambda: not drain.writing())
    assert len(sink.documents) == 200 and committed_in(events) == {0: 100}


def test_a_stop_during_a_write_in_the_main_thread_leaves_the_lease_to_expire() -> None:
    """Without overlap the main thread writes; a stop inside that write may leave it to land."""
    events: list[tuple[Any, ...]] = []
    blocked = Blocked(at_write=2)
    sink = FakeSink(events, before_write=blocked)
    lease = FakeLease()
    drain = Drain(
        FakeConsumer(one_partition(300), events),
        TOPIC,
        "g",
        sink,
        build_with(),
        DrainSettings(batch_size=100, overlap=False),
        lease,
    )
    try:
        # Blocked.__call__: the sink blocked in the main thread.
        with sigterm_while_blocked("__call__"), pytest.raises(StopRequested), stop_on_sigterm():
            drain.run()
    finally:
        blocked.release.set()
    assert lease.abandoned and drain.writing()
    assert committed_in(events) == {0: 100}


@pytest.mark.parametrize("write_ends", [True, False], ids=["write ends in time", "write still running"])
def test_a_stop_in_the_main_thread_waits_briefly_for_the_write_in_flight(
    monkeypatch, write_ends: bool
) -> None:
    monkeypatch.setattr(drain_module, "STOP_WAIT", 0.2)
    events: list[tuple[Any, ...]] = []
    blocked = Blocked(at_write=2)
    if write_ends:
        blocked.release.set()
    sink = FakeSink(events, before_write=blocked)
    lease = FakeLease()
    drain = Drain(
        FakeConsumer(one_partition(300), events),
        TOPIC,
        "g",
        sink,
        # Raised once batch 2's write has started (a write not started yet is cancelled instead).
        build_with({250: StopRequested("SIGTERM")}, after=blocked.entered),
        DrainSettings(batch_size=100),
        lease,
    )
    try:
        with pytest.raises(StopRequested):
            drain.run()
        assert lease.abandoned is not write_ends
        assert committed_in(events) == {0: 100}, "a stop commits nothing more, not even a finished write"
    finally:
        blocked.release.set()


def test_a_failed_drain_commits_its_finished_write_in_flight_and_may_release_the_lease() -> None:
    events: list[tuple[Any, ...]] = []
    sink = FakeSink(events)
    lease = FakeLease()
    drain = Drain(
        FakeConsumer(one_partition(300), events),
        TOPIC,
        "g",
        sink,
        build_with({250: ValueError("a builder bug")}),
        DrainSettings(batch_size=100),
        lease,
    )
    with pytest.raises(ValueError, match="a builder bug"):
        drain.run()
    assert not lease.abandoned
    assert committed_in(events) == {0: 200} and len(sink.documents) == 200
    # Each commit after the write of its records.
    assert [e[0] for e in events] == ["write", "commit", "write", "commit"]


def _wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        done.wait(0.01)
    raise AssertionError("condition not reached")


# --- the offset ledger (issue 19, finding 3) ---------------------------------------------------


class FakeLedger:
    def __init__(self, events: list[tuple[Any, ...]], offsets: dict[int, int] | None = None) -> None:
        self.events = events
        self.offsets = dict(offsets or {})

    def read(self, partitions: Any) -> dict[int, int]:
        return {p: self.offsets[p] for p in partitions if p in self.offsets}

    def record(self, offsets: dict[int, int]) -> None:
        self.offsets.update(offsets)
        self.events.append(("ledger", dict(offsets)))


def test_every_partition_is_committed_at_the_end_also_those_with_nothing_to_read() -> None:
    """Kafka forgets an offset a week after its last commit: an idle partition is committed
    again by every drain, and each commit is recorded in the ledger after Kafka took it."""
    events: list[tuple[Any, ...]] = []
    logs = {
        0: FakePartition(versions(["a", "b"], rounds=3)),
        1: FakePartition(versions(["c"], rounds=2)),  # read to its end before
        2: FakePartition([]),  # never had a record
    }
    consumer = FakeConsumer(logs, events, group_offsets={1: 2})
    ledger = FakeLedger(events)
    sink = FakeSink(events)
    settings = DrainSettings(batch_size=4)
    Drain(consumer, TOPIC, "g", sink, build_with(), settings, FakeLease(), ledger=ledger).run()
    assert events[-2:] == [("commit", {0: 6, 1: 2, 2: 0}), ("ledger", {0: 6, 1: 2, 2: 0})]
    for i, event in enumerate(events):
        if event[0] == "ledger":
            assert events[i - 1] == ("commit", event[1]), "recorded only after Kafka took the commit"
    assert consumer.group_offsets == ledger.offsets == {0: 6, 1: 2, 2: 0}
    assert {k: v["v"] for k, v in sink.documents.items()} == {"a": 2, "b": 2}


def test_a_forgotten_offset_resumes_from_the_ledger_when_the_records_are_still_there() -> None:
    events: list[tuple[Any, ...]] = []
    logs = {0: FakePartition(versions(["a", "b", "c"], rounds=2))}  # offsets 0..5
    consumer = FakeConsumer(logs, events)  # Kafka forgot the group's offsets
    sink = FakeSink(events)
    ledger = FakeLedger(events, {0: 4})
    settings = DrainSettings()
    summary = Drain(consumer, TOPIC, "g", sink, build_with(), settings, FakeLease(), ledger=ledger).run()
    assert summary.records == 2 and summary.partitions[0].from_ledger
    assert summary.partitions[0].start == 4 and summary.lost_to_retention == {}
    assert set(sink.documents) == {"b", "c"} and consumer.group_offsets == {0: 6}


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_a_forgotten_offset_below_the_low_watermark_is_a_retention_gap(policy: str) -> None:
    """Kafka forgot the offset (4) and retention deleted offsets up to 7: records 4..6 were never
    loaded. Without the ledger this drain would start at 7 and report nothing."""
    events: list[tuple[Any, ...]] = []
    logs = {0: FakePartition(versions(["a", "b", "c"], rounds=2)[1:], low=7), 1: FakePartition([])}
    consumer = FakeConsumer(logs, events, group_offsets={1: 0})
    sink = FakeSink(events)
    drain = Drain(
        consumer,
        TOPIC,
        "g",
        sink,
        build_with(),
        DrainSettings(on_retention_gap=policy),
        FakeLease(),
        ledger=FakeLedger(events, {0: 4, 1: 0}),
    )
    if policy == "fail":
        with pytest.raises(RetentionGapError, match=r"partition 0: 3 records \(offsets 4\.\.6\)") as err:
            drain.run()
        assert "forgotten the group's committed offsets of partition(s) 0 " in str(err.value)
        assert events == [], "nothing read, written or committed"
    else:
        summary = drain.run()
        assert summary.lost_to_retention == {0: 3} and summary.records == 5
        assert consumer.group_offsets == {0: 12, 1: 0}


# --- the read_committed corner (issue 19, finding 9) --------------------------------------------


def aborted_below_the_snapshot() -> dict[int, FakePartition]:
    """What the real broker shows (tests/integration/test_read_committed_corner.py): records
    0..2 committed, 3..5 of a transaction aborted after another one opened at 6 (still open),
    so the abort marker (7) lies above the last stable offset, 6: the snapshot."""
    records = [*versions(["a", "b", "c"], rounds=1), ABORTED, ABORTED, ABORTED, ("open", {}), None]
    return {0: FakePartition(records, stable=6), 1: FakePartition(versions(["d"], rounds=2))}


@pytest.mark.parametrize("eof", [False, True], ids=["without end-of-partition events", "with them"])
def test_aborted_records_below_the_snapshot_with_their_marker_above_do_not_stall_the_drain(eof: bool) -> None:
    events: list[tuple[Any, ...]] = []
    consumer = FakeConsumer(aborted_below_the_snapshot(), events, eof=eof)
    sink = FakeSink(events)
    settings = DrainSettings(stall_timeout=0.3, poll_timeout=0.01)
    summary = Drain(consumer, TOPIC, "g", sink, build_with(), settings, FakeLease()).run()
    assert consumer.positions[0] == 3, "the consumer's position stays below the snapshot"
    assert set(sink.documents) == {"a", "b", "c", "d"} and sink.documents["d"]["v"] == 1
    if eof:
        assert summary.stalled == {}
        assert consumer.group_offsets == {0: 6, 1: 2}, "the snapshot is committed: nothing was skipped"
    else:
        # What the drain does without the events (the consumer as configured before): it stalls
        # and reports the partition, and every retry stalls again while the transaction is open.
        assert summary.stalled == {0: 3}
        assert consumer.group_offsets == {0: 3, 1: 2}
