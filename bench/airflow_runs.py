"""Whole DAG runs (500 records) through a real Airflow of its own: standalone (scheduler,
LocalExecutor, api-server), its home, SQLite database and dags folder in the bench's temp dir.

Each run is triggered and reported as ``make run`` does it (``devstack.run.trigger_and_wait``):
trigger to success from Airflow's own timestamps, the work from each task's XCom, and the run's
own batch counted in MongoDB.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

from bench import REPO
from bench.load import DB
from bench.services import BenchServices
from bench.topics import unique
from devstack.airflow import AirflowStandalone
from devstack.run import DAG_ID, trigger_and_wait

log = logging.getLogger(__name__)

WHOLE_RUN_DAG = "bench_whole_run"
COUNT = 500  # the DAG's default count
# Beside a copy of the project's DAG file in the bench's dags folder.
BENCH_DAGS = f'''"""Bench-only Airflow DAG: the project DAG, unscheduled: a triggered run is the only run."""
from {DAG_ID} import build_kafka_to_mongo

bench_whole_run = build_kafka_to_mongo(dag_id="{WHOLE_RUN_DAG}", schedule=None)
'''


def run(services: BenchServices, runs: int) -> dict[str, Any]:
    """Start Airflow, time ``runs`` whole runs after a first (cold) one, stop Airflow (always)."""
    home = services.airflow_home
    (home.dags_folder / f"{DAG_ID}.py").write_text((REPO / "dags" / f"{DAG_ID}.py").read_text())
    (home.dags_folder / "bench_dags.py").write_text(BENCH_DAGS)
    standalone = AirflowStandalone(home, services.state_dir / "airflow-run")
    began = time.monotonic()
    results = []
    try:
        standalone.start(timeout=600)
        startup = round(time.monotonic() - began, 1)
        log.info("Airflow standalone up in %.0fs at %s", startup, standalone.url)
        for rep in range(runs + 1):
            conf = {"topic": unique("bench_whole"), "mongo_db": DB, "mongo_collection": unique("whole")}
            summary = trigger_and_wait(standalone, {**conf, "count": COUNT}, 900, WHOLE_RUN_DAG)
            result = {
                "run_id": summary["run_id"],
                "state": summary["state"],
                "trigger_to_success": summary["seconds"],
                "produce_work": (summary["produce"] or {}).get("seconds"),
                "consume_work": (summary["consume"] or {}).get("seconds"),
                "in_mongo": summary.get("landing", {}).get("in_mongo"),
            }
            log.info("Whole run %s/%s: %s", rep, runs, result)
            results.append(result)
    finally:
        standalone.stop()
    timed = results[1:]
    breakdown = {
        key: round(statistics.median(r[key] or 0 for r in timed), 3)
        for key in ("trigger_to_success", "produce_work", "consume_work")
    }
    work = breakdown["produce_work"] + breakdown["consume_work"]
    breakdown["work_share"] = round(work / breakdown["trigger_to_success"], 3)
    return {
        "count": COUNT,
        "standalone_startup_seconds": startup,
        "first_run_trigger_to_success": results[0]["trigger_to_success"],
        "breakdown": breakdown,
        "runs": results,
    }
