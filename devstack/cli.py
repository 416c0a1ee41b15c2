"""``python -m devstack up|down|status|logs|clean``: the local stack behind the Makefile."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from devstack.airflow import AirflowHome, AirflowStandalone, local_connections
from devstack.kafka import KafkaBroker, require_java_and_maven
from devstack.mongo import MongoWireServer
from devstack.process import StackError
from devstack.run import report, trigger_and_wait

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


@dataclass
class LocalStack:
    """The three services of ``make up``, with their state under ``state_dir``."""

    state_dir: Path
    kafka: KafkaBroker
    mongo: MongoWireServer
    airflow: AirflowStandalone

    @classmethod
    def from_env(cls) -> LocalStack:
        state_dir = Path(os.environ.get("STATE_DIR", REPO / ".state")).resolve()
        home = AirflowHome(state_dir / "airflow", api_port=_port("AIRFLOW_PORT", 8080))
        return cls(
            state_dir=state_dir,
            kafka=KafkaBroker(
                state_dir / "kafka",
                port=_port("KAFKA_PORT", 9092),
                controller_port=_port("KAFKA_CONTROLLER_PORT", 9093),
            ),
            mongo=MongoWireServer(state_dir / "mongo", port=_port("MONGO_PORT", 27017)),
            airflow=AirflowStandalone(home, state_dir / "airflow"),
        )

    def write_airflow_home(self) -> None:
        if not self.airflow.home.write(
            local_connections(self.kafka.bootstrap_servers, self.mongo.host, self.mongo.port)
        ):
            print(f"Connections: keeping your edits in {self.airflow.home.connections_file}")

    def check_ports(self) -> None:
        """Fail before anything starts when two settings share a port or a port we need is taken.

        Without this, a taken MONGO_PORT or AIRFLOW_PORT was found only after Kafka had started.
        """
        claimed: dict[int, str] = {}
        for setting, port in (
            (self.kafka.port_setting, self.kafka.port),
            (self.kafka.controller_port_setting, self.kafka.controller_port),
            (self.mongo.port_setting, self.mongo.port),
            (self.airflow.port_setting, self.airflow.home.api_port),
        ):
            if port in claimed:
                raise StackError(
                    f"{claimed[port]} and {setting} are both {port}; give each service its own port"
                )
            claimed[port] = setting
        for service in (self.kafka, self.mongo, self.airflow):
            if not service.process.running():
                service.check_ports()

    def up(self) -> None:
        require_java_and_maven()
        self.check_ports()
        for name, service in (("Kafka", self.kafka), ("MongoDB-wire server", self.mongo)):
            started = service.start()
            where = getattr(service, "bootstrap_servers", None) or getattr(service, "uri", "")
            print(f"{name:22} {'started' if started else 'already running'} on {where}")
        self.write_airflow_home()
        fresh = not (self.airflow.home.path / "airflow.db").exists()
        print(f"{'Airflow':22} starting (migrates the database on first start; this takes a minute)...")
        started = self.airflow.start()
        print(f"{'Airflow':22} {'started' if started else 'already running'} on {self.airflow.url}")
        print()
        print(f"Airflow UI:   {self.airflow.url}")
        password = self.airflow.home.admin_password()
        print(f"Login:        admin / {password or '(see ' + str(self.airflow.home.passwords_file) + ')'}")
        print(f"CLI:          bin/airflow dags list   (AIRFLOW_HOME={self.airflow.home.path})")
        print(f"State, logs:  {self.state_dir}   (make status, make logs, make down, make clean)")
        if fresh:
            print("\nA fresh stack: running the pipeline once (make run does this again)...")
            self.run()

    def run(self, conf: dict | None = None) -> None:
        """Trigger one DAG run with ``conf`` (defaults otherwise), wait, and report it."""
        summary = trigger_and_wait(self.airflow, conf)
        print(report(summary))
        if summary["state"] != "success":
            raise StackError(f"the run failed; its task logs are in the UI: {summary['url']}")

    def down(self) -> None:
        for name, service in (
            ("Airflow", self.airflow),
            ("MongoDB-wire server", self.mongo),
            ("Kafka", self.kafka),
        ):
            print(f"{name:22} {'stopped' if service.stop() else 'was not running'}")

    def status(self) -> int:
        """Print one line per service; the exit code is 1 when any service is down."""
        rows = []
        for name, service, healthy in (
            ("kafka", self.kafka, self.kafka.ready),
            ("mongo", self.mongo, self.mongo.ready),
            ("airflow", self.airflow, self.airflow.ready),
        ):
            process = service.process
            pid = process.pid()
            if pid is None:
                state = (
                    f"CRASHED (pid file left behind); see {process.log_file}"
                    if process.pid_file.exists()
                    else "not running"
                )
            elif healthy():
                state = f"healthy (pid {pid})"
            else:
                state = f"running but not answering (pid {pid}); see {process.log_file}"
            rows.append((name, state, pid is not None))
        for name, state, _ in rows:
            print(f"{name:8} {state}")
        health = self.airflow.health()
        if health:
            print("         airflow components: " + ", ".join(f"{k}={v}" for k, v in health.items()))
        return 0 if all(up for _, _, up in rows) else 1

    def logs(self, lines: int) -> None:
        for path in (
            self.kafka.server_log,
            self.kafka.process.log_file,
            self.mongo.process.log_file,
            self.airflow.process.log_file,
        ):
            print(f"==> {path} <==")
            try:
                print("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
            except FileNotFoundError:
                print("(no log yet)")

    def clean(self) -> None:
        self.down()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        print(f"removed {self.state_dir}")


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
            stack.write_airflow_home()
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
