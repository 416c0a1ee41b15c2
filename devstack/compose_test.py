"""``make compose-test``: run docker-compose.yaml for real on a machine without a container registry.

Steps (each timed): install the engine, compose and debootstrap with apt when missing (root only);
start a Docker engine of its own unless one answers on its socket; make the Debian base image
(debootstrap, docker import) and build the stand-in images of docker/local/ and the project's
Airflow image; bring the stack up with docker-compose.yaml plus docker/compose.local.yaml; wait
on every healthcheck; trigger ``kafka_to_mongo`` through the REST API and check its batch's
documents in MongoDB (count, ``_id`` set, content); scale the Celery workers to 2, kill the worker
running a drain and check the ``_id`` set after the retry; run a backfill with the CLI inside a
container; then remove the project's containers, networks and volumes, and stop the engine if this
started it. Images and the engine's layer cache stay in ``ENGINE_DIR`` so the next run is warm.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pymongo import MongoClient

from devstack.process import StackError, free_port
from devstack.run import AirflowApi
from kafka_mongo_etl.ids import batch_id, record_key

REPO = Path(__file__).resolve().parent.parent
LOCAL = REPO / "docker" / "local"
LOCAL_IMAGES_ENV = REPO / "docker" / "local-images.env"
OVERRIDE = REPO / "docker" / "compose.local.yaml"
ARTIFACTS = REPO / ".artifacts" / "compose-test"
# The engine's own directories (FACTS.md, third round): never the system's default socket or data.
ENGINE_DIR = Path("/var/lib/k2m-docker")
RUN_DIR = Path("/run/k2m-docker")
SOCKET = RUN_DIR / "docker.sock"
PIDFILE = RUN_DIR / "dockerd.pid"
API_TIMEOUT = 180.0
DOCKERD_FLAGS = ["--iptables=false", "--ip-masq=false", "--bridge=none"]
BRIDGE_SYSCTL = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
DEBIAN_IMAGE = "k2m-local/debian:bookworm"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# Inside the base image, where Debian's ca-certificates never rewrites it; PIP_CERT points pip at it.
IMAGE_CA = "/etc/ssl/host-ca/ca-certificates.crt"
# Which docker/local/ directory builds the image each variable of local-images.env names.
LOCAL_BUILDS = {
    "AIRFLOW_BASE_IMAGE": "airflow",
    "POSTGRES_IMAGE": "postgres",
    "REDIS_IMAGE": "redis",
    "KAFKA_IMAGE": "kafka",
    "MONGO_IMAGE": "mongo",
}
DAG_ID = "kafka_to_mongo"
PROJECT = "k2m-compose-test"
ONE_SHOT = {"airflow-init", "kafka-init"}
HEALTH_TIMEOUT = 900.0
RUN_TIMEOUT = 900.0
PACKAGES = {"dockerd": "docker.io", "docker-compose": "docker-compose", "debootstrap": "debootstrap"}


def sh(*command: str | Path, check: bool = True, capture: bool = False, **kwargs: Any) -> str:
    """Run a command; on failure raise a StackError with its output's end."""
    result = subprocess.run(
        [str(part) for part in command], text=True, capture_output=capture, check=False, **kwargs
    )
    if check and result.returncode != 0:
        tail = ((result.stdout or "") + (result.stderr or ""))[-2000:]
        raise StackError(f"{' '.join(map(str, command))[:200]} exited {result.returncode}\n{tail}")
    return result.stdout or ""


@dataclass
class Timings:
    steps: list[tuple[str, float, str]] = field(default_factory=list)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"==> {name}", flush=True)
        started = time.monotonic()
        outcome = "ok"
        try:
            yield
        except BaseException:
            outcome = "FAILED"
            raise
        finally:
            self.steps.append((name, time.monotonic() - started, outcome))
            print(f"    {outcome} in {time.monotonic() - started:.1f} s", flush=True)

    def report(self) -> str:
        lines = [f"  {seconds:7.1f} s  {outcome:6}  {name}" for name, seconds, outcome in self.steps]
        total = sum(seconds for _, seconds, _ in self.steps)
        return "\n".join([*lines, f"  {total:7.1f} s  total"])


def install_missing_tools() -> None:
    missing = [package for tool, package in PACKAGES.items() if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise StackError(f"missing {', '.join(missing)}; run as root or: apt-get install {' '.join(missing)}")
    sh("apt-get", "update", "-q")
    sh("apt-get", "install", "-y", "-q", *missing, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def docker(*args: str | Path, **kwargs: Any) -> str:
    # Debian's client, matching the engine it installs; DOCKER_HOST points it at this engine's socket.
    return sh("/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker", *args, **kwargs)


def engine_answers() -> bool:
    try:
        docker("info", capture=True)
    except StackError:
        return False
    return True


@dataclass
class Engine:
    """The Docker engine on SOCKET; stops it only if ``start`` started it."""

    dockerd: subprocess.Popen[bytes] | None = None
    bridge_sysctl_was: str | None = None

    def start(self) -> None:
        os.environ["DOCKER_HOST"] = f"unix://{SOCKET}"
        # Compose's bridge networks connect containers once bridged traffic skips iptables.
        if BRIDGE_SYSCTL.exists() and BRIDGE_SYSCTL.read_text().strip() != "0":
            self.bridge_sysctl_was = BRIDGE_SYSCTL.read_text().strip()
            BRIDGE_SYSCTL.write_text("0")
        if engine_answers():
            print(f"    using the engine already on {SOCKET}")
            return
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        ENGINE_DIR.mkdir(parents=True, exist_ok=True)
        log = (ENGINE_DIR / "dockerd.log").open("ab")
        self.dockerd = subprocess.Popen(
            [
                "dockerd",
                f"--data-root={ENGINE_DIR / 'data'}",
                f"--exec-root={RUN_DIR / 'exec'}",
                f"--host=unix://{SOCKET}",
                f"--pidfile={PIDFILE}",
                *DOCKERD_FLAGS,
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        wait_for("the Docker engine", 60, engine_answers, f"see {ENGINE_DIR / 'dockerd.log'}")

    def stop(self) -> None:
        if self.bridge_sysctl_was is not None:
            BRIDGE_SYSCTL.write_text(self.bridge_sysctl_was)
        if self.dockerd is None:
            return
        self.dockerd.send_signal(signal.SIGTERM)
        try:
            self.dockerd.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise StackError(f"dockerd (pid {self.dockerd.pid}) still running 60 s after SIGTERM") from None


def wait_for(what: str, timeout: float, ready: Any, hint: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise StackError(f"{what}: not ready after {timeout:.0f} s; {hint}")
        time.sleep(2)


def debian_base() -> None:
    """The base of every stand-in image: Debian bookworm from debootstrap, plus this machine's CA
    bundle for pip (PyPI is reached through whatever TLS the machine trusts)."""
    if docker("image", "inspect", DEBIAN_IMAGE, check=False, capture=True).strip() not in ("", "[]"):
        return
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        root = Path(scratch) / "rootfs"
        sh("debootstrap", "--variant=minbase", "bookworm", root, capture=True)
        image_ca = root / IMAGE_CA.lstrip("/")
        image_ca.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HOST_CA, image_ca)
        shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        docker(
            "import",
            "--change",
            f"ENV PIP_CERT={IMAGE_CA}",
            "-",
            DEBIAN_IMAGE,
            stdin=tar.stdout,
            capture=True,
        )
        if tar.wait() != 0:
            raise StackError(f"tar of {root} failed")


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")
    )
    return {key: value for key, value in pairs}


def airflow_image() -> str:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())["x-airflow-common"]["image"]


def build_images() -> None:
    # Kafka's jars from Maven Central, the same cache the native stack's broker uses.
    sh(
        "mvn",
        "-q",
        "-B",
        "-f",
        LOCAL / "kafka" / "pom.xml",
        f"-Dmaven.repo.local={REPO / '.cache' / 'm2'}",
        "dependency:copy-dependencies",
        "-DoutputDirectory=libs",
        capture=True,
    )
    images = read_env_file(LOCAL_IMAGES_ENV)
    for variable, directory in LOCAL_BUILDS.items():
        print(f"    {images[variable]} from docker/local/{directory}", flush=True)
        docker("build", "--network", "host", "-q", "-t", images[variable], LOCAL / directory, capture=True)
    print(f"    {airflow_image()} from ./Dockerfile", flush=True)
    docker(
        "build",
        "--network",
        "host",
        "-q",
        "--build-arg",
        f"AIRFLOW_BASE_IMAGE={images['AIRFLOW_BASE_IMAGE']}",
        "-t",
        airflow_image(),
        REPO,
        capture=True,
    )


@dataclass
class Stack:
    """The compose project: docker-compose.yaml + the override, with an env file of its own."""

    env_file: Path
    env: dict[str, str]

    @classmethod
    def create(cls) -> Stack:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        ports = {
            name: str(free_port()) for name in ("AIRFLOW_HOST_PORT", "KAFKA_HOST_PORT", "MONGO_HOST_PORT")
        }
        env_file = ARTIFACTS / "compose.env"
        lines = [(REPO / ".env.example").read_text(), LOCAL_IMAGES_ENV.read_text()]
        lines += [f"{name}={port}\n" for name, port in ports.items()]
        env_file.write_text("".join(lines))
        return cls(env_file, read_env_file(env_file))

    def compose(self, *args: str, **kwargs: Any) -> str:
        return sh(
            "docker-compose",
            "--env-file",
            self.env_file,
            "-p",
            PROJECT,
            "-f",
            REPO / "docker-compose.yaml",
            "-f",
            OVERRIDE,
            *args,
            cwd=REPO,
            **kwargs,
        )

    def up(self, *args: str) -> None:
        """``up -d`` and wait on every healthcheck. docker-compose gives up on a dependency that is
        unhealthy for a moment (a slow check on a busy machine); then wait, and ask once more."""
        try:
            self.compose("up", "-d", "--no-build", *args, capture=True)
        except StackError as err:
            print(f"    {str(err).splitlines()[-1]}; waiting on the healthchecks, then up again", flush=True)
            self.wait_healthy()
            self.compose("up", "-d", "--no-build", *args, capture=True)
        self.wait_healthy()

    def containers(self) -> list[dict[str, Any]]:
        ids = docker(
            "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}", capture=True
        ).split()
        return json.loads(docker("inspect", *ids, capture=True)) if ids else []

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT) -> None:
        """Every long-running container healthy and every one-shot job exited 0, or a StackError
        naming the services that were not, with the end of their logs."""
        deadline = time.monotonic() + timeout
        while True:
            waiting, failed = [], []
            for container in self.containers():
                service = container["Config"]["Labels"]["com.docker.compose.service"]
                state = container["State"]
                if service in ONE_SHOT:
                    if state["Status"] == "exited" and state["ExitCode"] != 0:
                        failed.append(service)
                    elif state["Status"] != "exited":
                        waiting.append(service)
                elif state.get("Health", {}).get("Status") != "healthy":
                    (failed if state["Status"] in ("exited", "dead") else waiting).append(service)
            if not waiting and not failed:
                return
            if failed or time.monotonic() > deadline:
                names = sorted(set(failed or waiting))
                logs = "".join(
                    f"\n--- {name} ---\n" + self.compose("logs", "--tail=30", name, capture=True, check=False)
                    for name in names
                )
                raise StackError(
                    f"not healthy after {time.monotonic() - deadline + timeout:.0f} s: {names}{logs}"
                )
            time.sleep(3)

    def api(self) -> AirflowApi:
        url = f"http://127.0.0.1:{self.env['AIRFLOW_HOST_PORT']}"
        # On a busy 2-core machine the API server took 40 s to answer /health: long per-call bounds.
        return AirflowApi.sign_in(url, "admin", self.env["AIRFLOW_ADMIN_PASSWORD"], timeout=API_TIMEOUT)

    def mongo(self) -> MongoClient:
        return MongoClient(
            "127.0.0.1",
            int(self.env["MONGO_HOST_PORT"]),
            username=self.env["MONGO_ROOT_USER"],
            password=self.env["MONGO_ROOT_PASSWORD"],
            authSource="admin",
            directConnection=True,
            serverSelectionTimeoutMS=10000,
        )


def run_path(run_id: str) -> str:
    return f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}"


def wait_for_run(api: AirflowApi, run_id: str, timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while (state := api.call("GET", run_path(run_id))["state"]) not in ("success", "failed"):
        if time.monotonic() > deadline:
            raise StackError(f"run {run_id} still {state} after {timeout:.0f} s")
        time.sleep(2)
    if state != "success":
        tasks = api.call("GET", f"{run_path(run_id)}/taskInstances")["task_instances"]
        states = {(t["task_id"], t["map_index"]): t["state"] for t in tasks}
        raise StackError(f"run {run_id} {state}; task states: {states}")


def check_batches(client: MongoClient, database: str, counts: dict[str, int]) -> None:
    """The collection holds exactly the runs' records: one document per (run, n), content intact."""
    collection = client[database]["testnum"]
    expected = {
        record_key(batch_id(DAG_ID, run), n): (batch_id(DAG_ID, run), n)
        for run, c in counts.items()
        for n in range(c)
    }
    found = {
        doc["_id"]: (doc.get("batch"), doc.get("num")) for doc in collection.find({}, {"batch": 1, "num": 1})
    }
    if found.keys() != expected.keys():
        missing, extra = expected.keys() - found.keys(), found.keys() - expected.keys()
        raise StackError(
            f"{database}.testnum: {len(missing)} missing (e.g. {sorted(missing)[:3]}), {len(extra)} extra"
        )
    wrong = [key for key, content in expected.items() if found[key] != content]
    if wrong:
        raise StackError(f"{database}.testnum: {len(wrong)} documents with wrong batch/num, e.g. {wrong[:3]}")
    print(
        f"    {database}.testnum: exactly the {len(expected)} documents of {len(counts)} run(s)", flush=True
    )


def trigger(api: AirflowApi, conf: dict[str, Any]) -> str:
    return api.call("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]


def kill_worker_mid_drain(stack: Stack, api: AirflowApi, client: MongoClient) -> None:
    """Kill the worker container running ``consume`` once part of the batch is in MongoDB; the
    retry on the other worker must leave exactly the batch's documents."""
    database, count = "compose_test_kill", 20000
    run_id = trigger(api, {"topic": "compose-test-kill", "mongo_db": database, "count": count})
    batch = batch_id(DAG_ID, run_id)
    deadline = time.monotonic() + RUN_TIMEOUT
    while not 0 < client[database]["testnum"].count_documents({"batch": batch}) < count:
        if time.monotonic() > deadline:
            raise StackError(f"run {run_id}: no partial batch seen in MongoDB within {RUN_TIMEOUT:.0f} s")
        time.sleep(0.5)
    tasks = api.call("GET", f"{run_path(run_id)}/taskInstances?task_id=consume")["task_instances"]
    hosts = {t["hostname"] for t in tasks if t["state"] == "running"}
    if len(hosts) != 1:
        raise StackError(f"run {run_id}: expected one worker running consume, found {hosts}")
    # A container's hostname is the start of its id, which docker accepts as its name.
    host = hosts.pop()
    docker("kill", host, capture=True)
    print(
        f"    killed worker {host} with {client[database]['testnum'].count_documents({})} of {count} written"
    )
    wait_for_run(api, run_id)
    tries = {
        t["try_number"]
        for t in api.call("GET", f"{run_path(run_id)}/taskInstances?task_id=consume")["task_instances"]
    }
    if max(tries) < 2:
        raise StackError(f"run {run_id}: consume was not retried after the kill (tries {tries})")
    check_batches(client, database, {run_id: count})


def backfill(stack: Stack, api: AirflowApi, client: MongoClient) -> None:
    """``airflow backfill create`` in the airflow-cli container for two past hours; the scheduler
    runs them; each run's batch must be in MongoDB exactly."""
    database, count = "compose_test_backfill", 300
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    start, end = hour - dt.timedelta(hours=3), hour - dt.timedelta(hours=2)
    conf = {"topic": "compose-test-backfill", "mongo_db": database, "count": count}
    stack.compose(
        "run",
        "--rm",
        "airflow-cli",
        "airflow",
        "backfill",
        "create",
        "--dag-id",
        DAG_ID,
        "--from-date",
        start.isoformat(),
        "--to-date",
        end.isoformat(),
        "--dag-run-conf",
        json.dumps(conf),
        capture=True,
    )
    runs = api.call("GET", f"/dags/{DAG_ID}/dagRuns?run_type=backfill")["dag_runs"]
    if not runs:
        raise StackError("airflow backfill create made no runs")
    for run in runs:
        wait_for_run(api, run["dag_run_id"])
    check_batches(client, database, {run["dag_run_id"]: count for run in runs})


def memory(stack: Stack) -> str:
    ids = [container["Id"][:12] for container in stack.containers() if container["State"]["Running"]]
    return docker("stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}", *ids, capture=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack up at the end (for debugging)")
    args = parser.parse_args()
    timings, engine, stack = Timings(), Engine(), None
    try:
        with timings.step("install docker.io, docker-compose, debootstrap if missing"):
            install_missing_tools()
        with timings.step("start the Docker engine (unless one answers)"):
            engine.start()
        with timings.step("Debian base image (debootstrap, docker import)"):
            debian_base()
        with timings.step("build the images"):
            build_images()
        stack = Stack.create()
        with timings.step("docker-compose up, wait for every healthcheck"):
            stack.up()
        api, client = stack.api(), stack.mongo()
        with timings.step("trigger kafka_to_mongo (REST), check its 1000 documents"):
            api.wait_for_dag(DAG_ID, 300)
            api.call("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
            run_id = trigger(api, {"topic": "compose-test", "mongo_db": "compose_test", "count": 1000})
            wait_for_run(api, run_id)
            check_batches(client, "compose_test", {run_id: 1000})
        with timings.step("scale airflow-worker to 2"):
            stack.up("--scale", "airflow-worker=2")
        with timings.step("kill the worker running a drain, check the _id set after the retry"):
            kill_worker_mid_drain(stack, api, client)
        with timings.step("backfill with the CLI in the airflow-cli container"):
            backfill(stack, api, client)
        usage = memory(stack)
        print(f"Memory (docker stats --no-stream):\n{usage}")
        (ARTIFACTS / "memory.txt").write_text(usage)
        return 0
    except StackError as err:
        print(f"compose-test FAILED: {err}", file=sys.stderr)
        return 1
    finally:
        if stack is not None and not args.keep:
            with timings.step("docker-compose down (containers, networks, volumes)"):
                stack.compose(
                    "--profile", "debug", "down", "-v", "--remove-orphans", capture=True, check=False
                )
        if not args.keep:
            with timings.step("stop the engine if this started it"):
                engine.stop()
        print(f"Timings:\n{timings.report()}")
        (ARTIFACTS / "timings.txt").parent.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "timings.txt").write_text(timings.report() + "\n")


if __name__ == "__main__":
    sys.exit(main())
