"""``python -m chaos``: randomized crash trials per kill point against a broker and a Mongo-wire
server started here on free ports; prints a table and exits non-zero on any lost, doubled or
stale record (each key has several versions: the last one must be in MongoDB).

The plan, the seed, the checks and the table are the trial core's (``trials``); this module says
what a crash trial is and how its row reads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chaos.points import KILL_POINTS
from chaos.trials import OVERLAPPING_RUNS, TrialResult, run_overlapping, run_trial
from devstack.airflow import local_connections
from devstack.kafka import KafkaBroker
from devstack.mongo import MongoWireServer
from devstack.process import free_port
from trials import harness
from trials.checks import Stack

log = logging.getLogger("chaos")


@contextmanager
def local_stack(state_dir: Path) -> Iterator[tuple[Stack, dict[str, dict]]]:
    """A Kafka broker and a Mongo-wire server on free ports, and the connections to them."""
    broker = KafkaBroker(state_dir / "kafka", port=free_port(), controller_port=free_port())
    mongo = MongoWireServer(state_dir / "mongo", port=free_port())
    try:
        log.info("Starting Kafka on %s and the Mongo-wire server on %s", broker.bootstrap_servers, mongo.uri)
        broker.start()
        mongo.start()
        # The trials' own lines are the report; the ETL's progress lines are in the child logs.
        logging.getLogger("kafka_mongo_etl").setLevel(logging.WARNING)
        connections = local_connections(broker.bootstrap_servers, mongo.host, mongo.port)
        yield Stack(bootstrap_servers=broker.bootstrap_servers, mongo_uri=mongo.uri), connections
    finally:
        mongo.stop()
        broker.stop()


def run(scenario: str, seed: int, stack: Stack, trial_dir: Path, trial: int) -> TrialResult:
    if scenario == OVERLAPPING_RUNS:
        return run_overlapping(seed, stack, trial_dir, trial=trial)
    return run_trial(scenario, seed, stack, trial_dir, trial=trial)


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


def describe(result: TrialResult) -> str:
    killed = next((run for run in result.runs if run.role == "killed"), None)
    death = ""
    if killed is not None:
        death = f"exit {killed.returncode} at {json.dumps(killed.note)}; after kill {result.after_kill}; "
    error = "" if result.error is None else f"; ERROR {result.error}"
    return f"{death}{result.verification.describe()}{error}"


SUITE = harness.Suite(
    prog="chaos",
    title="Crash injection",
    unit="kill point",
    option="points",
    scenarios=(*KILL_POINTS, OVERLAPPING_RUNS),
    default_trials=20,
    services=local_stack,
    run=run,
    summarize=summarize,
    describe=describe,
)


def main(argv: list[str] | None = None) -> int:
    return harness.main(SUITE, argv)
