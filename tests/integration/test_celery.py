"""The DAG on the CeleryExecutor: real PostgreSQL, real Redis, two Celery workers (issue 12).

One stack for the module (``celery_stack``), laid out as ``make up WORKERS=2`` lays out
``.state``: the session's broker, MongoDB-wire server and PostgreSQL (through symlinks), its own
Redis, the Airflow components and two workers started one by one by ``AirflowServices``, with
the settings of ``docker/airflow.env``. Every run uses ``parallelism: per partition`` (a mapped
``consume`` per partition). Which worker ran which task instance comes from the workers' own
logs, where Airflow's Celery task logs each workload it executes.

The last test stops the stack with ``python -m devstack down``; the fixture stops whatever is left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.airflow import AirflowHome, AirflowServices, CelerySettings, local_connections
from devstack.process import free_port, pid_alive
from devstack.redis import RedisServer
from devstack.run import DAG_ID, AirflowApi
from kafka_mongo_etl.ids import record_key

pytestmark = pytest.mark.airflow

REPO = Path(__file__).resolve().parents[2]
WORKERS = 2
# Only what makes a killed worker's task come back in seconds rather than minutes: Airflow's
# default heartbeat timeout is 300 s. Everything else is docker/airflow.env, as compose runs it.
TEST_SETTINGS = {
    "scheduler": {
        "task_instance_heartbeat_timeout": "20",
        "task_instance_heartbeat_timeout_detection_interval": "2",
    }
}
# "[<celery id>] Executing workload in Celery: ... ti=TaskInstanceDTO(id=..., task_id='consume',
# dag_id='kafka_to_mongo', run_id='...', try_number=1, dag_version_id=..., map_index=3, ..."
WORKLOAD = re.compile(
    r"Executing workload in Celery: .*?task_id='(?P<task_id>[^']+)', dag_id='(?P<dag_id>[^']+)', "
    r"run_id='(?P<run_id>[^']+)', try_number=(?P<try_number>\d+), .*?map_index=(?P<map_index>-?\d+)"
)
# A wait bound, never a timing claim: a run that needs longer has hung.
RUN_TIMEOUT = 240


@dataclass
class CeleryStack:
    state_dir: Path
    services: AirflowServices
    redis: RedisServer
    api: AirflowApi
    env: dict[str, str]  # for `python -m devstack` against this stack

    def tries_by_worker(self) -> dict[str, set[tuple[str, str, int, int]]]:
        """Worker -> the (run_id, task_id, map_index, try_number) it has executed."""
        executed: dict[str, set[tuple[str, str, int, int]]] = {}
        for number in range(1, WORKERS + 1):
            log = self.services.worker(number).log_file
            text = log.read_text(errors="replace") if log.exists() else ""
            executed[f"worker-{number}"] = {
                (m["run_id"], m["task_id"], int(m["map_index"]), int(m["try_number"]))
                for m in WORKLOAD.finditer(text)
                if m["dag_id"] == DAG_ID
            }
        return executed

    def worker_of(self, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
        found = [
            worker
            for worker, tries in self.tries_by_worker().items()
            if (run_id, task_id, map_index, try_number) in tries
        ]
        assert len(found) == 1, f"{task_id}[{map_index}] try {try_number} of {run_id} ran on {found}"
        return found[0]

    def trigger(self, conf: dict[str, Any]) -> str:
        run = self.api.call("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def wait_for_run(self, run_id: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.api.call("GET", f"/dags/{DAG_ID}/dagRuns/{_quote(run_id)}")
            if run["state"] in ("success", "failed"):
                return run
            assert time.monotonic() < deadline, f"run {run_id} still {run['state']} after {timeout}s"
            time.sleep(1)

    def task_instances(self, run_id: str, task_id: str) -> list[dict[str, Any]]:
        found = self.api.call(
            "GET", f"/dags/{DAG_ID}/dagRuns/{_quote(run_id)}/taskInstances?task_id={task_id}&limit=100"
        )["task_instances"]
        return sorted(found, key=lambda ti: ti["map_index"])


def _quote(run_id: str) -> str:
    return urllib.parse.quote(run_id, safe="")


def _start_worker_again(stack: CeleryStack, number: int) -> None:
    """Bring a killed worker back (same Celery node name), so the stack has two again."""
    process = stack.services.worker(number)
    process.stop()  # clears what SIGKILL left: the pid file, any straggler in its group
    process.start(
        stack.services._worker_argv(str(Path(sys.executable).parent / "airflow"), number),
        env=stack.services.home.env(),
        cwd=REPO,
    )
    stack.services.wait_ready(120)


@pytest.fixture(scope="module")
def celery_stack(
    tmp_path_factory: pytest.TempPathFactory, kafka_broker, mongo_server, postgres_server
) -> Iterator[CeleryStack]:
    state = tmp_path_factory.mktemp("celery-stack")
    for name, service in (("kafka", kafka_broker), ("mongo", mongo_server), ("postgres", postgres_server)):
        (state / name).symlink_to(service.state_dir, target_is_directory=True)
    redis = RedisServer(state / "redis", port=free_port())
    database = "celery_stack"
    postgres_server.create_database(database)
    home = AirflowHome(
        state / "airflow",
        api_port=free_port(),
        database_url=postgres_server.url(database),
        celery=CelerySettings(redis.url(0), "db+" + postgres_server.url(database)),
    )
    home.write(
        local_connections(kafka_broker.bootstrap_servers, mongo_server.host, mongo_server.port),
        extra=TEST_SETTINGS,
    )
    services = AirflowServices(home, state / "airflow", workers=WORKERS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env |= {
        "STATE_DIR": str(state),
        "KAFKA_PORT": str(kafka_broker.port),
        "KAFKA_CONTROLLER_PORT": str(kafka_broker.controller_port),
        "MONGO_PORT": str(mongo_server.port),
        "POSTGRES_PORT": str(postgres_server.port),
        "REDIS_PORT": str(redis.port),
        "AIRFLOW_PORT": str(home.api_port),
    }
    try:
        redis.start()
        services.start(timeout=300)
        api = AirflowApi.for_stack(services)  # type: ignore[arg-type]
        api.wait_for_dag(DAG_ID, 120)
        api.call("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
        yield CeleryStack(state, services, redis, api, env)
    finally:
        services.stop()
        redis.stop()


def _conf(topic: str, mongo_db: str, **changes: Any) -> dict[str, Any]:
    return {"topic": topic, "mongo_db": mongo_db, "parallelism": "per partition", **changes}


def _ids(mongo_client, mongo_db: str) -> set[str]:
    return {doc["_id"] for doc in mongo_client[mongo_db]["testnum"].find({}, {"_id": 1})}


def _batch(run_id: str) -> str:
    return f"{DAG_ID}/{run_id}"


def test_a_six_partition_topic_is_drained_by_mapped_tasks_on_both_workers(
    celery_stack: CeleryStack, topic: str, mongo_db: str, mongo_client
) -> None:
    run_id = celery_stack.trigger(_conf(topic, mongo_db, count=600, partitions=6))
    assert celery_stack.wait_for_run(run_id)["state"] == "success"

    consumes = celery_stack.task_instances(run_id, "consume")
    assert [(ti["map_index"], ti["state"], ti["try_number"]) for ti in consumes] == [
        (index, "success", 1) for index in range(6)
    ]
    assert _ids(mongo_client, mongo_db) == {record_key(_batch(run_id), n) for n in range(600)}
    # Each mapped drain took one partition, and together they took all six, each record once.
    audits = {doc["_id"]: doc for doc in mongo_client[mongo_db]["etl_runs"].find({"dag_run_id": run_id})}
    assert sorted(audits) == sorted(f"{_batch(run_id)}:{p}" for p in range(6))
    assert sum(doc["records"] for doc in audits.values()) == 600
    workers = {celery_stack.worker_of(run_id, "consume", index, 1) for index in range(6)}
    assert workers == {"worker-1", "worker-2"}, "the mapped drains all ran on one worker"


def test_two_overlapping_runs_take_turns_on_each_partition(
    celery_stack: CeleryStack, topic: str, mongo_db: str, mongo_client, committed_offsets
) -> None:
    conf = _conf(topic, mongo_db, count=300, partitions=3)
    runs = [celery_stack.trigger(conf), celery_stack.trigger(conf)]
    assert [celery_stack.wait_for_run(run_id)["state"] for run_id in runs] == ["success", "success"]

    assert _ids(mongo_client, mongo_db) == {
        record_key(_batch(run_id), n) for run_id in runs for n in range(300)
    }
    # Per partition, the two runs' drains read consecutive, disjoint offset ranges: the second
    # started where the first had committed. Interleaved drains would have read some records twice.
    ends = committed_offsets(topic, f"kafka_to_mongo.{mongo_db}.testnum", partitions=3)
    audits = list(mongo_client[mongo_db]["etl_runs"].find({"dag_run_id": {"$in": runs}}))
    assert len(audits) == 6
    for partition in range(3):
        ranges = sorted(
            (doc["partitions"][str(partition)]["start"], doc["partitions"][str(partition)]["end"])
            for doc in audits
            if str(partition) in doc["partitions"]
        )
        assert len(ranges) == 2, audits
        (first_start, first_end), (second_start, second_end) = ranges
        assert (first_start, second_start, second_end) == (0, first_end, ends[partition]), ranges


def test_a_backfill_of_three_intervals_runs_across_the_workers(
    celery_stack: CeleryStack, topic: str, mongo_db: str, mongo_client
) -> None:
    conf = json.dumps(_conf(topic, mongo_db, count=100, partitions=2))
    backfill = subprocess.run(
        [
            str(REPO / "bin" / "airflow"),
            *("backfill", "create", "--dag-id", DAG_ID, "--dag-run-conf", conf),
            *("--from-date", "2026-02-01T00:00:00+00:00", "--to-date", "2026-02-01T02:00:00+00:00"),
        ],
        env={"STATE_DIR": str(celery_stack.state_dir), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert backfill.returncode == 0, backfill.stderr[-3000:]

    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        runs = celery_stack.api.call("GET", f"/dags/{DAG_ID}/dagRuns?run_type=backfill&limit=50")["dag_runs"]
        runs = [run for run in runs if run["logical_date"].startswith("2026-02-01T")]
        if len(runs) == 3 and all(run["state"] in ("success", "failed") for run in runs):
            break
        assert time.monotonic() < deadline, f"backfill not done after {RUN_TIMEOUT}s: {runs}"
        time.sleep(2)
    assert sorted((run["logical_date"][:19], run["state"]) for run in runs) == [
        (f"2026-02-01T0{hour}:00:00", "success") for hour in range(3)
    ]
    run_ids = [run["dag_run_id"] for run in runs]
    assert _ids(mongo_client, mongo_db) == {
        record_key(_batch(run_id), n) for run_id in run_ids for n in range(100)
    }
    tried = celery_stack.tries_by_worker()
    ran_on = {worker for worker, tries in tried.items() if any(t[0] in run_ids for t in tries)}
    assert ran_on == {"worker-1", "worker-2"}, tried


def test_sigkill_of_a_worker_mid_drain_retries_its_drain_on_the_other_worker(
    celery_stack: CeleryStack, topic: str, mongo_db: str, mongo_client, committed_offsets, kafka_broker
) -> None:
    import psutil
    from confluent_kafka import Consumer, TopicPartition

    # Two partitions of about 12,000 records: three batches of at most 5,000 each, so a drain that
    # has committed its first batch is still mid-drain.
    count = 24_000
    run_id = celery_stack.trigger(_conf(topic, mongo_db, count=count, partitions=2))
    group = f"kafka_to_mongo.{mongo_db}.testnum"

    deadline = time.monotonic() + RUN_TIMEOUT
    ends: dict[int, int] = {}
    while True:
        running = [ti for ti in celery_stack.task_instances(run_id, "consume") if ti["state"] == "running"]
        if running and not ends:  # consume runs after produce: the topic holds the whole batch
            consumer = Consumer({"bootstrap.servers": kafka_broker.bootstrap_servers, "group.id": group})
            try:
                ends = {
                    p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in (0, 1)
                }
            finally:
                consumer.close()
        committed = committed_offsets(topic, group, partitions=2) if running else {}
        # Mapped drains are in partition order: map index i drains partition i.
        midway = [ti for ti in running if 0 < committed.get(ti["map_index"], -1) < ends[ti["map_index"]]]
        if midway and midway[0]["pid"]:
            break
        assert time.monotonic() < deadline, "no drain got past its first commit"
        time.sleep(0.2)
    victim = midway[0]
    worker = celery_stack.worker_of(run_id, "consume", victim["map_index"], victim["try_number"])
    number = int(worker.rsplit("-", 1)[1])
    worker_pid = celery_stack.services.worker(number).pid()
    assert worker_pid is not None
    task_pid = victim["pid"]
    assert worker_pid in [parent.pid for parent in psutil.Process(task_pid).parents()]
    # The worker as a machine crash or `docker kill` ends it: its main process, its pool and the
    # task's supervisor (one process group), and the task, which Airflow runs in a group of its own.
    for group_leader in (task_pid, worker_pid):
        os.killpg(group_leader, signal.SIGKILL)
    try:
        assert celery_stack.wait_for_run(run_id)["state"] == "success"
        retried = celery_stack.task_instances(run_id, "consume")[victim["map_index"]]
        assert (retried["state"], retried["try_number"]) == ("success", victim["try_number"] + 1)
        survivor = celery_stack.worker_of(run_id, "consume", victim["map_index"], retried["try_number"])
        assert survivor != worker
        assert _ids(mongo_client, mongo_db) == {record_key(_batch(run_id), n) for n in range(count)}
        assert mongo_client[mongo_db]["testnum"].count_documents({}) == count
        assert committed_offsets(topic, group, partitions=2) == ends
    finally:
        _start_worker_again(celery_stack, number)


def test_status_lists_each_worker_and_down_stops_them_all_by_pid(celery_stack: CeleryStack) -> None:
    def devstack(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "devstack", command],
            cwd=REPO,
            env=celery_stack.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    status = devstack("status")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = dict(line.split(None, 1) for line in status.stdout.splitlines() if not line.startswith(" "))
    services = celery_stack.services
    pids = {f"worker-{n}": services.worker(n).pid() for n in range(1, WORKERS + 1)}
    for worker, pid in pids.items():
        number = int(worker.rsplit("-", 1)[1])
        assert re.fullmatch(
            rf"healthy \(pid {pid}, \d+ MB\), Celery node {services.worker_name(number)}", rows[worker]
        )
    for name in ("redis", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor"):
        assert rows[name].startswith("healthy (pid "), rows
    assert "airflow-triggerer" in rows

    # `down` would also stop the session's broker, server and PostgreSQL, which this stack
    # reaches through symlinks: take those away first.
    for name in ("kafka", "mongo", "postgres"):
        (celery_stack.state_dir / name).unlink()
    all_pids = [p.pid() for p in services.processes] + [celery_stack.redis.process.pid()]
    down = devstack("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "Airflow                stopped (CeleryExecutor)" in down.stdout
    assert "Redis                  stopped" in down.stdout
    assert [pid for pid in all_pids if pid is not None and pid_alive(pid)] == []
    assert sorted(path.name for path in celery_stack.state_dir.rglob("*.pid")) == []
