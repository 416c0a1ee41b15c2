"""``make run``: trigger one run of the DAG on the local stack through Airflow's REST API, wait
for it, and say what it produced and loaded and where to see it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from devstack.airflow import AirflowStandalone
from devstack.process import StackError

DAG_ID = "kafka_to_mongo"


@dataclass
class AirflowApi:
    """A signed-in client of the api-server's public REST API (/api/v2)."""

    base_url: str
    token: str

    @classmethod
    def sign_in(cls, base_url: str, username: str, password: str) -> AirflowApi:
        body = json.dumps({"username": username, "password": password}).encode()
        request = urllib.request.Request(
            f"{base_url}/auth/token", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return cls(base_url, json.load(response)["access_token"])

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
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            raise StackError(f"{method} /api/v2{path} answered {err.code}: {detail}") from None


def trigger_and_wait(
    airflow: AirflowStandalone, conf: dict[str, Any] | None = None, timeout: float = 600.0
) -> dict[str, Any]:
    """Unpause the DAG, trigger one run with ``conf``, wait for it to end; return its summary."""
    api = AirflowApi.for_stack(airflow)
    deadline = time.monotonic() + timeout
    api.wait_for_dag(DAG_ID, timeout)
    api.call("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
    run = api.call("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf or {}})
    run_id = run["dag_run_id"]
    quoted = urllib.parse.quote(run_id, safe="")
    print(f"Triggered {DAG_ID} run {run_id}; waiting for it to finish...")
    while run["state"] not in ("success", "failed"):
        if time.monotonic() > deadline:
            raise StackError(f"run {run_id} still {run['state']} after {timeout:.0f}s; see the UI")
        time.sleep(2)
        run = api.call("GET", f"/dags/{DAG_ID}/dagRuns/{quoted}")
    summary: dict[str, Any] = {"run_id": run_id, "state": run["state"]}
    xcom = f"/dags/{DAG_ID}/dagRuns/{quoted}/taskInstances/{{}}/xcomEntries/return_value"
    try:
        summary["produce"] = api.call("GET", xcom.format("produce")).get("value")
    except StackError:
        summary["produce"] = None
    # consume is mapped (one drain, or one per partition): add up its drains.
    drains = []
    for map_index in range(1000):
        try:
            drains.append(api.call("GET", xcom.format("consume") + f"?map_index={map_index}").get("value"))
        except StackError:
            break
    summary["consume"] = merge_drains(drains)
    summary["url"] = f"{airflow.url}/dags/{DAG_ID}/runs/{quoted}"
    return summary


def merge_drains(drains: list[Any]) -> dict[str, Any] | None:
    """One summary for a run's drains: records and documents added up, the longest drain's time."""
    drains = [json.loads(d) if isinstance(d, str) else d for d in drains if d]
    if not drains:
        return None
    return {
        **drains[0],
        "records": sum(d["records"] for d in drains),
        "loaded": sum(d["loaded"] for d in drains),
        "seconds": max(d["seconds"] for d in drains),
    }


def report(summary: dict[str, Any]) -> str:
    produced = summary.get("produce") or {}
    consumed = summary.get("consume") or {}
    if isinstance(produced, str):
        produced = json.loads(produced)
    if isinstance(consumed, str):
        consumed = json.loads(consumed)
    lines = [f"Run {summary['run_id']}: {summary['state']}"]
    if produced:
        lines.append(
            f"  produced {produced['count']} records ({produced['first']}..{produced['last']}) "
            f"to topic {produced['topic']} at {produced['records_per_second']:.0f} records/s"
        )
    if consumed:
        lines.append(
            f"  loaded {consumed['loaded']} documents into {consumed['target']} "
            f"({consumed['records']} records drained in {consumed['seconds']:.1f}s)"
        )
        if produced and consumed["records"] != produced["count"]:
            lines.append(
                "  (a drain takes every record on the topic up to its snapshot: other runs' batches, "
                "such as the scheduled run that unpausing started, land in the same drain)"
            )
    lines.append(f"  see it in the UI: {summary['url']}")
    return "\n".join(lines)
