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
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from pymongo import MongoClient, monitoring

from chaos.trials import topic_offsets
from chaos.versions import latest_below, produce_versions, stale_query, versions_for
from devstack.toxiproxy import Proxy
from faults.kinds import BATCH_SIZE, FAILING_TRY_BOUND, KAFKA_RESET_PRODUCE, FaultPlan, plan_for
from faults.stack import FaultStack

log = logging.getLogger(__name__)

DAG_ID = "faults"
COLLECTION = "records"
PARTITIONS = 3
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
class Verification:
    expected: int
    documents: int
    distinct_ids: int
    lost: int
    duplicate: int
    unexpected: int
    # Documents holding an older version than the last one produced for their key.
    stale: int
    # Records between the group's committed offsets and the high watermarks after the last try.
    offsets_behind: int
    ids: set[Any] = field(default_factory=set, repr=False)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicate or self.stale or self.unexpected or self.offsets_behind)


@dataclass
class FaultTrialResult:
    kind: str
    trial: int
    seed: int
    plan: dict[str, Any]
    topic: str
    mongo_db: str
    # Versions of each key on the topic (chaos.versions): the last must be in MongoDB.
    versions: int
    tries: list[TryRecord]
    verification: Verification
    # Seconds from the trial's start at which the fault went on and off (None: never injected).
    injected_at: float | None
    removed_at: float | None
    seconds: float

    @property
    def failing_tries(self) -> list[TryRecord]:
        return [t for t in self.tries if t.failed]

    @property
    def problems(self) -> list[str]:
        """Why the trial failed (empty: it passed)."""
        problems = []
        if self.injected_at is None:
            problems.append("the fault was never injected (the task finished before its moment)")
        if not self.tries or self.tries[-1].failed:
            problems.append(f"the task did not succeed within {MAX_TRIES} tries")
        v = self.verification
        if not v.ok:
            problems.append(
                f"lost {v.lost}, duplicate {v.duplicate}, stale {v.stale}, unexpected {v.unexpected}, "
                f"offsets behind {v.offsets_behind}"
            )
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

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verification"].pop("ids")
        data["ok"] = self.ok
        data["problems"] = self.problems
        return data


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _names_connection(message: str, stack: FaultStack) -> bool:
    return any(
        f"{conn_id!r} ({address})" in message
        for conn_id, address in (("mongo_default", stack.mongo.listen), ("kafka_default", stack.kafka.listen))
    )


def _records_on_topic(stack: FaultStack, topic: str, consumer: Consumer | None = None) -> int:
    """Records on ``topic`` now (high minus low watermarks, read round the proxy); 0 if it is missing."""
    own = consumer is None
    consumer = consumer or Consumer(
        {"bootstrap.servers": stack.bootstrap_servers, "group.id": "faults-checks"}
    )
    try:
        found = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if found is None or found.error is not None:
            return 0
        return sum(
            high - low
            for low, high in (
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
                for p in found.partitions
            )
        )
    finally:
        if own:
            consumer.close()


def _when_records_on_topic(
    stack: FaultStack, topic: str, at_least: int, stop: threading.Event
) -> threading.Event:
    """An event set once ``at_least`` records are on ``topic``, checked every few milliseconds
    (a produce of a few thousand records takes well under a second)."""
    reached = threading.Event()

    def watch() -> None:
        consumer = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": "faults-checks"})
        try:
            while not stop.is_set():
                try:
                    if _records_on_topic(stack, topic, consumer) >= at_least:
                        reached.set()
                        return
                except KafkaException:
                    pass  # not created yet
                time.sleep(0.002)
        finally:
            consumer.close()

    threading.Thread(target=watch, name="fault-trigger", daemon=True).start()
    return reached


def _committed_not_written(stack: FaultStack, topic: str, group_id: str, mongo_db: str) -> int:
    """Keys with a record below the group's committed offsets whose document is missing or holds
    an earlier record (a key's versions are all on one partition, in order: its document must
    come from its last record below the committed offset, or a later one)."""
    offsets = topic_offsets(stack, topic, group_id)
    committed = {p: (low, max(low, committed)) for p, (low, _high, committed) in offsets.items()}
    promised = latest_below(stack.bootstrap_servers, topic, committed)
    client: MongoClient = MongoClient(stack.mongo_uri, serverSelectionTimeoutMS=10_000)
    try:
        stored = {
            doc["_id"]: (doc.get("_kafka", {}).get("partition"), doc.get("_kafka", {}).get("offset", -1))
            for doc in client[mongo_db][COLLECTION].find({}, {"_kafka.partition": 1, "_kafka.offset": 1})
        }
    finally:
        client.close()
    return sum(
        1
        for key, (partition, offset) in promised.items()
        if key not in stored or stored[key][0] != partition or stored[key][1] < offset
    )


def verify(
    stack: FaultStack, topic: str, group_id: str, mongo_db: str, expected: set[str], final_version: int
) -> Verification:
    client: MongoClient = MongoClient(stack.mongo_uri, serverSelectionTimeoutMS=10_000)
    try:
        collection = client[mongo_db][COLLECTION]
        documents = collection.count_documents({})
        distinct = collection.distinct("_id")
        ids = {doc["_id"] for doc in collection.find({}, {"_id": 1})}
        stale = collection.count_documents(stale_query(final_version))
    finally:
        client.close()
    offsets = topic_offsets(stack, topic, group_id)
    return Verification(
        expected=len(expected),
        documents=documents,
        distinct_ids=len(distinct),
        lost=len(expected - ids),
        duplicate=documents - len(distinct),
        unexpected=len(ids - expected),
        stale=stale,
        offsets_behind=sum(high - max(committed, low) for low, high, committed in offsets.values()),
        ids=ids,
    )


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
    Every key has 2 or 3 versions (``chaos.versions``): the older ones are produced before the
    produce task (which writes the last), or all of them before the consume.
    """
    from kafka_mongo_etl.drain import DrainSettings
    from kafka_mongo_etl.ids import batch_id, record_key
    from kafka_mongo_etl.tasks import ConsumeJob, run_consume, run_produce

    plan = plan_for(kind, seed)
    if count is not None:
        plan = replace(plan, count=count, after=1 if kind != KAFKA_RESET_PRODUCE else plan.after)
    topic = topic or _unique(f"faults-{kind}-")
    mongo_db = mongo_db or _unique("faults_")
    run_id = f"trial-{trial}-{seed}"
    batch = batch_id(DAG_ID, run_id)
    job = ConsumeJob(
        kafka_conn_id="kafka_default",
        mongo_conn_id="mongo_default",
        topic=topic,
        mongo_db=mongo_db,
        mongo_collection=COLLECTION,
        batch=batch,
        run_id=run_id,
        lease_wait=60.0,
        lease_ttl=plan.lease_ttl,
        drain=DrainSettings(batch_size=BATCH_SIZE, stall_timeout=plan.stall_timeout),
    )

    versions = versions_for(seed)

    def produce_versions_up_to(last: int) -> int:
        if last < 1:
            return 0
        return produce_versions(
            kafka_conn_id="kafka_default",
            topic=topic,
            partitions=PARTITIONS,
            batch=batch,
            count=plan.count,
            versions=list(range(1, last + 1)),
            seed=seed,
        )

    def produce() -> None:
        run_produce(
            kafka_conn_id="kafka_default",
            topic=topic,
            partitions=PARTITIONS,
            batch=batch,
            start=0,
            count=plan.count,
        )

    def consume() -> None:
        run_consume(job)

    stack.toxiproxy.reset()
    fault = Fault(plan, stack.proxy(plan.proxy))
    began = time.monotonic()
    tries: list[TryRecord] = []
    if kind == KAFKA_RESET_PRODUCE:
        older = produce_versions_up_to(versions - 1)
        stop_watching = threading.Event()
        trigger = _when_records_on_topic(stack, topic, older + plan.after, stop_watching)
        tries += _tries(
            "produce",
            produce,
            fault,
            trigger,
            stack,
            after_failure=lambda record: setattr(record, "on_topic", _records_on_topic(stack, topic)),
        )
        stop_watching.set()
        if not tries[-1].failed:
            tries += _tries("consume", consume, None, None, stack)
    else:
        produce_versions_up_to(versions)
        trigger = WRITES.arm(mongo_db, COLLECTION, plan.after)
        tries += _tries(
            "consume",
            consume,
            fault,
            trigger,
            stack,
            after_failure=lambda record: setattr(
                record,
                "committed_not_written",
                _committed_not_written(stack, topic, job.consumer_group, mongo_db),
            ),
        )
        WRITES.disarm()
    stack.toxiproxy.reset()
    expected = {record_key(batch, n) for n in range(plan.count)}
    verification = verify(stack, topic, job.consumer_group, mongo_db, expected, versions)
    return FaultTrialResult(
        kind=kind,
        trial=trial,
        seed=seed,
        plan=plan.as_dict(),
        topic=topic,
        mongo_db=mongo_db,
        versions=versions,
        tries=tries,
        verification=verification,
        injected_at=None if fault.injected_at is None else round(fault.injected_at - began, 2),
        removed_at=None if fault.removed_at is None else round(fault.removed_at - began, 2),
        seconds=round(time.monotonic() - began, 2),
    )


def _tries(
    task: str,
    run: Callable[[], None],
    fault: Fault | None,
    trigger: threading.Event | None,
    stack: FaultStack,
    after_failure: Callable[[TryRecord], None] | None = None,
) -> list[TryRecord]:
    """Run ``task`` until it succeeds, at most MAX_TRIES times; the fault is armed for the first."""
    records = []
    for number in range(1, MAX_TRIES + 1):
        armed = fault is not None and trigger is not None and number == 1
        if armed:
            fault.arm(trigger)
        began = time.monotonic()
        error: Exception | None = None
        try:
            run()
        except Exception as err:  # noqa: BLE001 - every failure of a try is what the trial records
            error = err
        seconds = round(time.monotonic() - began, 2)
        if armed:
            fault.try_ended()
        record = TryRecord(
            task=task,
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
            log.info("%s try %d failed after %.1fs: %s: %s", task, number, seconds, record.error_type, error)
        records.append(record)
        if error is None:
            break
    return records
