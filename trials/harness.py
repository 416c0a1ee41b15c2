"""The command both fault injectors run (``python -m chaos``, ``python -m faults``): the plan of
trials, the seed, the services, the per-trial lines, the results table and the details file.

An injector is a ``Suite``: its scenarios (kill points, fault kinds), the services its trials
need, how one trial runs, and how a scenario's trials make a row of the table. The harness draws
every trial's seed from one master seed (printed with the command that repeats the run), starts
the services with an ``AIRFLOW_HOME`` and ``AIRFLOW_CONN_*`` of its own (settings from the
caller's shell never leak in), runs each scenario's trials in turn, prints a Markdown table and
exits non-zero when any trial failed.
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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from devstack.airflow import AirflowHome
from devstack.process import free_port
from trials.checks import Stack, Verification, drop_database

log = logging.getLogger("trials")


@dataclass
class TrialResult:
    """What every trial reports; an injector's result adds what its own trials saw."""

    scenario: str
    trial: int
    seed: int
    topic: str
    mongo_db: str
    plan: dict[str, Any] | None
    verification: Verification
    seconds: float

    @property
    def versions(self) -> int:
        return self.verification.versions

    @property
    def problems(self) -> list[str]:
        """Why the trial failed (empty: it passed)."""
        return [] if self.verification.ok else [self.verification.describe()]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verification"].pop("ids")
        return {**data, "ok": self.ok, "problems": self.problems}


@dataclass(frozen=True)
class Suite:
    """One fault injector plugged into the harness.

    ``services(state_dir)`` starts what the trials need and yields the checks' ``Stack`` and the
    connections (``{conn_id: conn}``) the ETL must use; ``run(scenario, seed, stack, trial_dir,
    trial)`` runs one trial; ``summarize(scenario, results)`` is its row of the table (the keys
    are the columns); ``describe(result)`` is its line in the log.
    """

    prog: str
    title: str
    unit: str
    option: str
    scenarios: tuple[str, ...]
    default_trials: int
    services: Callable[[Path], AbstractContextManager[tuple[Stack, dict[str, dict]]]]
    run: Callable[[str, int, Any, Path, int], TrialResult]
    summarize: Callable[[str, list[Any]], dict[str, Any]]
    describe: Callable[[Any], str]


def trial_seed(master_seed: int, scenario: str, trial: int) -> int:
    """A trial's own seed: the same master seed repeats the same plans."""
    return random.Random(f"{master_seed}:{scenario}:{trial}").randrange(2**31)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of ``rows`` (the first row's keys are the columns): the first column
    left-aligned, the others right-aligned."""
    columns = list(rows[0])
    cells = [columns, *[[str(row[column]) for column in columns] for row in rows]]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for n, line in enumerate(cells):
        padded = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("| " + " | ".join(padded) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


@contextmanager
def trial_environment(suite: Suite, state_dir: Path) -> Iterator[Stack]:
    """The suite's services with an ``AIRFLOW_HOME`` and ``AIRFLOW_CONN_*`` for the trials, which
    their child processes inherit; the services stopped on the way out."""
    # Like the tests: settings from the caller's shell must not leak into the trials.
    for name in [name for name in os.environ if name.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))]:
        del os.environ[name]
    home = AirflowHome(state_dir / "airflow", api_port=free_port())
    # The hooks' "Producer <cimpl.Producer ...>" lines add nothing to a trial's log.
    home.write(connections={}, extra={"logging": {"namespace_levels": "airflow.task.hooks=WARNING"}})
    os.environ["AIRFLOW_HOME"] = str(home.path)
    # Airflow puts AIRFLOW_HOME's plugins folder on sys.path when it is imported: from here on
    # this process can import kafka_mongo_etl.
    importlib.import_module("airflow")
    with suite.services(state_dir) as (stack, connections):
        for conn_id, conn in connections.items():
            os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
        yield stack


def run_all(
    suite: Suite, scenarios: list[str], trials: int, master_seed: int, stack: Stack, workdir: Path
) -> dict[str, list[TrialResult]]:
    """Every scenario's trials in turn; a passed trial's database is dropped, a failed one's kept."""
    results: dict[str, list[TrialResult]] = {}
    for scenario in scenarios:
        results[scenario] = []
        for trial in range(1, trials + 1):
            seed = trial_seed(master_seed, scenario, trial)
            result = suite.run(scenario, seed, stack, workdir / scenario / f"trial-{trial}", trial)
            results[scenario].append(result)
            log.log(
                logging.INFO if result.ok else logging.ERROR,
                "%s %d/%d seed %d: %s; %s (%.1fs)",
                scenario,
                trial,
                trials,
                seed,
                "ok" if result.ok else "FAILED",
                suite.describe(result),
                result.seconds,
            )
            if result.ok:
                drop_database(stack, result.mongo_db)
    return results


def main(suite: Suite, argv: list[str] | None = None) -> int:
    description = f"{suite.title}: randomized trials per {suite.unit}, then the exact _id set and offsets"
    parser = argparse.ArgumentParser(prog=f"python -m {suite.prog}", description=description)
    parser.add_argument(
        "--trials",
        type=int,
        default=suite.default_trials,
        help=f"trials per {suite.unit} (default {suite.default_trials})",
    )
    parser.add_argument("--seed", type=int, help="master seed (default: random, printed)")
    parser.add_argument(
        f"--{suite.option}",
        dest="scenarios",
        metavar=suite.option.upper(),
        default=",".join(suite.scenarios),
        help=f"comma-separated subset of: {', '.join(suite.scenarios)}",
    )
    parser.add_argument("--results", type=Path, help="write every trial's details as JSON here")
    parser.add_argument(
        "--keep-state", action="store_true", help="keep the services' state and the trials' logs"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(scenarios) - set(suite.scenarios))
    if unknown or args.trials < 1:
        parser.error(f"unknown {suite.option} {unknown}" if unknown else "--trials must be at least 1")
    master_seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    command = (
        f"python -m {suite.prog} --trials {args.trials} --seed {master_seed} "
        f"--{suite.option} {','.join(scenarios)}"
    )
    log.info("Master seed %d; repeat with: %s", master_seed, command)

    state_dir = Path(tempfile.mkdtemp(prefix=f"kafka-to-mongo-{suite.prog}-"))
    began = time.monotonic()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    try:
        with trial_environment(suite, state_dir) as stack:
            results = run_all(suite, scenarios, args.trials, master_seed, stack, state_dir / "trials")
        seconds = round(time.monotonic() - began, 1)
        rows = [suite.summarize(scenario, results[scenario]) for scenario in scenarios]
        failures = [(scenario, r) for scenario in scenarios for r in results[scenario] if not r.ok]
        print(f"\n{suite.title}: {args.trials} trials per {suite.unit}, seed {master_seed}, {seconds:.0f}s")
        print(f"  {command}   (make {suite.prog} TRIALS={args.trials} SEED={master_seed})\n")
        print(format_table(rows) + "\n")
        for scenario, result in failures:
            print(f"FAILED {scenario} trial {result.trial} seed {result.seed}: {suite.describe(result)}")
        if args.results is not None:
            args.results.parent.mkdir(parents=True, exist_ok=True)
            document = {
                "command": command,
                "seed": master_seed,
                f"trials_per_{suite.unit.split()[-1]}": args.trials,
                "started": started,
                "seconds": seconds,
                "summary": rows,
                "trials": [r.as_dict() for rs in results.values() for r in rs],
            }
            args.results.write_text(json.dumps(document, indent=1, default=str) + "\n")
            print(f"Details of every trial: {args.results}")
        if failures and not args.keep_state:
            keep_failed_logs(suite, [(s, r.trial) for s, r in failures], state_dir)
    finally:
        if args.keep_state:
            log.info("State and trial logs kept in %s", state_dir)
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
    return 1 if failures else 0


def keep_failed_logs(suite: Suite, failed: list[tuple[str, int]], state_dir: Path) -> None:
    """Copy the failed trials' directories (their logs and notes) out of the state about to be deleted."""
    directories = [state_dir / "trials" / s / f"trial-{n}" for s, n in failed]
    directories = [d for d in directories if d.is_dir()]
    if directories:
        keep = Path(tempfile.mkdtemp(prefix=f"kafka-to-mongo-{suite.prog}-failed-"))
        for directory in directories:
            shutil.copytree(directory, keep / directory.relative_to(state_dir), dirs_exist_ok=True)
        print(f"Logs of the failed trials: {keep}")
