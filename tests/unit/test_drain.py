"""The drain's interleavings (``kafka_mongo_etl.drain``) against the fakes of tests/unit/fakes.py:
the order of reads, builds, writes, dead letters, renewals and commits; pauses at the snapshot;
errors in the writer; stops; stalls. No service: each test runs in milliseconds.

``check_history`` states the drain's promise once, and the tests (and a Hypothesis property over
random logs, batch sizes and interleavings) hold every run to it: every record a commit covers was
acknowledged before it by the sink or the dead-letter sink (the next batch's write, started
before that commit, may be acknowledged too, and is not covered), committed offsets only grow and
never pass the snapshot, every record below the snapshot is written exactly once and in order
per partition, nothing past it is written, and the drain ends committed at the snapshot.
The properties run a fixed sample; ``DRAIN_EXAMPLES=3000`` runs more (about a minute).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from fakes import (
    ABORTED,
    TOPIC,
    Entry,
    Events,
    FakeClock,
    FakeConsumer,
    FakeDeadLetterSink,
    FakeLease,
    FakeLedger,
    FakePartition,
    FakeSink,
    build_with,
    committed_in,
    versions,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kafka_mongo_etl import drain as drain_module
from kafka_mongo_etl.drain import Drain, DrainSettings, DrainSummary
from kafka_mongo_etl.errors import LeaseLostError, StopRequested, TopicNotFoundError, WriteFailedError
from kafka_mongo_etl.records import BadRecordError

# Real time is never asserted on: a consume that finds nothing waits at most a millisecond.
FAST = {"poll_timeout": 0.001}


def run(
    logs: dict[int, FakePartition],
    events: Events,
    *,
    group_offsets: dict[int, int] | None = None,
    sink: FakeSink | None = None,
    lease: FakeLease | None = None,
    dead_letters: FakeDeadLetterSink | None = None,
    ledger: FakeLedger | None = None,
    builder: Any = None,
    partitions: list[int] | None = None,
    consumer: FakeConsumer | None = None,
    **settings: Any,
) -> tuple[DrainSummary, FakeConsumer, FakeSink]:
    consumer = consumer or FakeConsumer(logs, events, group_offsets=group_offsets, log_reads=True)
    sink = sink or FakeSink(events, log_starts=True)
    drain = Drain(
        consumer,
        TOPIC,
        "g",
        sink,
        builder or build_with(events=events),
        DrainSettings(**{**FAST, **settings}),
        lease,
        dead_letters,
        partitions,
        ledger,
    )
    return drain.run(), consumer, sink


def check_history(
    events: Events,
    logs: dict[int, FakePartition],
    starts: dict[int, int],
    snapshot: dict[int, int],
    complete: bool = True,
) -> dict[int, int]:
    """The drain's promise, checked on the ``events`` of one run that drained ``logs`` from
    ``starts`` to ``snapshot`` (see the module docstring); the committed offsets. A run that
    failed (``complete=False``) is held to the promise of each commit only."""
    written: dict[int, list[int]] = {p: [] for p in logs}
    dead: dict[int, list[int]] = {p: [] for p in logs}
    committed = dict(starts)
    writing = False
    for event in events:
        kind = event[0]
        if kind == "write-start":
            assert not writing, "a write started while another was in flight"
            writing = True
        elif kind == "write":
            writing = False
            for p, offset in event[1]:
                written[p].append(offset)
        elif kind == "dead":
            for p, offset, _ in event[1]:
                dead[p].append(offset)
        elif kind == "commit":
            for p, offset in event[1].items():
                assert committed[p] <= offset <= snapshot[p], f"p{p}: commit {offset} after {committed[p]}"
                stored = sorted(o for o in written[p] + dead[p] if o < offset)
                assert stored == logs[p].data_offsets(starts[p], offset), (
                    f"p{p} committed {offset} with records {stored} acknowledged"
                )
                committed[p] = offset
    for p, log in logs.items():
        assert written[p] == sorted(written[p]), f"p{p} written out of order: {written[p]}"
        if complete:
            assert sorted(written[p] + dead[p]) == log.data_offsets(starts[p], snapshot[p]), (
                f"p{p}: each record below the snapshot exactly once, none past it"
            )
    if complete:
        assert committed == snapshot
        assert not writing
    return committed


def kinds(events: Events) -> list[str]:
    return [event[0] for event in events]


def index(events: Events, wanted: tuple[Any, ...]) -> int:
    return next(i for i, event in enumerate(events) if event[: len(wanted)] == wanted)


def keyed(keys: list[str], rounds: int = 1) -> FakePartition:
    return FakePartition(list(versions(keys, rounds)))


def numbered(count: int, prefix: str = "k") -> FakePartition:
    return FakePartition(list(versions([f"{prefix}{n}" for n in range(count)], rounds=1)))


# --- order of writes and commits ----------------------------------------------------------------


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "in turn"])
def test_every_commit_follows_the_acknowledged_write_of_its_records(overlap: bool) -> None:
    events: Events = []
    logs = {0: keyed(["a", "b", "c"], rounds=4), 1: keyed(["d", "e"], rounds=3)}  # 12 and 6 records
    ledger = FakeLedger(events)
    summary, consumer, sink = run(
        logs, events, lease=FakeLease(events), ledger=ledger, batch_size=5, overlap=overlap
    )
    check_history(events, logs, {0: 0, 1: 0}, {0: 12, 1: 6})
    # Each commit is fenced by a renewal just before it, and recorded in the ledger just after.
    for i, event in enumerate(events):
        if event[0] == "commit":
            assert events[i - 1] == ("renew",) and events[i + 1] == ("ledger", event[1])
    assert summary.records == summary.loaded == 18 and summary.batches == sink.writes
    assert consumer.group_offsets == ledger.offsets == {0: 12, 1: 6}
    # The latest version of every key wins.
    assert {key: doc["v"] for key, doc in sink.documents.items()} == {"a": 3, "b": 3, "c": 3, "d": 2, "e": 2}


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "in turn"])
def test_the_next_batch_is_read_and_built_while_the_previous_one_is_written_only_with_overlap(
    overlap: bool,
) -> None:
    events: Events = []
    second_built = threading.Event()
    build = build_with(events=events)

    def builder(message: Any) -> Any:
        document = build(message)
        if message.offset() == 10:  # the first record of the second batch
            second_built.set()
        return document

    second_write_started = threading.Event()

    def before_write(n: int) -> None:
        if n == 2:
            second_write_started.set()
        if overlap and n == 1:
            # Wait (boundedly) for the main thread to build batch 2: with overlap it does so
            # while this write runs; a drain that does not overlap lets the wait run out.
            second_built.wait(10)

    class CommittingWhileTheNextWriteRuns(FakeLease):
        def renew(self) -> None:
            if overlap and self.renewals == 0:
                # Batch 1's commit waits (boundedly) for batch 2's write: with overlap that
                # write starts first, so the commit's round trips overlap it.
                second_write_started.wait(10)
            super().renew()

    sink = FakeSink(events, before_write=before_write, log_starts=True)
    logs = {0: numbered(30)}
    lease = CommittingWhileTheNextWriteRuns(events)
    run(logs, events, sink=sink, builder=builder, lease=lease, batch_size=10, overlap=overlap)
    check_history(events, logs, {0: 0}, {0: 30})
    first_write_acknowledged = index(events, ("write",))
    second_batch_built = index(events, ("build", 0, 10))
    if overlap:
        # (When the writer thread starts writing batch 1 is its own affair; it ends only after.)
        assert second_batch_built < first_write_acknowledged
        # Batch 2's write starts once batch 1's is acknowledged, before batch 1's commit (one
        # write in flight at a time: check_history).
        second_write_started_at = index(events, ("write-start", 2))
        assert first_write_acknowledged < second_write_started_at < index(events, ("commit", {0: 10}))
    else:
        assert first_write_acknowledged < index(events, ("commit", {0: 10})) < second_batch_built
        steps = [kind for kind in kinds(events) if kind in ("read", "write", "commit")]
        assert steps == ["read", "write", "commit"] * 3 + ["commit"]


# --- the snapshot -----------------------------------------------------------------------------


def produce_late(count: int) -> Any:
    """An ``on_consume`` that appends ``count`` records to every partition at the first consume:
    records produced after the snapshot was taken."""

    def on_consume(consumer: FakeConsumer) -> None:
        if consumer.consumes == 1:
            for p, log in consumer.partitions.items():
                log.records.extend((f"late{p}-{n}", {"late": True}) for n in range(count))

    return on_consume


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "in turn"])
def test_a_partition_is_paused_at_its_snapshot_and_records_past_it_are_never_written_or_committed(
    overlap: bool,
) -> None:
    events: Events = []
    logs = {0: numbered(3, "a"), 1: numbered(20, "b")}
    consumer = FakeConsumer(logs, events, chunk=1, on_consume=produce_late(5), log_reads=True)
    summary, consumer, sink = run(logs, events, consumer=consumer, batch_size=4, overlap=overlap)
    assert all(len(log.records) > 5 for log in logs.values()), "the late records were produced"
    check_history(events, logs, {0: 0, 1: 0}, {0: 3, 1: 20})
    assert consumer.group_offsets == {0: 3, 1: 20} and consumer.paused == {0, 1}
    paused = index(events, ("pause", [0]))
    assert paused < index(events, ("pause", [1]))
    assert not [e for e in events[paused:] if e[0] == "read" and any(p == 0 for p, _ in e[1])], (
        "partition 0 read after its pause"
    )
    assert not [key for key in sink.documents if key.startswith("late")]
    assert summary.records == 23 and summary.partitions[0].records == 3


def test_a_transaction_marker_as_the_last_offset_below_the_snapshot_commits_the_snapshot() -> None:
    """Offset 2 is a commit marker: the position reaches 3 with the last record at 1."""
    events: Events = []
    logs = {0: FakePartition([("a", {"v": 0}), ("b", {"v": 0}), None])}
    summary, consumer, _ = run(logs, events, batch_size=10)
    check_history(events, logs, {0: 0}, {0: 3})
    assert [k for k in kinds(events) if k in ("pause", "write", "commit")] == [
        "pause",
        "write",
        "commit",
        "commit",
    ]
    assert events[-2] == ("commit", {0: 3}), "the batch itself commits the snapshot"
    assert summary.stalled == {} and summary.partitions[0].committed == 3


def test_markers_alone_below_the_snapshot_are_committed_without_a_write() -> None:
    events: Events = []
    logs = {0: FakePartition([("a", {"v": 0}), None, ABORTED, ABORTED, None])}
    summary, _, sink = run(logs, events, group_offsets={0: 1})
    assert sink.writes == 0 and summary.records == 0
    assert committed_in(events) == {0: 5} and summary.stalled == {}


def test_end_of_partition_events_are_not_records_and_reaching_them_completes_the_partition() -> None:
    events: Events = []
    logs = {0: numbered(3, "a"), 1: numbered(1, "b"), 2: FakePartition([("c", {"v": 0}), None])}
    consumer = FakeConsumer(logs, events, eof=True, log_reads=True)
    summary, consumer, sink = run(logs, events, consumer=consumer, batch_size=2)
    check_history(events, logs, {0: 0, 1: 0, 2: 0}, {0: 3, 1: 1, 2: 2})
    assert [e[1:] for e in events if e[0] == "build"] == [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0)]
    assert summary.records == 5 and set(sink.documents) == {"a0", "a1", "a2", "b0", "c"}


# --- errors, stops and the lease --------------------------------------------------------------


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "in turn"])
def test_an_error_in_the_writer_surfaces_and_nothing_after_it_is_committed(overlap: bool) -> None:
    events: Events = []

    def before_write(n: int) -> None:
        if n == 2:
            raise WriteFailedError("MongoDB did not write the batch (fake): retry")

    lease = FakeLease(events)
    ledger = FakeLedger(events)
    sink = FakeSink(events, before_write=before_write, log_starts=True)
    with pytest.raises(WriteFailedError, match="did not write the batch"):
        run({0: numbered(30)}, events, sink=sink, lease=lease, ledger=ledger, batch_size=10, overlap=overlap)
    assert [e for e in events if e[0] == "commit"] == [("commit", {0: 10})]
    assert ledger.offsets == {0: 10}
    assert sink.writes == 2, "no write after the failed one"
    assert not lease.abandoned, "no write of the drain can land any more: the lease may be released"


def test_a_failed_dead_letter_write_leaves_its_batch_uncommitted() -> None:
    events: Events = []
    logs = {0: FakePartition([("a", {"v": 0}), ("b", b"not json"), ("c", {"v": 0})])}
    dead = FakeDeadLetterSink(events, fail=WriteFailedError("the dead-letter collection refused (fake)"))
    with pytest.raises(WriteFailedError, match="dead-letter collection refused"):
        run(logs, events, dead_letters=dead, batch_size=10)
    assert committed_in(events) == {} and ("write", [(0, 0), (0, 2)]) in events


def test_a_stop_during_a_write_in_the_main_thread_commits_nothing_more_and_keeps_the_lease_abandoned() -> (
    None
):
    """Without overlap the main thread writes; a stop (SIGTERM's ``StopRequested``) inside that
    write leaves it possibly landing later, so the lease must be left to expire."""
    events: Events = []

    def before_write(n: int) -> None:
        if n == 2:
            raise StopRequested("SIGTERM")

    lease = FakeLease(events)
    sink = FakeSink(events, before_write=before_write)
    with pytest.raises(StopRequested):
        run({0: numbered(30)}, events, sink=sink, lease=lease, batch_size=10, overlap=False)
    assert committed_in(events) == {0: 10} and lease.abandoned


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "in turn"])
def test_a_lost_lease_stops_the_drain_before_the_commit(overlap: bool) -> None:
    events: Events = []
    lease = FakeLease(events, lose_at=2)
    ledger = FakeLedger(events)
    with pytest.raises(LeaseLostError, match="taken over"):
        run({0: numbered(30)}, events, lease=lease, ledger=ledger, batch_size=10, overlap=overlap)
    assert committed_in(events) == {0: 10} == ledger.offsets
    assert lease.renewals == 2
    # Batch 2 was written (a fenced write is safe to repeat) but not committed. With overlap,
    # batch 3's write started before batch 2's commit found the lease lost: it is waited for
    # and not committed either.
    written = [e[1][-1] for e in events if e[0] == "write"]
    assert written == ([(0, 9), (0, 19), (0, 29)] if overlap else [(0, 9), (0, 19)])


def test_a_commit_kafka_refuses_surfaces_and_is_not_recorded_in_the_ledger() -> None:
    events: Events = []
    refusal = KafkaError(KafkaError.REBALANCE_IN_PROGRESS)
    consumer = FakeConsumer(
        {0: numbered(20)}, events, refuse_commit=lambda offsets: refusal if offsets == {0: 20} else None
    )
    ledger = FakeLedger(events)
    with pytest.raises(KafkaException) as raised:
        run({}, events, consumer=consumer, ledger=ledger, batch_size=10)
    assert raised.value.args[0].code() == KafkaError.REBALANCE_IN_PROGRESS
    assert ledger.offsets == {0: 10} and consumer.group_offsets == {0: 10}


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "in turn"])
def test_a_fetch_error_fails_the_drain_and_its_batch_is_not_committed(overlap: bool) -> None:
    """With auto.offset.reset=error, records deleted by retention during the drain arrive as an
    error event: the drain must fail (its retry meets the gap in start_offsets), not skip them."""
    events: Events = []
    out_of_range = KafkaError(KafkaError._AUTO_OFFSET_RESET)
    consumer = FakeConsumer({0: numbered(30)}, events, fetch_errors={2: (0, out_of_range)})
    with pytest.raises(KafkaException) as raised:
        run({}, events, consumer=consumer, batch_size=10, overlap=overlap)
    assert raised.value.args[0].code() == KafkaError._AUTO_OFFSET_RESET
    # Batch 1 was written before the error (or while it was read) and may be committed; batch 2 not.
    assert committed_in(events) == {0: 10}
    assert [e[1][-1] for e in events if e[0] == "write"] == [(0, 9)]


# --- dead letters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "in turn"])
def test_dead_letters_are_written_before_the_commit_of_their_batch(overlap: bool) -> None:
    events: Events = []
    records: list[Entry] = list(versions([f"k{n}" for n in range(15)], rounds=1))
    records[3] = ("k3", b"not json")
    records[12] = ("poison", {"v": 0})
    logs = {0: FakePartition(records)}
    sink = FakeSink(events, reject=lambda d: "refused (fake)" if d.id == "poison" else None, log_starts=True)
    dead = FakeDeadLetterSink(events)
    summary, consumer, _ = run(logs, events, sink=sink, dead_letters=dead, batch_size=10, overlap=overlap)
    check_history(events, logs, {0: 0}, {0: 15})
    assert index(events, ("dead", [(0, 3, "not_json")])) < index(events, ("commit", {0: 10}))
    assert index(events, ("dead", [(0, 12, "rejected")])) < index(events, ("commit", {0: 15}))
    assert [(d.stage, d.message.offset()) for d in dead.letters] == [("decode", 3), ("write", 12)]
    assert summary.dead_letters == 2 and summary.dead_letter_reasons == {"not_json": 1, "rejected": 1}
    assert summary.records == 15 and summary.loaded == 13


def test_without_a_dead_letter_sink_a_bad_record_fails_the_drain_before_its_batch_commits() -> None:
    events: Events = []
    records: list[Entry] = list(versions([f"k{n}" for n in range(15)], rounds=1))
    records[12] = ("k12", b"[1, 2]")
    with pytest.raises(BadRecordError, match=r"t\[0\]@12 is JSON but not an object"):
        run({0: FakePartition(records)}, events, batch_size=10)
    assert committed_in(events) == {0: 10}


# --- stalls ---------------------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The drain's clock, advanced only by fake consumes that wait: stall decisions are exact."""
    fake = FakeClock()
    monkeypatch.setattr(drain_module, "time", fake)
    return fake


def test_a_partition_that_stops_moving_is_reported_after_the_stall_timeout(clock: FakeClock) -> None:
    events: Events = []
    logs = {0: numbered(5), 1: numbered(5)}

    def bounded(consumer: FakeConsumer) -> None:
        # A drain that never notices the stall fails here instead of hanging.
        assert consumer.consumes < 1000, "still reading 1000 s after the partition stopped moving"

    consumer = FakeConsumer(logs, events, stuck={1}, clock=clock, on_consume=bounded)
    began = clock.now
    summary, consumer, sink = run(
        logs, events, consumer=consumer, batch_size=100, stall_timeout=30, poll_timeout=1
    )
    assert summary.stalled == {1: 0}
    assert 30 < clock.now - began <= 32, "stopped at the first check past the stall timeout"
    assert consumer.group_offsets == {0: 5, 1: 0} and set(sink.documents) == {f"k{n}" for n in range(5)}


def test_a_slow_partition_that_keeps_moving_does_not_stall(clock: FakeClock) -> None:
    events: Events = []

    def slow(consumer: FakeConsumer) -> None:
        clock.advance(20)  # each consume takes 20 s, the stall timeout is 30 s

    logs = {0: numbered(6)}
    consumer = FakeConsumer(logs, events, on_consume=slow, clock=clock)
    summary, consumer, _ = run(logs, events, consumer=consumer, batch_size=1, stall_timeout=30)
    assert summary.stalled == {} and consumer.group_offsets == {0: 6}
    assert clock.now - 1000.0 >= 6 * 20


# --- what there is to drain -------------------------------------------------------------------------


def test_an_empty_topic_reads_nothing_and_commits_every_partition_at_zero() -> None:
    events: Events = []
    summary, consumer, sink = run({0: FakePartition(), 1: FakePartition()}, events)
    assert consumer.consumes == 0 and sink.writes == 0 and summary.records == 0
    assert events == [("commit", {0: 0, 1: 0})]


def test_a_topic_read_to_its_end_is_committed_again_and_nothing_is_read() -> None:
    events: Events = []
    summary, consumer, sink = run({0: numbered(4), 1: numbered(2)}, events, group_offsets={0: 4, 1: 2})
    assert consumer.consumes == 0 and sink.writes == 0
    assert events == [("commit", {0: 4, 1: 2})] and summary.partitions[0].start == 4


def test_a_missing_topic_or_partition_is_named() -> None:
    consumer = FakeConsumer({0: numbered(1)})
    with pytest.raises(TopicNotFoundError, match="topic 'other' does not exist"):
        Drain(consumer, "other", "g", FakeSink([]), build_with()).run()
    with pytest.raises(TopicNotFoundError, match=r"topic 't' has no partition \[5\]"):
        Drain(consumer, TOPIC, "g", FakeSink([]), build_with(), partitions=[0, 5]).run()


def test_a_drain_of_some_partitions_reads_and_commits_only_those() -> None:
    events: Events = []
    logs = {0: numbered(3, "a"), 1: numbered(4, "b"), 2: numbered(5, "c")}
    summary, consumer, sink = run(logs, events, partitions=[1], batch_size=3)
    assert set(summary.partitions) == {1} and consumer.group_offsets == {1: 4}
    assert set(sink.documents) == {"b0", "b1", "b2", "b3"}


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "in turn"])
def test_interleaved_partitions_are_each_written_in_order_and_committed_to_their_snapshot(
    overlap: bool,
) -> None:
    events: Events = []
    logs = {
        0: keyed(["a", "b"], rounds=5),
        1: FakePartition([("c", {"v": 0}), None, ABORTED, None, ("c", {"v": 1}), ("d", {"v": 0})]),
        2: keyed(["e"], rounds=7),
    }
    consumer = FakeConsumer(logs, events, group_offsets={2: 3}, chunk=1, log_reads=True)
    summary, _, sink = run(logs, events, consumer=consumer, batch_size=3, overlap=overlap)
    check_history(events, logs, {0: 0, 1: 0, 2: 3}, {0: 10, 1: 6, 2: 7})
    reads = [e[1] for e in events if e[0] == "read"]
    assert any(len({p for p, _ in read}) > 1 for read in reads), "batches mixed partitions"
    assert {key: doc["v"] for key, doc in sink.documents.items()} == {"a": 4, "b": 4, "c": 1, "d": 0, "e": 6}
    assert summary.records == 10 + 3 + 4


# --- the promise over random logs ----------------------------------------------------------------

# One step of a partition's log: a record (key, version), a commit marker, or an aborted
# transaction (its records, then its abort marker).
steps = st.one_of(
    st.tuples(st.sampled_from("xyz"), st.integers(0, 99)),
    st.just("marker"),
    st.integers(1, 3).map(lambda n: ("aborted", n)),
)


@st.composite
def topics(draw: st.DrawFn) -> tuple[dict[int, FakePartition], dict[int, int]]:
    """Up to three partitions of random logs, and the group's committed offsets (some absent)."""
    logs: dict[int, FakePartition] = {}
    offsets: dict[int, int] = {}
    for p in range(draw(st.integers(1, 3))):
        entries: list[Entry] = []
        for step in draw(st.lists(steps, max_size=25)):
            if step == "marker":
                entries.append(None)
            elif step[0] == "aborted":
                entries.extend([ABORTED] * step[1] + [None])
            else:
                entries.append((f"{step[0]}{p}", {"v": step[1]}))
        logs[p] = FakePartition(entries)
        if draw(st.booleans()):
            offsets[p] = draw(st.integers(0, len(entries)))
    return logs, offsets


@settings(
    max_examples=int(os.environ.get("DRAIN_EXAMPLES", "150")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    topic=topics(),
    batch_size=st.integers(1, 8),
    overlap=st.booleans(),
    eof=st.booleans(),
    chunk=st.one_of(st.none(), st.integers(1, 3)),
    late=st.integers(0, 3),
)
def test_any_log_any_batching_writes_each_record_once_in_order_and_commits_the_snapshot(
    topic: tuple[dict[int, FakePartition], dict[int, int]],
    batch_size: int,
    overlap: bool,
    eof: bool,
    chunk: int | None,
    late: int,
) -> None:
    logs, offsets = topic
    snapshot = {p: log.high for p, log in logs.items()}
    starts = {p: offsets.get(p, 0) for p in logs}
    events: Events = []
    consumer = FakeConsumer(
        logs, events, group_offsets=offsets, eof=eof, chunk=chunk, on_consume=produce_late(late)
    )
    ledger = FakeLedger(events)
    summary, consumer, sink = run(
        logs,
        events,
        consumer=consumer,
        ledger=ledger,
        lease=FakeLease(events),
        batch_size=batch_size,
        overlap=overlap,
    )
    check_history(events, logs, starts, snapshot)
    assert consumer.group_offsets == ledger.offsets == snapshot and summary.stalled == {}
    expected: dict[str, int] = {}
    for p, log in logs.items():
        for offset in log.data_offsets(starts[p], snapshot[p]):
            key, _ = log.records[offset]  # type: ignore[misc]
            expected[key] = offset
    assert {key: doc["_kafka"]["offset"] for key, doc in sink.documents.items()} == expected
    assert summary.records == sum(len(log.data_offsets(starts[p], snapshot[p])) for p, log in logs.items())


@settings(
    max_examples=int(os.environ.get("DRAIN_EXAMPLES", "100")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    topic=topics(),
    batch_size=st.integers(1, 6),
    overlap=st.booleans(),
    failing_write=st.integers(1, 6),
    lost_at_renewal=st.one_of(st.none(), st.integers(1, 6)),
)
def test_a_failed_write_or_a_lost_lease_anywhere_commits_only_what_was_acknowledged_before_it(
    topic: tuple[dict[int, FakePartition], dict[int, int]],
    batch_size: int,
    overlap: bool,
    failing_write: int,
    lost_at_renewal: int | None,
) -> None:
    logs, offsets = topic
    snapshot = {p: log.high for p, log in logs.items()}
    starts = {p: offsets.get(p, 0) for p in logs}
    events: Events = []

    def before_write(n: int) -> None:
        if n == failing_write:
            events.append(("failed",))
            raise WriteFailedError("MongoDB did not write the batch (fake)")

    lease = FakeLease(events, lose_at=lost_at_renewal)
    sink = FakeSink(events, before_write=before_write, log_starts=True)
    consumer = FakeConsumer(logs, events, group_offsets=offsets, log_reads=True)
    try:
        run(logs, events, consumer=consumer, sink=sink, lease=lease, batch_size=batch_size, overlap=overlap)
        failed = None
    except (WriteFailedError, LeaseLostError) as err:
        failed = err
    committed = check_history(events, logs, starts, snapshot, complete=failed is None)
    assert committed == {p: consumer.group_offsets.get(p, starts[p]) for p in logs}
    if failed is None:
        assert sink.writes < failing_write and (lost_at_renewal is None or lease.renewals < lost_at_renewal)
        return
    assert not lease.abandoned, "no write of the drain can land any more"
    if isinstance(failed, WriteFailedError):
        # At most the commit of the write acknowledged before it (that commit runs while the
        # failed write is in flight); no write starts after it.
        after = events[events.index(("failed",)) :]
        assert kinds(after).count("commit") <= (1 if overlap else 0) and "write-start" not in kinds(after[1:])
    else:
        assert lease.renewals == lost_at_renewal and kinds(events).count("commit") == lost_at_renewal - 1
