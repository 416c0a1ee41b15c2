"""The drain's stop paths, offset ledger and read_committed corner against the fake consumer
(tests/unit/fakes.py), in milliseconds, without services. The integration tests against the
real broker prove the fake honest where it matters (tests/integration/test_lease.py,
test_offset_ledger.py, test_read_committed_corner.py).
"""

from __future__ import annotations

import contextlib
import gc
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest
from fakes import (
    ABORTED,
    TOPIC,
    FakeConsumer,
    FakeLease,
    FakeLedger,
    FakePartition,
    FakeSink,
    build_with,
    committed_in,
    versions,
)

from kafka_mongo_etl import drain as drain_module
from kafka_mongo_etl.drain import Drain, DrainSettings
from kafka_mongo_etl.errors import RetentionGapError, StopRequested
from kafka_mongo_etl.sigterm import stop_on_sigterm

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


def test_the_collector_is_paused_while_a_batch_is_built_and_resumes_after_it_even_on_error() -> None:
    """``Drain.build`` pauses the garbage collector for the batch (a performance measure): it is
    running again after every batch, also one whose builder raised, and a collector the caller
    had disabled stays disabled."""
    gc_during_build: list[bool] = []
    build = build_with({250: ValueError("a builder bug")})

    def to_document(message: Any) -> Any:
        gc_during_build.append(gc.isenabled())
        return build(message)

    def drain_of(count: int) -> Drain:
        consumer = FakeConsumer(one_partition(count), [])
        return Drain(consumer, TOPIC, "g", FakeSink([]), to_document, DrainSettings(batch_size=100))

    assert gc.isenabled()
    assert drain_of(200).run().records == 200
    assert gc.isenabled() and len(gc_during_build) == 200 and not any(gc_during_build)
    with pytest.raises(ValueError, match="a builder bug"):
        drain_of(300).run()
    assert gc.isenabled()
    gc.disable()
    try:
        assert drain_of(200).run().records == 200
        assert not gc.isenabled()
    finally:
        gc.enable()


def _wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        done.wait(0.01)
    raise AssertionError("condition not reached")


# --- the offset ledger (issue 19, finding 3) ---------------------------------------------------


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
