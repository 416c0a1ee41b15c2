"""One crash trial: kill a task process at a kill point, run the task again, check the ``_id`` set.

The parent (the harness or a test) never patches anything: every injected task runs in a child
process (``python -m chaos.child``) that inherits this process's environment — ``AIRFLOW_HOME``
and the ``AIRFLOW_CONN_*`` variables for ``kafka_default`` and ``mongo_default``.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from chaos.points import NO_FAULT, PRODUCE_MID_BATCH, plan_for
from trials import harness
from trials.checks import Stack, committed_ends, committed_keys, topic_offsets, verify
from trials.versions import produce_versions_of, versions_for
from trials.work import Work, unique_name

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
SIGKILLED = -signal.SIGKILL
CHILD_TIMEOUT = 180.0
OVERLAPPING_RUNS = "overlapping-runs"


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
class TrialResult(harness.TrialResult):
    # The batch id of each DAG run of the trial, and its keys.
    batches: list[str]
    count: int
    runs: list[ChildRun]
    # The state the retry started from: records on the topic, documents in the target,
    # records below the group's committed offsets.
    after_kill: dict[str, int]
    error: str | None = None

    @property
    def killed(self) -> bool:
        return any(run.sigkilled for run in self.runs if run.role == "killed")

    @property
    def problems(self) -> list[str]:
        """Data intact, no error, and (for a kill point) the child really died by SIGKILL."""
        problems = super().problems + ([] if self.error is None else [self.error])
        if self.scenario != OVERLAPPING_RUNS and not self.killed:
            problems.append("the child was not killed by SIGKILL")
        return problems

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "killed": self.killed}


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


def _state(stack: Stack, work: Work) -> dict[str, int]:
    """What the retry starts from: records on the topic, below the group's committed offsets, keys
    with a record there (each must have its document) and documents in the target."""
    offsets = topic_offsets(stack, work.topic, work.group_id)
    client = stack.mongo_client()
    try:
        documents = client[work.mongo_db][work.mongo_collection].count_documents({})
    finally:
        client.close()
    return {
        "records_on_topic": sum(o.records for o in offsets.values()),
        "records_committed": sum(end - low for low, end in committed_ends(offsets).values()),
        "keys_committed": len(committed_keys(stack, work)),
        "documents": documents,
    }


def batch_size_for(seed: int) -> int:
    """The records a trial produces: 500-1000, so a drain makes 3-5 writes of up to 200.

    Drawn from a stream of its own: the kill plan's draws from ``seed`` must not follow it.
    """
    return random.Random(f"count:{seed}").randint(500, 1000)


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
    Every key has 2 or 3 versions (``trials.versions``): the consume points produce them all
    here, interleaved; produce-mid-batch produces the older ones here and the killed produce
    task (and its retry) the last.
    """
    work = Work(
        action="produce" if point == PRODUCE_MID_BATCH else "consume",
        topic=topic or unique_name(f"chaos-{point}-"),
        run_id=f"trial-{trial}-{seed}",
        count=count or batch_size_for(seed),
        mongo_db=mongo_db or unique_name("chaos_"),
        versions=versions_for(seed),
    )
    plan = plan_for(point, seed, work)
    began = time.monotonic()
    runs: list[ChildRun] = []
    after_kill: dict[str, int] = {}
    error = None
    try:
        last = work.versions if point != PRODUCE_MID_BATCH else work.versions - 1
        produce_versions_of(work, last, seed)
        killed = run_child("killed", point, seed, work, workdir)
        runs.append(killed)
        after_kill = _state(stack, work)
        retry = run_child("retry", NO_FAULT, seed, work, workdir)
        runs.append(retry)
        _require_success(retry)
        if point == PRODUCE_MID_BATCH:
            runs.append(run_child("consume", NO_FAULT, seed, replace(work, action="consume"), workdir))
            _require_success(runs[-1])
    except TrialError as err:
        error = str(err)
    # Checked after a failed retry too: the report says what that failure left behind.
    verification = verify(stack, work)
    return TrialResult(
        scenario=point,
        trial=trial,
        seed=seed,
        topic=work.topic,
        mongo_db=work.mongo_db,
        batches=[work.batch],
        count=work.count,
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
    topic = topic or unique_name("chaos-overlap-")
    mongo_db = mongo_db or unique_name("chaos_")
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
            produce_versions_of(work, work.versions - 1, seed)
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
        scenario=OVERLAPPING_RUNS,
        trial=trial,
        seed=seed,
        topic=topic,
        mongo_db=mongo_db,
        batches=[work.batch for work in runs_work],
        count=count,
        plan={"stagger": stagger},
        runs=runs,
        after_kill={},
        verification=verification,
        seconds=round(time.monotonic() - began, 2),
        error=error,
    )
