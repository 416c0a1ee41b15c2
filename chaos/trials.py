"""One crash trial: kill a task process at a kill point, run the task again, check the ``_id`` set.

The parent (the harness or a test) never patches anything: every injected task runs in a child
process (``python -m chaos.child``) that inherits this process's environment — ``AIRFLOW_HOME``
and the ``AIRFLOW_CONN_*`` variables for ``kafka_default`` and ``mongo_default``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from pymongo import MongoClient

from chaos.points import NO_FAULT, PRODUCE_MID_BATCH, plan_for
from chaos.versions import latest_below, produce_versions, stale_query, versions_for
from chaos.work import Work

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
SIGKILLED = -signal.SIGKILL
CHILD_TIMEOUT = 180.0
OVERLAPPING_RUNS = "overlapping-runs"


@dataclass(frozen=True)
class Stack:
    """Where the broker and the Mongo-wire server of the trials listen (for checking only)."""

    bootstrap_servers: str
    mongo_uri: str


@dataclass
class ChildRun:
    """How one task process ended."""

    role: str
    point: str
    returncode: int
    seconds: float
    log: str
    note: dict[str, Any] | None = None

    @property
    def sigkilled(self) -> bool:
        return self.returncode == SIGKILLED


@dataclass
class Verification:
    """The target collection against the expected ``_id`` set and final content, and the group's offsets."""

    expected: int
    documents: int
    distinct_ids: int
    lost: int
    duplicate: int
    unexpected: int
    # Documents whose content does not belong to their _id (num/batch differ from the key).
    mismatched: int
    # Documents holding an older version than the last one produced for their key.
    stale: int
    # Records of the batch in <collection>_dlq: all trial records are good, so this must be 0.
    dead_letters: int
    # Records between the group's committed offsets and the high watermarks after the retry.
    offsets_behind: int
    ids: set[str] = field(default_factory=set, repr=False)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicate
            or self.unexpected
            or self.mismatched
            or self.stale
            or self.dead_letters
            or self.offsets_behind
        )


@dataclass
class TrialResult:
    point: str
    trial: int
    seed: int
    topic: str
    mongo_db: str
    # The batch id of each DAG run of the trial, its keys, and the versions of each key.
    batches: list[str]
    count: int
    versions: int
    plan: dict[str, Any] | None
    runs: list[ChildRun]
    # The state the retry started from: records on the topic, documents in the target,
    # records below the group's committed offsets.
    after_kill: dict[str, int]
    verification: Verification
    seconds: float
    error: str | None = None

    @property
    def killed(self) -> bool:
        return any(run.sigkilled for run in self.runs if run.role == "killed")

    @property
    def ok(self) -> bool:
        return self.error is None and self.verification.ok

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verification"].pop("ids")
        data["killed"] = self.killed
        data["ok"] = self.ok
        return data


def run_child(
    role: str, point: str, seed: int, work: Work, workdir: Path, timeout: float = CHILD_TIMEOUT
) -> ChildRun:
    """Run ``python -m chaos.child`` to its end (or its SIGKILL); its output goes to a log file."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = workdir / f"{role}.log"
    note = workdir / f"{role}.note.json"
    note.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "chaos.child", point, str(seed), work.to_json(), "--note", str(note)]
    began = time.monotonic()
    with open(log_file, "wb") as output:
        child = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
        try:
            returncode = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise TrialError(f"{role} child ({point}) ran over {timeout:.0f}s; see {log_file}") from None
    return ChildRun(
        role=role,
        point=point,
        returncode=returncode,
        seconds=round(time.monotonic() - began, 2),
        log=str(log_file),
        note=json.loads(note.read_text()) if note.exists() else None,
    )


class TrialError(RuntimeError):
    """A trial could not be carried out (not a data error: those are in the Verification)."""


def _log_tail(run: ChildRun, lines: int = 15) -> str:
    try:
        return "\n".join(Path(run.log).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _require_success(run: ChildRun) -> None:
    if run.returncode != 0:
        raise TrialError(
            f"{run.role} child ({run.point}) exited with {run.returncode}; its log {run.log} ends:\n"
            f"{_log_tail(run)}"
        )


def topic_offsets(stack: Stack, topic: str, group_id: str) -> dict[int, tuple[int, int, int]]:
    """``{partition: (low, high, committed)}``; committed is negative when the group has none."""
    from kafka_mongo_etl.drain import committed_offsets

    consumer = Consumer(
        {"bootstrap.servers": stack.bootstrap_servers, "group.id": group_id, "enable.auto.commit": False}
    )
    try:
        metadata = consumer.list_topics(topic, timeout=30)
        partitions = sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []
        if not partitions or metadata.topics[topic].error is not None:
            return {}
        # The drain's own reader: it waits while a fresh broker's group coordinator loads.
        committed = committed_offsets(consumer, [TopicPartition(topic, p) for p in partitions], 30)
        offsets = {}
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=30, cached=False)
            offsets[tp.partition] = (low, high, tp.offset)
        return offsets
    finally:
        consumer.close()


def _state(stack: Stack, work: Work) -> dict[str, int]:
    offsets = topic_offsets(stack, work.topic, work.group_id)
    client: MongoClient = MongoClient(stack.mongo_uri, serverSelectionTimeoutMS=10_000)
    try:
        documents = client[work.mongo_db][work.mongo_collection].count_documents({})
    finally:
        client.close()
    committed_ends = {p: (low, max(committed, low)) for p, (low, _, committed) in offsets.items()}
    return {
        "records_on_topic": sum(high - low for low, high, _ in offsets.values()),
        "records_committed": sum(max(committed, low) - low for low, _, committed in offsets.values()),
        # Keys with a record below the committed offsets: each must have its document.
        "keys_committed": len(latest_below(stack.bootstrap_servers, work.topic, committed_ends)),
        "documents": documents,
    }


def verify(stack: Stack, work: Work, expected: set[str]) -> Verification:
    """Compare the target collection with ``expected`` (ids, and each key's last version:
    ``work.versions``) and the group's offsets with the topic."""
    client: MongoClient = MongoClient(stack.mongo_uri, serverSelectionTimeoutMS=10_000)
    try:
        database = client[work.mongo_db]
        collection = database[work.mongo_collection]
        documents = collection.count_documents({})
        distinct = collection.distinct("_id")
        mismatched = 0
        ids: set[str] = set()
        for doc in collection.find({}, {"_id": 1, "num": 1, "batch": 1}):
            ids.add(doc["_id"])
            if doc["_id"] != f"{doc.get('batch')}/{doc.get('num')}":
                mismatched += 1
        stale = collection.count_documents(stale_query(work.versions))
        dead_letters = database[f"{work.mongo_collection}_dlq"].count_documents({})
    finally:
        client.close()
    offsets = topic_offsets(stack, work.topic, work.group_id)
    return Verification(
        expected=len(expected),
        documents=documents,
        distinct_ids=len(distinct),
        lost=len(expected - ids),
        duplicate=documents - len(distinct),
        unexpected=len(ids - expected),
        mismatched=mismatched,
        stale=stale,
        dead_letters=dead_letters,
        offsets_behind=sum(high - max(committed, low) for low, high, committed in offsets.values()),
        ids=ids,
    )


def trial_seed(master_seed: int, point: str, trial: int) -> int:
    """A trial's own seed: the same master seed repeats the same plans."""
    return random.Random(f"{master_seed}:{point}:{trial}").randrange(2**31)


def batch_size_for(seed: int) -> int:
    """The records a trial produces: 500-1000, so a drain makes 3-5 writes of up to 200.

    Drawn from a stream of its own: the kill plan's draws from ``seed`` must not follow it.
    """
    return random.Random(f"count:{seed}").randint(500, 1000)


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def run_trial(
    point: str,
    seed: int,
    stack: Stack,
    workdir: Path,
    *,
    trial: int = 0,
    topic: str | None = None,
    mongo_db: str | None = None,
    count: int | None = None,
) -> TrialResult:
    """Kill a task at ``point``, run it again as its retry, then check the target collection.

    produce-mid-batch: the killed produce, its retry (the whole batch again), then consume.
    The consume points: the batch is produced here, then the killed consume and its retry.
    The retry is the same DAG run: same batch id (the lease owner), same job, no injection.
    Every key has 2 or 3 versions (``chaos.versions``): the consume points produce them all
    here, interleaved; produce-mid-batch produces the older ones here and the killed produce
    task (and its retry) the last.
    """
    work = Work(
        action="produce" if point == PRODUCE_MID_BATCH else "consume",
        topic=topic or _unique(f"chaos-{point}-"),
        run_id=f"trial-{trial}-{seed}",
        count=count or batch_size_for(seed),
        mongo_db=mongo_db or _unique("chaos_"),
        versions=versions_for(seed),
    )
    plan = plan_for(point, seed, work)
    began = time.monotonic()
    runs: list[ChildRun] = []
    after_kill: dict[str, int] = {}
    error = None
    try:
        last = work.versions if point != PRODUCE_MID_BATCH else work.versions - 1
        _produce_versions(work, range(1, last + 1), seed)
        killed = run_child("killed", point, seed, work, workdir)
        runs.append(killed)
        after_kill = _state(stack, work)
        retry = run_child("retry", NO_FAULT, seed, work, workdir)
        runs.append(retry)
        _require_success(retry)
        if point == PRODUCE_MID_BATCH:
            consume = Work(**{**asdict(work), "action": "consume"})
            runs.append(run_child("consume", NO_FAULT, seed, consume, workdir))
            _require_success(runs[-1])
    except TrialError as err:
        error = str(err)
    # Checked after a failed retry too: the report says what that failure left behind.
    verification = verify(stack, work, work.expected_ids())
    return TrialResult(
        point=point,
        trial=trial,
        seed=seed,
        topic=work.topic,
        mongo_db=work.mongo_db,
        batches=[work.batch],
        count=work.count,
        versions=work.versions,
        plan=plan.as_dict(),
        runs=runs,
        after_kill=after_kill,
        verification=verification,
        seconds=round(time.monotonic() - began, 2),
        error=error,
    )


def run_overlapping(
    seed: int,
    stack: Stack,
    workdir: Path,
    *,
    trial: int = 0,
    topic: str | None = None,
    mongo_db: str | None = None,
    count: int | None = None,
) -> TrialResult:
    """Two DAG runs (different batches) of one topic and target, started at the same moment.

    Each child produces its batch and then drains the topic, as the DAG's two tasks do; the drain
    lease makes the second drain wait for the first. The second run starts at once or up to 2 s
    later (drawn from ``seed``). No kill: the check is one copy of each record of both batches,
    each with its last version (the older ones are produced here first, the last by the runs).
    """
    rng = random.Random(seed)
    topic = topic or _unique("chaos-overlap-")
    mongo_db = mongo_db or _unique("chaos_")
    count = count or batch_size_for(seed)
    stagger = rng.choice([0.0, round(rng.uniform(0.2, 2.0), 2)])
    runs_work = [
        Work(
            action="produce+consume",
            topic=topic,
            run_id=f"overlap-{trial}-{seed}-{name}",
            count=count,
            mongo_db=mongo_db,
            versions=versions_for(seed),
        )
        for name in ("scheduled", "manual")
    ]
    began = time.monotonic()
    runs: list[ChildRun] = []
    error = None
    try:
        for work in runs_work:
            _produce_versions(work, range(1, work.versions), seed)
        with ThreadPoolExecutor(max_workers=len(runs_work)) as pool:
            first = pool.submit(run_child, "run-1", NO_FAULT, seed, runs_work[0], workdir)
            # Half the trials start both runs at once; the others start the second one a little
            # later, so its records may land after the first drain's snapshot.
            if stagger:
                time.sleep(stagger)
            second = pool.submit(run_child, "run-2", NO_FAULT, seed, runs_work[1], workdir)
            runs = [first.result(), second.result()]
        for run in runs:
            _require_success(run)
    except TrialError as err:
        error = str(err)
    expected = set().union(*(work.expected_ids() for work in runs_work))
    verification = verify(stack, runs_work[0], expected)
    return TrialResult(
        point=OVERLAPPING_RUNS,
        trial=trial,
        seed=seed,
        topic=topic,
        mongo_db=mongo_db,
        batches=[work.batch for work in runs_work],
        count=count,
        versions=runs_work[0].versions,
        plan={"stagger": stagger},
        runs=runs,
        after_kill={},
        verification=verification,
        seconds=round(time.monotonic() - began, 2),
        error=error,
    )


def _produce_versions(work: Work, versions: range, seed: int) -> None:
    if versions:
        produce_versions(
            kafka_conn_id=work.kafka_conn_id,
            topic=work.topic,
            partitions=work.partitions,
            batch=work.batch,
            count=work.count,
            versions=list(versions),
            seed=seed,
        )


def drop_database(mongo_uri: str, name: str) -> None:
    client: MongoClient = MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
    try:
        client.drop_database(name)
    finally:
        client.close()


def child_environment_ready() -> None:
    """Fail early, naming what is missing, when children could not reach the connections."""
    missing = [
        name
        for name in ("AIRFLOW_HOME", "AIRFLOW_CONN_KAFKA_DEFAULT", "AIRFLOW_CONN_MONGO_DEFAULT")
        if not os.environ.get(name)
    ]
    if missing:
        raise TrialError(f"the trial children need {', '.join(missing)} in the environment")
