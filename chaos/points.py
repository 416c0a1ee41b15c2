"""The kill points: where a task process is SIGKILLed, and the injection that does it.

Each point is planned from a seed (which call to kill at, and how) before the child starts, so a
trial can be repeated. The injection is installed only inside the child process, on the ETL's
stable seams: the hooks' ``_get_client`` (the confluent client is wrapped in a proxy that counts
``produce``/``commit`` calls), ``MongoSink.write`` and ``Collection.bulk_write``. The kill is
``os.kill(os.getpid(), SIGKILL)``: no exception, no ``finally``, no ``atexit``, no flush.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trials.work import Work

PRODUCE_MID_BATCH = "produce-mid-batch"
CONSUME_AFTER_FETCH = "consume-after-fetch"
CONSUME_MID_BULK_WRITE = "consume-mid-bulk-write"
CONSUME_AFTER_WRITE_BEFORE_COMMIT = "consume-after-write-before-commit"
# The "point" of a child that runs without injection: the retry, or a run without faults.
NO_FAULT = "none"
KILL_POINTS = (
    PRODUCE_MID_BATCH,
    CONSUME_AFTER_FETCH,
    CONSUME_MID_BULK_WRITE,
    CONSUME_AFTER_WRITE_BEFORE_COMMIT,
)

# consume-mid-bulk-write: the first part of the batch acknowledged, then the kill; or the kill
# from a timer thread while the whole bulk write is on the wire or being applied.
ACKNOWLEDGED_PREFIX = "acknowledged-prefix"
IN_FLIGHT = "in-flight"

# Exit status of a child whose SIGKILL did not arrive (it never should).
NOT_KILLED_STATUS = 70


@dataclass(frozen=True)
class KillPlan:
    """Where and how one child dies.

    ``call``: the call number at which to kill: produce-mid-batch dies after ``call`` records
    were handed to ``produce()`` (at the next ``produce()``, or at ``flush()`` when ``call`` is
    the whole batch); the consume points die at the entry of sink write or offset commit
    number ``call`` (1-based).
    ``settle``: produce-mid-batch: after this many records were handed, the producer waits until
    the broker acknowledged them, then hands the rest up to ``call`` and dies at once: the first
    ``settle`` records are on the topic, the next ones are lost in the local queue, the rest
    were never handed over.
    ``delay``: in-flight: seconds into the bulk write at which the timer fires.
    ``split``: acknowledged-prefix: the fraction of the write's requests acknowledged first.
    """

    point: str
    seed: int
    call: int
    mode: str | None = None
    settle: int = 0
    delay: float = 0.0
    split: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_for(point: str, seed: int, work: Work) -> KillPlan:
    """The kill plan for ``point``, drawn from ``seed``; the call number is always reached."""
    rng = random.Random(seed)
    if point == PRODUCE_MID_BATCH:
        call = rng.randint(1, work.count)
        return KillPlan(point, seed, call=call, settle=rng.randint(0, call - 1))
    if point in (CONSUME_AFTER_FETCH, CONSUME_AFTER_WRITE_BEFORE_COMMIT):
        return KillPlan(point, seed, call=rng.randint(1, work.min_writes))
    if point == CONSUME_MID_BULK_WRITE:
        call = rng.randint(1, work.min_writes)
        mode = rng.choice([ACKNOWLEDGED_PREFIX, IN_FLIGHT])
        if mode == ACKNOWLEDGED_PREFIX:
            return KillPlan(point, seed, call=call, mode=mode, split=round(rng.random(), 3))
        # A 200-document upsert takes about 50 ms on the Mongo-wire server (seen in trials:
        # timers under ~50 ms fire while the client waits for the reply).
        return KillPlan(point, seed, call=call, mode=mode, delay=round(rng.uniform(0.0, 0.05), 3))
    raise ValueError(f"unknown kill point {point!r}; choose one of {', '.join(KILL_POINTS)}")


def sigkill_self(note: Path, **facts: Any) -> None:
    """Record what the process was doing, then SIGKILL it.

    The note is the only trace the harness gets of the moment of death; it is written with a
    plain ``write`` (the page cache survives the process).
    """
    note.write_text(json.dumps(facts, default=str))
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(NOT_KILLED_STATUS)  # unreachable: SIGKILL to oneself is delivered before kill() returns


class KillingProducer:
    """A confluent ``Producer`` proxy that dies after ``plan.call`` records were handed to it."""

    def __init__(self, producer: Any, plan: KillPlan, note: Path) -> None:
        self._producer = producer
        self._plan = plan
        self._note = note
        self.handed = 0
        self.settled = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def produce(self, *args: Any, **kwargs: Any) -> None:
        if self.handed == self._plan.call:
            self._die("produce")
        if self._plan.settle and self.handed == self._plan.settle:
            self._settle()
        self._producer.produce(*args, **kwargs)
        self.handed += 1

    def flush(self, *args: Any, **kwargs: Any) -> int:
        if self.handed == self._plan.call:
            self._die("flush")
        return self._producer.flush(*args, **kwargs)

    def _settle(self, timeout: float = 30.0) -> None:
        """Wait until the records handed so far are acknowledged (or ``timeout`` passed).

        Without this pause the whole batch is handed over in milliseconds and a kill never finds
        a record on the broker. ``flush`` is the measure: the producer reports failures only.
        """
        self.settled = self.handed - self._producer.flush(timeout)

    def _die(self, where: str) -> None:
        sigkill_self(
            self._note,
            point=self._plan.point,
            at=where,
            handed=self.handed,
            settled=self.settled,
        )


class KillingConsumer:
    """A confluent ``Consumer`` proxy that dies at the entry of commit number ``plan.call``."""

    def __init__(self, consumer: Any, plan: KillPlan, note: Path) -> None:
        self._consumer = consumer
        self._plan = plan
        self._note = note
        self.commits = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        self.commits += 1
        if self.commits == self._plan.call:
            offsets = kwargs.get("offsets") or (args[1] if len(args) > 1 else None) or []
            sigkill_self(
                self._note,
                point=self._plan.point,
                at="commit",
                call=self.commits,
                offsets={tp.partition: tp.offset for tp in offsets},
            )
        return self._consumer.commit(*args, **kwargs)


def install(plan: KillPlan, work: Work, note: Path) -> None:
    """Patch this process so it SIGKILLs itself at ``plan``; call it in the child only."""
    from kafka_mongo_etl.clients import EtlConsumerHook, EtlProducerHook

    if plan.point == PRODUCE_MID_BATCH:
        _wrap_client(EtlProducerHook, KillingProducer, plan, note)
    elif plan.point == CONSUME_AFTER_FETCH:
        _kill_at_sink_write(plan, work, note)
    elif plan.point == CONSUME_MID_BULK_WRITE:
        _kill_in_bulk_write(plan, work, note)
    elif plan.point == CONSUME_AFTER_WRITE_BEFORE_COMMIT:
        _wrap_client(EtlConsumerHook, KillingConsumer, plan, note)
    else:
        raise ValueError(f"unknown kill point {plan.point!r}")


def _wrap_client(hook: type, killing: type, plan: KillPlan, note: Path) -> None:
    """Make ``hook`` hand out its confluent client wrapped in ``killing`` (the hooks' one seam)."""
    original = hook._get_client

    def _get_client(self: Any, config: dict[str, Any]) -> Any:
        return killing(original(self, config), plan, note)

    hook._get_client = _get_client


def _is_target(collection: Any, work: Work) -> bool:
    """The run's target collection (not the dead-letter, lease or audit collections)."""
    return collection.name == work.mongo_collection and collection.database.name == work.mongo_db


def _kill_at_sink_write(plan: KillPlan, work: Work, note: Path) -> None:
    """Records fetched and turned into documents, then death at the entry of the k-th write."""
    from kafka_mongo_etl.mongo_sink import MongoSink

    original = MongoSink.write
    writes = 0

    def write(self: MongoSink, documents: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal writes
        if documents and _is_target(self.collection, work):
            writes += 1
            if writes == plan.call:
                sigkill_self(
                    note, point=plan.point, at="MongoSink.write", call=writes, documents=len(documents)
                )
        return original(self, documents, *args, **kwargs)

    MongoSink.write = write  # type: ignore[method-assign]


def _kill_in_bulk_write(plan: KillPlan, work: Work, note: Path) -> None:
    """Death inside the k-th bulk write to the target collection."""
    from pymongo.collection import Collection

    original = Collection.bulk_write
    writes = 0

    def bulk_write(self: Collection, requests: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal writes
        if not _is_target(self, work):
            return original(self, requests, *args, **kwargs)
        writes += 1
        if writes != plan.call:
            return original(self, requests, *args, **kwargs)
        requests = list(requests)
        if plan.mode == ACKNOWLEDGED_PREFIX:
            acknowledged = int(plan.split * len(requests))
            try:
                if acknowledged:
                    # May raise BulkWriteError (the insert step's duplicate _ids are acknowledged
                    # errors): the process must die here all the same, never hand the prefix's
                    # result to the ETL as if it were the whole write's.
                    original(self, requests[:acknowledged], *args, **kwargs)
            finally:
                sigkill_self(
                    note,
                    point=plan.point,
                    at="bulk_write",
                    mode=plan.mode,
                    call=writes,
                    requests=len(requests),
                    acknowledged=acknowledged,
                )
        _bulk_write_killed_by_timer(original, self, requests, args, kwargs, plan, note, writes)
        return None  # unreachable

    Collection.bulk_write = bulk_write  # type: ignore[method-assign]


def _bulk_write_killed_by_timer(
    original: Callable[..., Any],
    collection: Any,
    requests: list[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    plan: KillPlan,
    note: Path,
    call: int,
) -> None:
    """Start the whole bulk write and SIGKILL from a timer thread ``plan.delay`` seconds into it.

    If MongoDB acknowledges the write before the timer fires, the kill comes right after the
    acknowledgement instead (the note says which); the process never goes on to commit.
    """
    first = threading.Lock()

    def kill(in_flight: bool) -> None:
        sigkill_self(
            note,
            point=plan.point,
            at="bulk_write",
            mode=plan.mode,
            call=call,
            requests=len(requests),
            delay=plan.delay,
            in_flight=in_flight,
        )

    def from_timer() -> None:
        if first.acquire(blocking=False):
            kill(in_flight=True)

    timer = threading.Timer(plan.delay, from_timer)
    timer.daemon = True
    timer.start()
    try:
        original(collection, requests, *args, **kwargs)  # may raise BulkWriteError: die all the same
    finally:
        # Blocks for good if the timer won: its SIGKILL is on the way.
        first.acquire()
        kill(in_flight=False)
