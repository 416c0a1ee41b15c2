"""One network-fault trial: a real task run through Toxiproxy, a fault mid-flight, Airflow-style
retries until the task succeeds, then the exact ``_id`` set and the group's offsets.

The tries run in this process's main thread and call what the DAG's tasks call (``run_produce``,
``run_consume`` with the ``kafka_default`` and ``mongo_default`` connections from
``AIRFLOW_CONN_*``, pointing at the proxies); the fault is applied and removed by a thread. A
pymongo command listener (``TargetWrites``) says when a bulk write to the target collection
starts, so a MongoDB fault lands while a write is on the wire. Every check reads Kafka and
MongoDB round the proxies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from confluent_kafka import KafkaException
from pymongo import monitoring

from devstack.toxiproxy import Proxy
from faults.kinds import BATCH_SIZE, FAILING_TRY_BOUND, KAFKA_RESET_PRODUCE, FaultPlan, plan_for
from faults.stack import FaultStack
from trials import harness
from trials.checks import committed_not_written, records_on_topic, verify
from trials.versions import produce_versions_of, versions_for
from trials.work import Work, run_work, unique_name

log = logging.getLogger(__name__)

DAG_ID = "faults"
# The DAG's retries=3: four tries in all.
MAX_TRIES = 4


class TargetWrites(monitoring.CommandListener):
    """Sets an event when write command number ``k`` to one collection starts (pymongo monitoring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: tuple[str, str] | None = None
        self._wanted = 0
        self._seen = 0
        self._event = threading.Event()

    def arm(self, database: str, collection: str, k: int) -> threading.Event:
        with self._lock:
            self._target, self._wanted, self._seen = (database, collection), k, 0
            self._event = threading.Event()
            return self._event

    def disarm(self) -> None:
        with self._lock:
            self._target = None

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in ("update", "insert"):
            return
        with self._lock:
            if self._target != (event.database_name, event.command.get(event.command_name)):
                return
            self._seen += 1
            if self._seen == self._wanted:
                self._event.set()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


# Registered once, before any client of the ETL exists: pymongo gives it to every new client.
WRITES = TargetWrites()
monitoring.register(WRITES)


class Fault:
    """Applies a plan's fault to its proxy when ``trigger`` fires and removes it when it is over."""

    def __init__(self, plan: FaultPlan, proxy: Proxy) -> None:
        self.plan = plan
        self.proxy = proxy
        self.injected_at: float | None = None
        self.removed_at: float | None = None
        self._ended = threading.Event()
        self._thread: threading.Thread | None = None

    def arm(self, trigger: threading.Event) -> None:
        self._ended.clear()
        self._thread = threading.Thread(target=self._run, args=(trigger,), name="fault", daemon=True)
        self._thread.start()

    def _apply(self) -> Callable[[], None]:
        if self.plan.toxic is None:
            self.proxy.set_enabled(False)
            return lambda: self.proxy.set_enabled(True)
        name = self.proxy.add_toxic(self.plan.toxic, self.plan.stream, **self.plan.attributes)
        return lambda: self.proxy.remove_toxic(name)

    def _run(self, trigger: threading.Event) -> None:
        while not trigger.wait(0.01):
            if self._ended.is_set():
                return  # the try ended before the fault's moment: never injected
        remove = self._apply()
        self.injected_at = time.monotonic()
        log.info("Fault on: %s", self.plan.describe())
        try:
            if self.plan.hold is not None:
                time.sleep(self.plan.hold)
            else:
                # Removed when the try has ended; at the latest after the bound, so a try that
                # would hang for good is seen as a failure instead of hanging the trials.
                self._ended.wait(FAILING_TRY_BOUND)
        finally:
            remove()
            self.removed_at = time.monotonic()
            log.info("Fault off after %.1fs", self.removed_at - self.injected_at)

    def try_ended(self) -> None:
        """The try is over: end a fault that lasts as long as the try, wait out a timed one."""
        self._ended.set()
        if self._thread is not None:
            self._thread.join()


@dataclass
class TryRecord:
    """How one task try ended."""

    task: str
    number: int
    seconds: float
    # The fault was on during (part of) this try.
    faulted: bool
    error_type: str | None = None
    error: str | None = None
    names_connection: bool | None = None
    # consume: records below the group's committed offsets that are not in MongoDB (must be 0).
    committed_not_written: int | None = None
    # produce: what the failure said was acknowledged, and the records on the topic after it.
    acknowledged: int | None = None
    on_topic: int | None = None

    @property
    def failed(self) -> bool:
        return self.error_type is not None


@dataclass
class FaultTrialResult(harness.TrialResult):
    tries: list[TryRecord]
    # Seconds from the trial's start at which the fault went on and off (None: never injected).
    injected_at: float | None
    removed_at: float | None

    @property
    def failing_tries(self) -> list[TryRecord]:
        return [t for t in self.tries if t.failed]

    @property
    def problems(self) -> list[str]:
        """Why the trial failed (empty: it passed)."""
        problems = super().problems
        if self.injected_at is None:
            problems.append("the fault was never injected (the task finished before its moment)")
        if not self.tries or self.tries[-1].failed:
            problems.append(f"the task did not succeed within {MAX_TRIES} tries")
        for t in self.failing_tries:
            if t.committed_not_written:
                problems.append(f"try {t.number}: {t.committed_not_written} committed records not in MongoDB")
            if not t.names_connection:
                problems.append(f"try {t.number}: the error does not name the connection: {t.error}")
            if t.seconds > FAILING_TRY_BOUND:
                problems.append(f"try {t.number} took {t.seconds:.0f}s to fail")
            if t.acknowledged is not None and t.on_topic is not None and t.on_topic < t.acknowledged:
                problems.append(
                    f"try {t.number}: {t.acknowledged} acknowledged but {t.on_topic} on the topic"
                )
        return problems


def _names_connection(message: str, stack: FaultStack) -> bool:
    return any(
        f"{conn_id!r} ({address})" in message
        for conn_id, address in (("mongo_default", stack.mongo.listen), ("kafka_default", stack.kafka.listen))
    )


def _when_records_on_topic(
    stack: FaultStack, topic: str, at_least: int, stop: threading.Event
) -> threading.Event:
    """An event set once ``at_least`` records are on ``topic``, checked every few milliseconds
    (a produce of a few thousand records takes well under a second)."""
    reached = threading.Event()

    def watch() -> None:
        from kafka_mongo_etl.offsets import records_on

        consumer = stack.consumer()
        try:
            while not stop.is_set():
                try:
                    if records_on(consumer, topic, 10) >= at_least:
                        reached.set()
                        return
                except KafkaException:
                    pass  # asked while the topic was being created
                time.sleep(0.002)
        finally:
            consumer.close()

    threading.Thread(target=watch, name="fault-trigger", daemon=True).start()
    return reached


def run_fault_trial(
    kind: str,
    seed: int,
    stack: FaultStack,
    *,
    trial: int = 0,
    topic: str | None = None,
    mongo_db: str | None = None,
    count: int | None = None,
) -> FaultTrialResult:
    """Run the task with ``kind``'s fault (planned from ``seed``) on its first try, retry it the
    way Airflow would until it succeeds, then check the target collection and the offsets.

    The produce fault hits ``run_produce``; its retries re-send the batch, then one consume
    loads it. The other faults hit ``run_consume`` of a batch produced beforehand. ``count``
    replaces the plan's record count (a consume fault then starts at the first bulk write).
    Every key has 2 or 3 versions (``trials.versions``): the older ones are produced before the
    produce task (which writes the last), or all of them before the consume.
    """
    plan = plan_for(kind, seed)
    if count is not None:
        plan = replace(plan, count=count, after=1 if kind != KAFKA_RESET_PRODUCE else plan.after)
    work = Work(
        action="consume",
        topic=topic or unique_name(f"faults-{kind}-"),
        run_id=f"trial-{trial}-{seed}",
        count=plan.count,
        mongo_db=mongo_db or unique_name("faults_"),
        batch_size=BATCH_SIZE,
        stall_timeout=plan.stall_timeout,
        lease_ttl=plan.lease_ttl,
        versions=versions_for(seed),
        dag_id=DAG_ID,
    )
    stack.toxiproxy.reset()
    fault = Fault(plan, stack.proxy(plan.proxy))
    began = time.monotonic()
    tries: list[TryRecord] = []
    if kind == KAFKA_RESET_PRODUCE:
        older = produce_versions_of(work, work.versions - 1, seed)
        stop_watching = threading.Event()
        trigger = _when_records_on_topic(stack, work.topic, older + plan.after, stop_watching)
        tries += _tries(
            replace(work, action="produce"),
            fault,
            trigger,
            stack,
            after_failure=lambda record: setattr(record, "on_topic", records_on_topic(stack, work.topic)),
        )
        stop_watching.set()
        if not tries[-1].failed:
            tries += _tries(work, None, None, stack)
    else:
        produce_versions_of(work, work.versions, seed)
        trigger = WRITES.arm(work.mongo_db, work.mongo_collection, plan.after)
        tries += _tries(
            work,
            fault,
            trigger,
            stack,
            after_failure=lambda record: setattr(
                record, "committed_not_written", committed_not_written(stack, work)
            ),
        )
        WRITES.disarm()
    stack.toxiproxy.reset()
    return FaultTrialResult(
        scenario=kind,
        trial=trial,
        seed=seed,
        plan=plan.as_dict(),
        topic=work.topic,
        mongo_db=work.mongo_db,
        tries=tries,
        verification=verify(stack, work),
        injected_at=None if fault.injected_at is None else round(fault.injected_at - began, 2),
        removed_at=None if fault.removed_at is None else round(fault.removed_at - began, 2),
        seconds=round(time.monotonic() - began, 2),
    )


def _tries(
    work: Work,
    fault: Fault | None,
    trigger: threading.Event | None,
    stack: FaultStack,
    after_failure: Callable[[TryRecord], None] | None = None,
) -> list[TryRecord]:
    """Run ``work`` until it succeeds, at most MAX_TRIES times; the fault is armed for the first."""
    records = []
    for number in range(1, MAX_TRIES + 1):
        armed = fault is not None and trigger is not None and number == 1
        if armed:
            fault.arm(trigger)
        began = time.monotonic()
        error: Exception | None = None
        try:
            run_work(work)
        except Exception as err:  # noqa: BLE001 - every failure of a try is what the trial records
            error = err
        seconds = round(time.monotonic() - began, 2)
        if armed:
            fault.try_ended()
        record = TryRecord(
            task=work.action,
            number=number,
            seconds=seconds,
            faulted=armed and fault.injected_at is not None,
        )
        if error is not None:
            record.error_type = type(error).__name__
            record.error = str(error)
            record.names_connection = _names_connection(str(error), stack)
            record.acknowledged = getattr(error, "acknowledged", None)
            if after_failure is not None:
                after_failure(record)
            log.info(
                "%s try %d failed after %.1fs: %s: %s", work.action, number, seconds, record.error_type, error
            )
        records.append(record)
        if error is None:
            break
    return records
