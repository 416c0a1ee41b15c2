"""Backfill through the real airflow CLI (bin/airflow) with Airflow standalone running."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from devstack.airflow import AirflowHome, AirflowStandalone, local_connections
from devstack.process import free_port
from devstack.run import DAG_ID, AirflowApi
from kafka_mongo_etl.ids import record_key

REPO = Path(__file__).resolve().parents[2]
FROM, TO = "2026-01-01T00:00:00+00:00", "2026-01-01T02:00:00+00:00"
LOGICAL_DATES = ["2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"]


def bin_airflow(state_dir: Path, *args: str) -> str:
    result = subprocess.run(
        [str(REPO / "bin" / "airflow"), *args],
        env={"STATE_DIR": str(state_dir), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"bin/airflow {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    return result.stdout


def wait_for_backfill(api: AirflowApi, number: int, timeout: float = 300) -> list[dict]:
    """Wait until the ``number``-th backfill of the DAG is complete; return its runs."""
    deadline = time.monotonic() + timeout
    while True:
        backfills = api.call("GET", f"/backfills?dag_id={DAG_ID}")["backfills"]
        if len(backfills) >= number and all(b["completed_at"] for b in backfills):
            break
        assert time.monotonic() < deadline, f"backfill not complete after {timeout}s: {backfills}"
        time.sleep(2)
    runs = api.call("GET", f"/dags/{DAG_ID}/dagRuns?run_type=backfill&limit=50")["dag_runs"]
    return sorted(
        (run for run in runs if run["logical_date"] in LOGICAL_DATES), key=lambda r: r["logical_date"]
    )


@pytest.mark.airflow
def test_backfill_of_three_intervals_loads_three_batches_and_a_repeat_adds_nothing(
    tmp_path, kafka_broker, mongo_server, postgres_server, topic, mongo_db, mongo_client
) -> None:
    # PostgreSQL, as make up runs it: the CLI writes while the scheduler does.
    postgres_server.create_database("backfill_cli")
    home = AirflowHome(
        tmp_path / "airflow", api_port=free_port(), database_url=postgres_server.url("backfill_cli")
    )
    home.write(local_connections(kafka_broker.bootstrap_servers, mongo_server.host, mongo_server.port))
    standalone = AirflowStandalone(home, tmp_path)
    standalone.start()
    try:
        api = AirflowApi.for_stack(standalone)
        api.wait_for_dag(DAG_ID, 120)
        bin_airflow(tmp_path, "dags", "unpause", DAG_ID)
        conf = json.dumps({"topic": topic, "mongo_db": mongo_db, "count": 100})
        backfill = ["backfill", "create", "--dag-id", DAG_ID, "--from-date", FROM, "--to-date", TO]
        bin_airflow(tmp_path, *backfill, "--dag-run-conf", conf)

        runs = wait_for_backfill(api, 1)
        assert [run["state"] for run in runs] == ["success"] * 3
        batches = {f"{DAG_ID}/{run['dag_run_id']}" for run in runs}
        expected = {record_key(batch, n) for batch in batches for n in range(100)}
        collection = mongo_client[mongo_db]["testnum"]
        assert collection.count_documents({}) == 300
        assert {doc["_id"] for doc in collection.find({}, {"_id": 1})} == expected

        # Re-running the same dates (completed runs are cleared and run again) adds nothing.
        bin_airflow(tmp_path, *backfill, "--dag-run-conf", conf, "--reprocess-behavior", "completed")
        rerun = wait_for_backfill(api, 2)
        assert [run["state"] for run in rerun] == ["success"] * 3
        assert {f"{DAG_ID}/{run['dag_run_id']}" for run in rerun} == batches
        assert collection.count_documents({}) == 300
        assert {doc["_id"] for doc in collection.find({}, {"_id": 1})} == expected
    finally:
        standalone.stop()
