"""``python -m devstack up|down|status|logs|clean``: the local stack behind the Makefile."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from devstack.airflow import (
    COMPONENTS,
    HEALTH_NAMES,
    AirflowHome,
    AirflowServices,
    AirflowStandalone,
    CelerySettings,
    local_connections,
)
from devstack.kafka import KafkaBroker, require_java_and_maven
from devstack.mongo import MongoWireServer
from devstack.postgres import PostgresServer
from devstack.process import ManagedProcess, StackError, memory_mb
from devstack.redis import RedisServer
from devstack.run import report, trigger_and_wait
from devstack.service import Service

REPO = Path(__file__).resolve().parent.parent


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        port = int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise StackError(f"{name}={port} is not a port number (1-65535)")
    return port


def _workers(raw: str | None) -> int | None:
    """WORKERS: unset or empty means "whatever runs now" (None); else a count of Celery workers."""
    if raw is None or raw.strip() == "":
        return None
    try:
        workers = int(raw)
    except ValueError:
        raise StackError(f"WORKERS={raw!r} is not a number of Celery workers") from None
    if not 0 <= workers <= 16:
        raise StackError(f"WORKERS={workers}: give 0 (the LocalExecutor) to 16 Celery workers")
    return workers


@dataclass
class LocalStack:
    """The services of ``make up``, with their state under ``state_dir``.

    Airflow keeps its metadata in PostgreSQL. With ``workers`` 0 it runs ``airflow standalone`` (the
    LocalExecutor); with N > 0 the CeleryExecutor: Redis, the components one by one, N workers.
    """

    state_dir: Path
    kafka: KafkaBroker
    mongo: MongoWireServer
    postgres: PostgresServer
    redis: RedisServer
    home: AirflowHome
    requested_workers: int | None = None

    @classmethod
    def from_env(cls) -> LocalStack:
        state_dir = Path(os.environ.get("STATE_DIR", REPO / ".state")).resolve()
        return cls(
            state_dir=state_dir,
            kafka=KafkaBroker(
                state_dir / "kafka",
                port=_port("KAFKA_PORT", 9092),
                controller_port=_port("KAFKA_CONTROLLER_PORT", 9093),
            ),
            mongo=MongoWireServer(state_dir / "mongo", port=_port("MONGO_PORT", 27017)),
            postgres=PostgresServer(state_dir / "postgres", port=_port("POSTGRES_PORT", 5432)),
            redis=RedisServer(state_dir / "redis", port=_port("REDIS_PORT", 6379)),
            home=AirflowHome(state_dir / "airflow", api_port=_port("AIRFLOW_PORT", 8080)),
            requested_workers=_workers(os.environ.get("WORKERS")),
        )

    @property
    def standalone(self) -> AirflowStandalone:
        return AirflowStandalone(self.home, self.state_dir / "airflow")

    def services(self, workers: int) -> AirflowServices:
        """The Celery-mode processes; their home knows the broker, so workers can be pinged."""
        home = replace(self.home, database_url=self.postgres.url(), celery=self.celery_settings())
        return AirflowServices(home, self.state_dir / "airflow", workers=workers)

    def celery_mode(self) -> bool:
        """True when Celery-mode processes run or left pid files (a crash), so up, down and status
        deal with them rather than with airflow standalone."""
        processes = AirflowServices(self.home, self.state_dir / "airflow").processes
        return any(process.pid_file.exists() for process in processes)

    def celery_settings(self) -> CelerySettings:
        return CelerySettings(
            broker_url=self.redis.url(0),
            # "db+" and a SQLAlchemy URL that names its driver: Celery keeps task results in PostgreSQL.
            result_backend="db+" + self.postgres.url(),
        )

    def running_workers(self) -> int:
        """How many Celery workers have pid files (0: the stack is not in Celery mode)."""
        return len(AirflowServices(self.home, self.state_dir / "airflow").worker_numbers())

    def workers(self) -> int:
        """The worker count ``up`` aims at: WORKERS, else what runs now, else 0 (the LocalExecutor).

        Switching executors needs a restart of every Airflow process: refuse it while they run.
        """
        celery_runs = self.celery_mode()
        if self.requested_workers is None:
            return self.running_workers() if celery_runs else 0
        if self.requested_workers == 0 and celery_runs:
            raise StackError(
                f"Airflow runs the CeleryExecutor with {_count(self.running_workers(), 'worker')}; to go "
                "back to the LocalExecutor, make down first, then make up (without WORKERS)"
            )
        if self.requested_workers > 0 and self.standalone.process.running():
            raise StackError(
                "Airflow runs the LocalExecutor (airflow standalone); to switch to the CeleryExecutor, "
                f"make down first, then make up WORKERS={self.requested_workers}"
            )
        return self.requested_workers

    def airflow(self, workers: int) -> AirflowStandalone | AirflowServices:
        return self.services(workers) if workers else self.standalone

    def write_airflow_home(self, workers: int) -> None:
        self.home.database_url = self.postgres.url()
        self.home.celery = self.celery_settings() if workers else None
        if not self.home.write(
            local_connections(self.kafka.bootstrap_servers, self.mongo.host, self.mongo.port)
        ):
            print(f"Connections: keeping your edits in {self.home.connections_file}")

    def backing_services(self, celery: bool) -> list[Service]:
        """The services Airflow needs, in the order ``up`` starts them (Redis only for Celery)."""
        return [self.kafka, self.mongo, self.postgres, *([self.redis] if celery else [])]

    def check_ports(self, workers: int) -> None:
        """Fail before anything starts when two settings share a port or a port we need is taken.

        Without this, a taken MONGO_PORT or AIRFLOW_PORT was found only after Kafka had started.
        """
        airflow = self.airflow(workers)
        claimed: dict[int, str] = {}
        for port in [port for service in [*self.backing_services(True), airflow] for port in service.ports()]:
            if port.number in claimed:
                raise StackError(
                    f"{claimed[port.number]} and {port.setting} are both {port.number}; "
                    "give each service its own port"
                )
            claimed[port.number] = port.setting
        for service in [*self.backing_services(workers > 0), airflow]:
            if not service.running():
                service.check_ports()

    def up(self) -> None:
        require_java_and_maven()
        workers = self.workers()
        self.check_ports(workers)
        fresh = not self.postgres.initialized()
        for service in self.backing_services(workers > 0):
            started = service.start()
            print(f"{service.label:22} {'started' if started else 'already running'} on {service.address}")
        self.write_airflow_home(workers)
        executor = f"CeleryExecutor, {_count(workers, 'worker')}" if workers else "LocalExecutor"
        print(f"{'Airflow':22} starting ({executor}; migrates the database on first start)...")
        airflow = self.airflow(workers)
        started = airflow.start()
        print(f"{'Airflow':22} {'started' if started else 'already running'} on {airflow.url}")
        if isinstance(airflow, AirflowServices):
            for number in range(1, workers + 1):
                print(f"{'':22} worker-{number}: Celery node {airflow.worker_name(number)}")
        print()
        print(f"Airflow UI:   {airflow.url}")
        password = self.home.admin_password()
        print(f"Login:        admin / {password or '(see ' + str(self.home.passwords_file) + ')'}")
        print(f"CLI:          bin/airflow dags list   (AIRFLOW_HOME={self.home.path})")
        print(f"State, logs:  {self.state_dir}   (make status, make logs, make down, make clean)")
        if fresh:
            print("\nA fresh stack: running the pipeline once (make run does this again)...")
            self.run(airflow=airflow)

    def run(
        self, conf: dict | None = None, airflow: AirflowStandalone | AirflowServices | None = None
    ) -> None:
        """Trigger one DAG run with ``conf`` (defaults otherwise), wait, and report it."""
        summary = trigger_and_wait(airflow or self.airflow(self.workers()), conf)  # type: ignore[arg-type]
        print(report(summary))
        if summary["state"] != "success":
            raise StackError(f"the run failed; its task logs are in the UI: {summary['url']}")

    def down(self) -> None:
        if self.celery_mode():
            stopped = self.services(0).stop()
            print(f"{'Airflow':22} {'stopped' if stopped else 'was not running'} (CeleryExecutor)")
        else:
            print(f"{'Airflow':22} {'stopped' if self.standalone.stop() else 'was not running'}")
        # Redis only when a Celery stack started it.
        for service in reversed(self.backing_services(self.redis.process.pid_file.exists())):
            print(f"{service.label:22} {'stopped' if service.stop() else 'was not running'}")

    def status(self) -> int:
        """Print one line per service (and per Airflow component and worker in Celery mode).

        The exit code is 1 when any service is down.
        """
        celery = self.celery_mode()
        rows = [_process_row(s.name, s.process, s.ready) for s in self.backing_services(celery)]
        if not celery:
            rows.append(_process_row("airflow", self.standalone.process, self.standalone.ready))
            health = self.standalone.health()
        else:
            services = self.services(self.running_workers())
            health = services.health()
            for name in COMPONENTS:
                wanted = HEALTH_NAMES.get(name)
                check = (
                    (lambda: bool(health))
                    if wanted is None
                    else (lambda w=wanted: health.get(w) == "healthy")
                )
                rows.append(_process_row(f"airflow-{name}", services.component(name), check))
            answering = services.celery_workers()
            for number in services.worker_numbers():
                node = services.worker_name(number)
                name, state, up = _process_row(
                    f"worker-{number}", services.worker(number), lambda n=node: n in answering
                )
                rows.append(
                    (name, f"{state}, Celery node {node}" if state.startswith("healthy") else state, up)
                )
        width = max(len(name) for name, _, _ in rows) + 1
        for name, state, _ in rows:
            print(f"{name:{width}}{state}")
        if health:
            print(" " * width + "airflow components: " + ", ".join(f"{k}={v}" for k, v in health.items()))
        return 0 if all(up for _, _, up in rows) else 1

    def logs(self, lines: int) -> None:
        celery = self.celery_mode()
        paths = [self.kafka.server_log, *(s.process.log_file for s in self.backing_services(celery))]
        if celery:
            paths += [process.log_file for process in self.services(self.running_workers()).processes]
        else:
            paths.append(self.standalone.process.log_file)
        for path in paths:
            print(f"==> {path} <==")
            try:
                print("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
            except FileNotFoundError:
                print("(no log yet)")

    def clean(self) -> None:
        self.down()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        print(f"removed {self.state_dir}")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _process_row(name: str, process: ManagedProcess, healthy: Callable[[], bool]) -> tuple[str, str, bool]:
    """``(name, state, up)`` for one process: healthy (with the memory it and its children use),
    running but not answering, crashed, or not running."""
    pid = process.pid()
    if pid is None:
        state = (
            f"CRASHED (pid file left behind); see {process.log_file}"
            if process.pid_file.exists()
            else "not running"
        )
    elif healthy():
        memory = memory_mb(pid)
        state = f"healthy (pid {pid}, {memory:.0f} MB)" if memory is not None else f"healthy (pid {pid})"
    else:
        state = f"running but not answering (pid {pid}); see {process.log_file}"
    return name, state, pid is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "logs", "clean", "config", "run"])
    parser.add_argument("--conf", default="{}", help="run: the DAG run's conf as JSON")
    parser.add_argument("-n", "--lines", type=int, default=40, help="log lines per file (logs)")
    args = parser.parse_args(argv)
    try:
        stack = LocalStack.from_env()
        if args.command == "up":
            stack.up()
        elif args.command == "down":
            stack.down()
        elif args.command == "status":
            return stack.status()
        elif args.command == "logs":
            stack.logs(args.lines)
        elif args.command == "clean":
            stack.clean()
        elif args.command == "run":
            stack.run(json.loads(args.conf))
        elif args.command == "config":
            stack.write_airflow_home(stack.running_workers())
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
