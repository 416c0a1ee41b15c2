"""``python -m faults``: randomized network-fault trials per fault kind against a broker and a
Mongo-wire server behind Toxiproxy, started here on free ports; prints a table and exits non-zero
on any lost, doubled or stale record (each key has several versions), any commit past the written
records, an unbounded failing try or an error that does not name its connection.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from chaos.harness import format_table
from chaos.trials import drop_database
from devstack.airflow import AirflowHome
from devstack.process import free_port
from faults.kinds import FAULT_KINDS
from faults.stack import fault_stack
from faults.trials import FaultTrialResult, run_fault_trial

log = logging.getLogger("faults")

COLUMNS = (
    "fault",
    "trials",
    "injected",
    "failed tries",
    "lost",
    "duplicate",
    "stale",
    "committed unwritten",
    "names connection",
    "failing try s (max)",
    "ok",
)


def trial_seed(master_seed: int, kind: str, trial: int) -> int:
    """A trial's own seed: the same master seed repeats the same plans."""
    return random.Random(f"{master_seed}:{kind}:{trial}").randrange(2**31)


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
    v = result.verification
    problems = f"; PROBLEMS: {' | '.join(result.problems)}" if result.problems else ""
    return (
        f"{tries}; {v.documents}/{v.expected} docs ({result.versions} versions per key), lost {v.lost}, "
        f"duplicate {v.duplicate}, stale {v.stale}{problems}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faults", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="trials per fault kind (default 5)")
    parser.add_argument("--seed", type=int, help="master seed (default: random, printed)")
    parser.add_argument(
        "--kinds", default=",".join(FAULT_KINDS), help=f"comma-separated subset of: {', '.join(FAULT_KINDS)}"
    )
    parser.add_argument("--results", type=Path, help="write every trial's details as JSON here")
    parser.add_argument("--keep-state", action="store_true", help="keep the services' state and logs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown or args.trials < 1:
        parser.error(f"unknown kinds {unknown}" if unknown else "--trials must be at least 1")
    master_seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    command = f"python -m faults --trials {args.trials} --seed {master_seed} --kinds {','.join(kinds)}"
    log.info("Master seed %d; repeat with: %s", master_seed, command)

    # Like the tests: settings from the caller's shell must not leak into the trials.
    for name in [name for name in os.environ if name.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))]:
        del os.environ[name]
    state_dir = Path(tempfile.mkdtemp(prefix="kafka-to-mongo-faults-"))
    home = AirflowHome(state_dir / "airflow", api_port=free_port())
    home.write(connections={}, extra={"logging": {"namespace_levels": "airflow.task.hooks=WARNING"}})
    os.environ["AIRFLOW_HOME"] = str(home.path)
    began = time.monotonic()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results: dict[str, list[FaultTrialResult]] = {}
    try:
        with fault_stack(state_dir) as stack:
            for conn_id, conn in stack.connections().items():
                os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
            # Puts AIRFLOW_HOME's plugins folder on sys.path: kafka_mongo_etl imports from here on.
            importlib.import_module("airflow")
            for kind in kinds:
                results[kind] = []
                for trial in range(1, args.trials + 1):
                    seed = trial_seed(master_seed, kind, trial)
                    result = run_fault_trial(kind, seed, stack, trial=trial)
                    results[kind].append(result)
                    log.log(
                        logging.INFO if result.ok else logging.ERROR,
                        "%s %d/%d seed %d: %s; %s (%.1fs)",
                        kind,
                        trial,
                        args.trials,
                        seed,
                        "ok" if result.ok else "FAILED",
                        describe(result),
                        result.seconds,
                    )
                    if result.ok:
                        drop_database(stack.mongo_uri, result.mongo_db)
        seconds = round(time.monotonic() - began, 1)
        rows = [summarize(kind, results[kind]) for kind in kinds]
        failures = [r for rs in results.values() for r in rs if not r.ok]
        print()
        print(f"Network faults: {args.trials} trials per fault kind, seed {master_seed}, {seconds:.0f}s")
        print(f"  {command}   (make faults TRIALS={args.trials} SEED={master_seed})")
        print()
        print(format_table(rows, COLUMNS))
        print()
        for result in failures:
            print(f"FAILED {result.kind} trial {result.trial} seed {result.seed}: {describe(result)}")
        if args.results is not None:
            args.results.parent.mkdir(parents=True, exist_ok=True)
            document = {
                "command": command,
                "seed": master_seed,
                "trials_per_kind": args.trials,
                "started": started,
                "seconds": seconds,
                "summary": rows,
                "trials": [r.as_dict() for rs in results.values() for r in rs],
            }
            args.results.write_text(json.dumps(document, indent=1, default=str) + "\n")
            print(f"Details of every trial: {args.results}")
    finally:
        if args.keep_state:
            log.info("State and logs kept in %s", state_dir)
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
    return 1 if failures else 0
