"""``make run``: trigger one run of the DAG on the local stack through Airflow's REST API, wait
for it, and say what it produced, how many of its own records are in MongoDB now, and which
run's drain loaded them (a drain takes every record on the topic up to its snapshot, so the
scheduled run that unpausing starts may load a manual run's batch before that run's own drain).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from devstack.airflow import AirflowHome, AirflowStandalone
from devstack.process import StackError

if TYPE_CHECKING:
    from pymongo import MongoClient
    from pymongo.database import Database

DAG_ID = "kafka_to_mongo"


@dataclass
class AirflowApi:
    """A signed-in client of the api-server's public REST API (/api/v2). ``timeout`` bounds each
    call; nothing is retried, so a trigger is never sent twice."""

    base_url: str
    token: str
    timeout: float = 30.0

    @classmethod
    def sign_in(cls, base_url: str, username: str, password: str, timeout: float = 30.0) -> AirflowApi:
        body = json.dumps({"username": username, "password": password}).encode()
        request = urllib.request.Request(
            f"{base_url}/auth/token", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return cls(base_url, json.load(response)["access_token"], timeout)

    @classmethod
    def for_stack(cls, airflow: AirflowStandalone) -> AirflowApi:
        password = airflow.home.admin_password()
        if password is None:
            raise StackError(f"no admin password in {airflow.home.passwords_file}; is the stack up?")
        return cls.sign_in(airflow.url, "admin", password)

    def wait_for_dag(self, dag_id: str, timeout: float) -> None:
        """The dag-processor parses new files on its own schedule: wait until it has seen this one."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("GET", f"/dags/{dag_id}")
                return
            except StackError:
                if time.monotonic() > deadline:
                    raise StackError(f"Airflow has not parsed {dag_id} yet; see make logs") from None
                time.sleep(2)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"{self.base_url}/api/v2{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            raise StackError(f"{method} /api/v2{path} answered {err.code}: {detail}") from None


def xcom(api: AirflowApi, run_path: str, task_id: str, map_index: int | None = None) -> Any:
    """A task's return value (decoded from JSON when the API gives a string), None if it has none."""
    query = f"?map_index={map_index}" if map_index is not None else ""
    try:
        value = api.call("GET", f"{run_path}/taskInstances/{task_id}/xcomEntries/return_value{query}").get(
            "value"
        )
    except StackError:
        return None
    return json.loads(value) if isinstance(value, str) else value


def batch_landing(
    database: Database, collection: str, batch: str, topic: str, since: dt.datetime | None = None
) -> dict[str, Any]:
    """How many documents of ``batch`` are in ``collection`` and which drains loaded them.

    A drain's audit document (``etl_runs``) records, per partition, the offsets it committed
    from ``start`` to ``committed``; the batch's documents keep their offsets in ``_kafka``, so
    the drains whose ranges hold them are the ones that loaded them. ``since`` (the run's start)
    leaves out the audits of drains that ended before the batch existed.
    """
    target = f"{database.name}.{collection}"
    query: dict[str, Any] = {"topic": topic, "target": target}
    if since is not None:
        query["updated_at"] = {"$gte": since}
    # One entry per run: a run whose consume was mapped per partition has one audit per drain.
    loaded_by: dict[Any, dict[str, Any]] = {}
    for audit in database["etl_runs"].find(query).sort("updated_at", 1):
        ranges = [
            {"_kafka.partition": int(p), "_kafka.offset": {"$gte": r["start"], "$lt": r["committed"]}}
            for p, r in (audit.get("partitions") or {}).items()
            if r.get("committed", 0) > r.get("start", 0)
        ]
        if not ranges:
            continue
        records = database[collection].count_documents({"batch": batch, "$or": ranges})
        if not records:
            continue
        run_id = audit.get("dag_run_id")
        entry = loaded_by.setdefault(
            run_id, {"run_id": run_id, "records_of_batch": 0, "loaded": 0, "records": 0, "seconds": 0.0}
        )
        entry["records_of_batch"] += records
        entry["loaded"] += audit.get("loaded") or 0
        entry["records"] += audit.get("records") or 0
        # The drains of one run ran side by side: the run's drain took as long as the longest.
        entry["seconds"] = max(entry["seconds"], audit.get("seconds") or 0.0)
    in_mongo = database[collection].count_documents({"batch": batch})
    return {"target": target, "batch": batch, "in_mongo": in_mongo, "loaded_by": list(loaded_by.values())}


def stack_mongo_client(home: AirflowHome, conn_id: str = "mongo_default") -> MongoClient:
    """A client of the DAG's MongoDB connection, built by ``MongoHook`` from the stack's own
    config and connections file (so a connection pointed at another server is honoured).

    Imports Airflow in this process with the stack's home: call it from the devstack CLI only.
    """
    for name in [name for name in os.environ if name.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))]:
        del os.environ[name]
    os.environ["AIRFLOW_HOME"] = str(home.path)
    import airflow  # noqa: F401  (puts the stack's plugins/ on sys.path)

    from kafka_mongo_etl.mongo_client import EtlMongoHook

    # The ETL's own hook: its timeouts, and a connection it cannot use fails with its name.
    return EtlMongoHook(mongo_conn_id=conn_id).get_conn()


def trigger_and_wait(
    airflow: AirflowStandalone,
    conf: dict[str, Any] | None = None,
    timeout: float = 600.0,
    dag_id: str = DAG_ID,
) -> dict[str, Any]:
    """Unpause the DAG, trigger one run with ``conf``, wait for it to end; return its summary
    (state, seconds from trigger to end, the tasks' XComs, where its batch landed, the UI link).

    ``dag_id``: another DAG built by ``build_kafka_to_mongo`` (the benchmark's unscheduled copy).
    """
    api = AirflowApi.for_stack(airflow)
    deadline = time.monotonic() + timeout
    api.wait_for_dag(dag_id, timeout)
    api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
    run = api.call("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})
    run_id = run["dag_run_id"]
    quoted = urllib.parse.quote(run_id, safe="")
    path = f"/dags/{dag_id}/dagRuns/{quoted}"
    print(f"Triggered {dag_id} run {run_id}; waiting for it to finish...")
    while run["state"] not in ("success", "failed"):
        if time.monotonic() > deadline:
            raise StackError(f"run {run_id} still {run['state']} after {timeout:.0f}s; see the UI")
        time.sleep(1)
        run = api.call("GET", path)
    ended, queued = (dt.datetime.fromisoformat(run[key]) for key in ("end_date", "queued_at"))
    summary: dict[str, Any] = {
        "run_id": run_id,
        "state": run["state"],
        "seconds": round((ended - queued).total_seconds(), 3),
        "url": f"{airflow.url}/dags/{dag_id}/runs/{quoted}",
    }
    summary["produce"] = xcom(api, path, "produce")
    # consume is mapped (one drain, or one per partition): add up its drains.
    drains = []
    for map_index in range(1000):
        drain = xcom(api, path, "consume", map_index)
        if drain is None:
            break
        drains.append(drain)
    summary["consume"] = merge_drains(drains)
    produced, consumed = summary["produce"], summary["consume"]
    if produced and consumed:
        summary.update(_landing(airflow.home, run, produced, consumed))
    return summary


def _landing(
    home: AirflowHome, run: dict[str, Any], produced: dict[str, Any], consumed: dict[str, Any]
) -> dict[str, Any]:
    """``{"landing": ...}`` for the run's batch, or ``{"landing_error": ...}`` when MongoDB could
    not be asked (the run's result stands either way)."""
    from pymongo.errors import PyMongoError

    mongo_db, collection = consumed["target"].split(".", 1)
    started = dt.datetime.fromisoformat(run["start_date"]) if run.get("start_date") else None
    client = None
    try:
        client = stack_mongo_client(home)
        return {
            "landing": batch_landing(
                client[mongo_db], collection, produced["batch"], produced["topic"], started
            )
        }
    except PyMongoError as err:
        return {"landing_error": f"{type(err).__name__}: {err}"}
    finally:
        if client is not None:
            client.close()


def _drain(entry: dict[str, Any]) -> str:
    return f"{entry['loaded']} documents, {entry['records']} records drained in {entry['seconds']:.1f}s"


def merge_drains(drains: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One summary for a run's drains: records and documents added up, the longest drain's time."""
    if not drains:
        return None
    return {
        **drains[0],
        "records": sum(d["records"] for d in drains),
        "loaded": sum(d["loaded"] for d in drains),
        "seconds": max(d["seconds"] for d in drains),
    }


def report(summary: dict[str, Any]) -> str:
    """What ``make run`` and ``make up`` print for a run: its batch, counted in MongoDB by its
    ``batch`` field, and the drain (this run's or another's) that loaded it."""
    produced, consumed = summary.get("produce") or {}, summary.get("consume") or {}
    run_id = summary["run_id"]
    lines = [f"Run {run_id}: {summary['state']}"]
    if produced:
        lines.append(
            f"  produced {produced['count']} records ({produced['first']}..{produced['last']}) "
            f"to topic {produced['topic']} at {produced['records_per_second']:.0f} records/s"
        )
    landing = summary.get("landing")
    if landing:
        lines.append(
            f"  in {landing['target']} now: {landing['in_mongo']} of its {produced['count']} records "
            f"(counted by batch {landing['batch']})"
        )
        others = [e for e in landing["loaded_by"] if e["run_id"] != run_id]
        own = next((e for e in landing["loaded_by"] if e["run_id"] == run_id), None)
        for entry in others:
            lines.append(
                f"  {entry['records_of_batch']} of them loaded by the drain of run {entry['run_id']} "
                f"({_drain(entry)})"
            )
        if own:
            lines.append(
                f"  {own['records_of_batch']} of them loaded by this run's drain ({_drain(consumed)})"
            )
        elif consumed and consumed["records"]:
            lines.append(f"  this run's own drain loaded other records only ({_drain(consumed)})")
        elif consumed:
            lines.append("  this run's own drain came later and found nothing left to drain")
        if consumed and consumed["records"] != (own or {}).get("records_of_batch"):
            lines.append(
                "  (a drain takes every record on the topic up to its snapshot: other runs' batches, "
                "such as the scheduled run's that unpausing started, land in the same drain)"
            )
    elif consumed:
        lines.append(f"  this run's drain: {_drain(consumed)} into {consumed['target']}")
        if summary.get("landing_error"):
            lines.append(f"  could not count its records in MongoDB: {summary['landing_error']}")
    lines.append(f"  see it in the UI: {summary['url']}")
    return "\n".join(lines)
