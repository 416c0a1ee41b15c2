"""Benchmarks through a real Airflow (standalone: scheduler, LocalExecutor, api-server) of its own.

Its home, SQLite database and dags folder live in the bench's temp dir; its api-server listens
on a free port; the dags folder holds a copy of the project's DAG file and the bench-only DAGs
(``bench/airflow_dags.py``). Runs are triggered through the REST API and timed with the
timestamps Airflow itself records (run queued/start/end, each task instance's queued/start/end).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import statistics
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from bench.load import DB
from bench.services import BenchServices
from bench.timing import rotated
from bench.topics import unique
from devstack.airflow import AirflowStandalone
from devstack.process import StackError
from devstack.run import AirflowApi

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
WHOLE_RUN_DAG = "bench_whole_run"
ONE_TASK_DAG = "bench_drain_one_task"
WHOLE_RUN_COUNT = 500  # the DAG's default count


def mapped_dag(partitions: int) -> str:
    return f"bench_drain_mapped_p{partitions}"


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _seconds(later: dt.datetime | None, earlier: dt.datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round((later - earlier).total_seconds(), 3)


@dataclass
class AirflowBench:
    api: AirflowApi

    def trigger_and_wait(self, dag_id: str, conf: dict[str, Any], timeout: float = 900.0) -> dict[str, Any]:
        """One run of ``dag_id``: its state, Airflow's timestamps, its task instances and XComs."""
        run = self.api.call("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        run_id = run["dag_run_id"]
        quoted = urllib.parse.quote(run_id, safe="")
        deadline = time.monotonic() + timeout
        while run["state"] not in ("success", "failed"):
            if time.monotonic() > deadline:
                raise StackError(f"{dag_id} run {run_id} still {run['state']} after {timeout:.0f}s")
            time.sleep(0.5)
            run = self.api.call("GET", f"/dags/{dag_id}/dagRuns/{quoted}")
        instances = self.api.call("GET", f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances?limit=100")[
            "task_instances"
        ]
        tasks = []
        for ti in sorted(instances, key=lambda t: (t["start_date"] or "", t["map_index"])):
            xcom_path = (
                f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{ti['task_id']}/xcomEntries/return_value"
            )
            if ti["map_index"] >= 0:
                xcom_path += f"?map_index={ti['map_index']}"
            try:
                value = self.api.call("GET", xcom_path).get("value")
            except StackError:
                value = None
            if isinstance(value, str):
                value = json.loads(value)
            queued, started, ended = (_time(ti[k]) for k in ("queued_when", "start_date", "end_date"))
            work = (value or {}).get("seconds")
            duration = _seconds(ended, started)
            tasks.append(
                {
                    "task_id": ti["task_id"],
                    "map_index": ti["map_index"],
                    "state": ti["state"],
                    "queued_to_start": _seconds(started, queued),
                    "duration": duration,
                    "work": work,
                    "overhead": round(duration - work, 3)
                    if duration is not None and work is not None
                    else None,
                    "records": (value or {}).get("records", (value or {}).get("count")),
                    "queued_when": ti["queued_when"],
                    "start_date": ti["start_date"],
                    "end_date": ti["end_date"],
                }
            )
        queued_at, started_at, ended_at = (_time(run[k]) for k in ("queued_at", "start_date", "end_date"))
        first_queued = min((_time(t["queued_when"]) for t in tasks if t["queued_when"]), default=None)
        last_end = max((_time(t["end_date"]) for t in tasks if t["end_date"]), default=None)
        return {
            "dag_id": dag_id,
            "run_id": run_id,
            "state": run["state"],
            "trigger_to_success": _seconds(ended_at, queued_at),
            "queued_to_running": _seconds(started_at, queued_at),
            "running_to_first_task_queued": _seconds(first_queued, started_at),
            "last_task_end_to_run_end": _seconds(ended_at, last_end),
            "tasks": tasks,
        }


def _count_and_drop(mongo_uri: str, collection: str) -> int:
    client: MongoClient = MongoClient(mongo_uri)
    try:
        count = client[DB][collection].count_documents({})
        client[DB].drop_collection(collection)
        return count
    finally:
        client.close()


def _install_dags(dags_folder: Path) -> None:
    dags_folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dags" / "kafka_to_mongo.py", dags_folder / "kafka_to_mongo.py")
    shutil.copy(Path(__file__).with_name("airflow_dags.py"), dags_folder / "bench_dags.py")


def _whole_run_breakdown(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs: where the wall time of trigger -> success goes."""

    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return round(statistics.median(present), 3) if present else None

    def task_field(task_id: str, key: str) -> float | None:
        return med([next((t[key] for t in r["tasks"] if t["task_id"] == task_id), None) for r in runs])

    def gap(run: dict[str, Any]) -> float | None:
        produce = next((t for t in run["tasks"] if t["task_id"] == "produce"), None)
        consume = next((t for t in run["tasks"] if t["task_id"] == "consume"), None)
        if not produce or not consume:
            return None
        return _seconds(_time(consume["queued_when"]), _time(produce["end_date"]))

    breakdown = {
        "trigger_to_success": med([r["trigger_to_success"] for r in runs]),
        "queued_to_running": med([r["queued_to_running"] for r in runs]),
        "running_to_first_task_queued": med([r["running_to_first_task_queued"] for r in runs]),
        "produce_queued_to_start": task_field("produce", "queued_to_start"),
        "produce_overhead": task_field("produce", "overhead"),
        "produce_work": task_field("produce", "work"),
        "produce_end_to_consume_queued": med([gap(r) for r in runs]),
        "consume_queued_to_start": task_field("consume", "queued_to_start"),
        "consume_overhead": task_field("consume", "overhead"),
        "consume_work": task_field("consume", "work"),
        "last_task_end_to_run_end": med([r["last_task_end_to_run_end"] for r in runs]),
    }
    work = (breakdown["produce_work"] or 0) + (breakdown["consume_work"] or 0)
    total = breakdown["trigger_to_success"]
    breakdown["work_share"] = round(work / total, 3) if total else None
    return breakdown


def run(
    services: BenchServices,
    partition_topics: dict[int, str],
    count: int,
    whole_runs: int,
    partition_reps: int,
) -> dict[str, Any]:
    """Start Airflow, time the whole run and the partition shapes, stop Airflow (always)."""
    home = services.airflow_home
    _install_dags(home.dags_folder)
    standalone = AirflowStandalone(home, services.state_dir / "airflow-run")
    began = time.monotonic()
    try:
        standalone.start(timeout=600)
        startup = round(time.monotonic() - began, 1)
        log.info("Airflow standalone up in %.0fs at %s", startup, standalone.url)
        bench = AirflowBench(AirflowApi.for_stack(standalone))
        dag_ids = [WHOLE_RUN_DAG, ONE_TASK_DAG, *(mapped_dag(p) for p in partition_topics)]
        for dag_id in dag_ids:
            bench.api.wait_for_dag(dag_id, 300)
            bench.api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})

        whole: list[dict[str, Any]] = []
        for rep in range(whole_runs):
            collection = unique("whole")
            conf = {
                "topic": unique("bench_whole"),
                "mongo_db": DB,
                "mongo_collection": collection,
                "count": WHOLE_RUN_COUNT,
            }
            result = bench.trigger_and_wait(WHOLE_RUN_DAG, conf)
            result["in_mongo"] = _count_and_drop(services.mongo_uri, collection)
            log.info(
                "Whole run %s/%s: %s in %ss",
                rep + 1,
                whole_runs,
                result["state"],
                result["trigger_to_success"],
            )
            whole.append(result)

        shapes: dict[str, dict[str, list[dict[str, Any]]]] = {"one_task": {}, "mapped": {}}
        for rep in range(partition_reps):
            for partitions in rotated(list(partition_topics), rep):
                for shape in rotated(["one_task", "mapped"], rep + partitions):
                    dag_id = ONE_TASK_DAG if shape == "one_task" else mapped_dag(partitions)
                    collection = unique("parts")
                    conf = {
                        "topic": partition_topics[partitions],
                        "mongo_db": DB,
                        "mongo_collection": collection,
                        "group": unique("bench_af_group"),
                    }
                    result = bench.trigger_and_wait(dag_id, conf)
                    result["in_mongo"] = _count_and_drop(services.mongo_uri, collection)
                    if result["in_mongo"] != count:
                        log.error("%s loaded %s documents, expected %s", dag_id, result["in_mongo"], count)
                    log.info(
                        "%s over %s partitions: %s in %ss",
                        shape,
                        partitions,
                        result["state"],
                        result["trigger_to_success"],
                    )
                    shapes[shape].setdefault(str(partitions), []).append(result)
    finally:
        standalone.stop()

    def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
        walls = [r["trigger_to_success"] for r in results if r["state"] == "success"]
        works = [max((t["work"] or 0) for t in r["tasks"]) for r in results if r["tasks"]]
        return {
            "runs": results,
            "median_trigger_to_success": round(statistics.median(walls), 3) if walls else None,
            "median_longest_task_work": round(statistics.median(works), 3) if works else None,
            "records": count,
        }

    return {
        "standalone_startup_seconds": startup,
        "whole_run": {"count": WHOLE_RUN_COUNT, "runs": whole, "breakdown": _whole_run_breakdown(whole)},
        "partitions": {
            shape: {p: summary(results) for p, results in by_partitions.items()}
            for shape, by_partitions in shapes.items()
        },
    }
