"""``python -m faults``: randomized network-fault trials per fault kind against a broker and a
Mongo-wire server behind Toxiproxy, started here on free ports; prints a table and exits non-zero
on any lost, doubled or stale record (each key has several versions), any commit past the written
records, an unbounded failing try or an error that does not name its connection.

The plan, the seed, the checks and the table are the trial core's (``trials``); this module says
what a fault trial is and how its row reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from faults.kinds import FAULT_KINDS
from faults.stack import FaultStack, fault_stack
from faults.trials import FaultTrialResult, run_fault_trial
from trials import harness


@contextmanager
def services(state_dir: Path) -> Iterator[tuple[FaultStack, dict[str, dict]]]:
    with fault_stack(state_dir) as stack:
        yield stack, stack.connections()


def run(kind: str, seed: int, stack: FaultStack, _trial_dir: Path, trial: int) -> FaultTrialResult:
    return run_fault_trial(kind, seed, stack, trial=trial)


def summarize(kind: str, results: list[FaultTrialResult]) -> dict[str, Any]:
    failing = [t for r in results for t in r.failing_tries]
    return {
        "fault": kind,
        "trials": len(results),
        "injected": sum(r.injected_at is not None for r in results),
        "failed tries": len(failing),
        "lost": sum(r.verification.lost for r in results),
        "duplicate": sum(r.verification.duplicate for r in results),
        "stale": sum(r.verification.stale for r in results),
        "committed unwritten": sum(t.committed_not_written or 0 for t in failing),
        "names connection": f"{sum(bool(t.names_connection) for t in failing)}/{len(failing)}",
        "failing try s (max)": max((t.seconds for t in failing), default="-"),
        "ok": sum(r.ok for r in results),
    }


def describe(result: FaultTrialResult) -> str:
    tries = "; ".join(
        f"{t.task} try {t.number}: "
        + (f"{t.error_type} after {t.seconds:.1f}s" if t.failed else f"ok in {t.seconds:.1f}s")
        for t in result.tries
    )
    problems = f"; PROBLEMS: {' | '.join(result.problems)}" if result.problems else ""
    return f"{tries}; {result.verification.describe()}{problems}"


SUITE = harness.Suite(
    prog="faults",
    title="Network faults",
    unit="fault kind",
    option="kinds",
    scenarios=FAULT_KINDS,
    default_trials=5,
    services=services,
    run=run,
    summarize=summarize,
    describe=describe,
)


def main(argv: list[str] | None = None) -> int:
    return harness.main(SUITE, argv)
