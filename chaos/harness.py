"""``python -m chaos``: randomized crash trials per kill point against a broker and a Mongo-wire
server started here on free ports; prints a table and exits non-zero on any lost, doubled or
stale record (each key has several versions: the last one must be in MongoDB).
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chaos.points import KILL_POINTS
from chaos.trials import (
    OVERLAPPING_RUNS,
    Stack,
    TrialResult,
    drop_database,
    run_overlapping,
    run_trial,
    trial_seed,
)
from devstack.airflow import AirflowHome, local_connections
from devstack.kafka import KafkaBroker
from devstack.mongo import MongoWireServer
from devstack.process import free_port

log = logging.getLogger("chaos")

SCENARIOS = (*KILL_POINTS, OVERLAPPING_RUNS)
COLUMNS = ("kill point", "trials", "killed", "lost", "duplicate", "stale", "unexpected", "ok", "seconds")


@contextmanager
def local_stack(state_dir: Path) -> Iterator[Stack]:
    """A Kafka broker and a Mongo-wire server on free ports, an AIRFLOW_HOME, and the
    ``AIRFLOW_CONN_*`` variables the trial children inherit; everything stopped on the way out."""
    # Like the tests: settings from the caller's shell must not leak into the trials.
    for name in [name for name in os.environ if name.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))]:
        del os.environ[name]
    home = AirflowHome(state_dir / "airflow", api_port=free_port())
    # The hooks' "Producer <cimpl.Producer ...>" lines add nothing to a trial's log.
    home.write(connections={}, extra={"logging": {"namespace_levels": "airflow.task.hooks=WARNING"}})
    os.environ["AIRFLOW_HOME"] = str(home.path)
    broker = KafkaBroker(state_dir / "kafka", port=free_port(), controller_port=free_port())
    mongo = MongoWireServer(state_dir / "mongo", port=free_port())
    try:
        log.info("Starting Kafka on %s and the Mongo-wire server on %s", broker.bootstrap_servers, mongo.uri)
        broker.start()
        mongo.start()
        for conn_id, conn in local_connections(broker.bootstrap_servers, mongo.host, mongo.port).items():
            os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
        # Airflow puts AIRFLOW_HOME's plugins folder on sys.path when it is imported: from here on
        # this process can import kafka_mongo_etl (the consume trials produce their batch here).
        importlib.import_module("airflow")
        # The trials' own lines are the report; the ETL's progress lines are in the child logs.
        logging.getLogger("kafka_mongo_etl").setLevel(logging.WARNING)
        yield Stack(bootstrap_servers=broker.bootstrap_servers, mongo_uri=mongo.uri)
    finally:
        mongo.stop()
        broker.stop()


def summarize(scenario: str, results: list[TrialResult]) -> dict[str, Any]:
    verified = [r.verification for r in results]
    return {
        "kill point": scenario,
        "trials": len(results),
        "killed": "n/a" if scenario == OVERLAPPING_RUNS else sum(r.killed for r in results),
        "lost": sum(v.lost for v in verified),
        "duplicate": sum(v.duplicate for v in verified),
        "stale": sum(v.stale for v in verified),
        "unexpected": sum(v.unexpected for v in verified),
        "ok": sum(r.ok for r in results),
        "seconds": round(sum(r.seconds for r in results), 1),
    }


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    """A Markdown table of ``rows``: the first column left-aligned, the others right-aligned."""
    cells = [list(columns), *[[str(row[column]) for column in columns] for row in rows]]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for n, line in enumerate(cells):
        lines.append(
            "| "
            + " | ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(line, widths, strict=True))
            )
            + " |"
        )
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def trial_passed(result: TrialResult) -> bool:
    """Data intact, and (for a kill point) the child really died by SIGKILL."""
    return result.ok and (result.point == OVERLAPPING_RUNS or result.killed)


def describe(result: TrialResult) -> str:
    v = result.verification
    killed = next((run for run in result.runs if run.role == "killed"), None)
    death = ""
    if killed is not None:
        death = f"exit {killed.returncode} at {json.dumps(killed.note)}; after kill {result.after_kill}; "
    error = "" if result.error is None else f"; ERROR {result.error}"
    return (
        f"{death}{v.documents}/{v.expected} docs ({result.versions} versions per key), lost {v.lost}, "
        f"duplicate {v.duplicate}, stale {v.stale}, unexpected {v.unexpected}, "
        f"mismatched {v.mismatched}, dead letters {v.dead_letters}, offsets behind {v.offsets_behind}{error}"
    )


def run_all(
    scenarios: list[str], trials: int, master_seed: int, stack: Stack, workdir: Path
) -> dict[str, list[TrialResult]]:
    results: dict[str, list[TrialResult]] = {}
    for scenario in scenarios:
        results[scenario] = []
        for trial in range(1, trials + 1):
            seed = trial_seed(master_seed, scenario, trial)
            trial_dir = workdir / scenario / f"trial-{trial}"
            if scenario == OVERLAPPING_RUNS:
                result = run_overlapping(seed, stack, trial_dir, trial=trial)
            else:
                result = run_trial(scenario, seed, stack, trial_dir, trial=trial)
            results[scenario].append(result)
            passed = trial_passed(result)
            log.log(
                logging.INFO if passed else logging.ERROR,
                "%s %d/%d seed %d: %s; %s (%.1fs)",
                scenario,
                trial,
                trials,
                seed,
                "ok" if passed else "FAILED",
                describe(result),
                result.seconds,
            )
            if passed:
                drop_database(stack.mongo_uri, result.mongo_db)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per kill point (default 20)")
    parser.add_argument("--seed", type=int, help="master seed (default: random, printed)")
    parser.add_argument(
        "--points",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--results", type=Path, help="write every trial's details as JSON here (e.g. chaos/results.json)"
    )
    parser.add_argument(
        "--keep-state", action="store_true", help="keep the broker, server and child logs after the run"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    scenarios = [s.strip() for s in args.points.split(",") if s.strip()]
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown or args.trials < 1:
        parser.error(f"unknown points {unknown}" if unknown else "--trials must be at least 1")
    master_seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    command = f"python -m chaos --trials {args.trials} --seed {master_seed} --points {','.join(scenarios)}"
    log.info("Master seed %d; repeat with: %s", master_seed, command)

    state_dir = Path(tempfile.mkdtemp(prefix="kafka-to-mongo-chaos-"))
    began = time.monotonic()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    try:
        with local_stack(state_dir) as stack:
            results = run_all(scenarios, args.trials, master_seed, stack, state_dir / "trials")
        seconds = round(time.monotonic() - began, 1)
        rows = [summarize(scenario, results[scenario]) for scenario in scenarios]
        failures = [r for rs in results.values() for r in rs if not trial_passed(r)]
        report(rows, failures, args.trials, master_seed, seconds, command)
        if args.results is not None:
            write_results(args.results, command, master_seed, args.trials, started, seconds, rows, results)
        if failures and not args.keep_state:
            keep_failed_logs(failures, state_dir)
    finally:
        if args.keep_state:
            log.info("State, trial logs and kill notes kept in %s", state_dir)
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
    return 1 if failures else 0


def report(
    rows: list[dict[str, Any]],
    failures: list[TrialResult],
    trials: int,
    seed: int,
    seconds: float,
    command: str,
) -> None:
    print()
    print(f"Crash injection: {trials} trials per kill point, seed {seed}, {seconds:.0f}s")
    print(f"  {command}   (make chaos TRIALS={trials} SEED={seed})")
    print()
    print(format_table(rows))
    print()
    for result in failures:
        print(f"FAILED {result.point} trial {result.trial} seed {result.seed}: {describe(result)}")


def write_results(
    path: Path,
    command: str,
    seed: int,
    trials: int,
    started: str,
    seconds: float,
    rows: list[dict[str, Any]],
    results: dict[str, list[TrialResult]],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "command": command,
        "seed": seed,
        "trials_per_point": trials,
        "started": started,
        "seconds": seconds,
        "summary": rows,
        "trials": [r.as_dict() for rs in results.values() for r in rs],
    }
    path.write_text(json.dumps(document, indent=1, default=str) + "\n")
    print(f"Details of every trial: {path}")


def keep_failed_logs(failures: list[TrialResult], state_dir: Path) -> None:
    """Copy the failed trials' child logs and kill notes out of the state about to be deleted."""
    keep = Path(tempfile.mkdtemp(prefix="kafka-to-mongo-chaos-failed-"))
    for directory in sorted({Path(run.log).parent for r in failures for run in r.runs}):
        shutil.copytree(directory, keep / directory.relative_to(state_dir), dirs_exist_ok=True)
    print(f"Logs of the failed trials: {keep}")
