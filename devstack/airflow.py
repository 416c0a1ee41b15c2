"""Airflow 3.3 for the local stack: its home, its config, its connections and its processes.

Everything an Airflow process needs is in ``$AIRFLOW_HOME/airflow.cfg``: the settings shared with
docker-compose.yaml (``docker/airflow.env``), the DAG and plugin folders, the metadata database
(PostgreSQL for ``make up``; SQLite for homes that name none), the Celery broker when there are
workers, and a local-filesystem secrets backend that serves ``kafka_default`` and ``mongo_default``
from ``$AIRFLOW_HOME/connections.json``. So every process and every CLI command that uses this
home (``bin/airflow ...``) sees the same settings and connections, not only the processes
``make up`` started.

Two ways to run it: ``AirflowStandalone`` (``airflow standalone``: the LocalExecutor) and
``AirflowServices`` (each component on its own and N ``airflow celery worker`` processes: the
CeleryExecutor, which ``airflow standalone`` would replace by the LocalExecutor).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from devstack.process import ManagedProcess, StackError, wait_until
from devstack.service import Port, Service

REPO = Path(__file__).resolve().parent.parent
SHARED_SETTINGS = REPO / "docker" / "airflow.env"
_SETTING = re.compile(r"AIRFLOW__([A-Z0-9_]+?)__([A-Z0-9_]+)")


def shared_settings(path: Path = SHARED_SETTINGS) -> dict[str, dict[str, str]]:
    """The settings in ``path`` (``AIRFLOW__SECTION__KEY=value`` lines) as ``{section: {key: value}}``."""
    sections: dict[str, dict[str, str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, separator, value = line.partition("=")
        match = _SETTING.fullmatch(name)
        if not separator or match is None:
            raise StackError(f"{path}:{number}: expected AIRFLOW__SECTION__KEY=value, got {line!r}")
        sections.setdefault(match[1].lower(), {})[match[2].lower()] = value
    return sections


@dataclass(frozen=True)
class CelerySettings:
    """Where the CeleryExecutor queues tasks and where workers put results."""

    broker_url: str
    result_backend: str


def local_connections(kafka_bootstrap: str, mongo_host: str, mongo_port: int) -> dict[str, dict]:
    """The two connections the DAG uses, pointing at the local stack (dev-only, no credentials)."""
    return {
        "kafka_default": {
            "conn_type": "kafka",
            "description": "Local dev broker started by make up (KRaft, PLAINTEXT, no auth).",
            "extra": {"bootstrap.servers": kafka_bootstrap},
        },
        "mongo_default": {
            "conn_type": "mongo",
            "description": "Local dev MongoDB-wire server started by make up (no auth).",
            "host": mongo_host,
            "port": mongo_port,
            # Passed to MongoClient: fail in seconds, not 30 s, when the server is away.
            "extra": {"serverSelectionTimeoutMS": 5000, "connectTimeoutMS": 5000},
        },
    }


@dataclass
class AirflowHome:
    """An ``AIRFLOW_HOME`` with a generated airflow.cfg and a connections file."""

    path: Path
    api_port: int = 8080
    dags_folder: Path = REPO / "dags"
    plugins_folder: Path = REPO / "plugins"
    # A SQLAlchemy URL of the metadata database; None: SQLite in the home (tests, benchmarks).
    database_url: str | None = None
    # None: the LocalExecutor; set: the CeleryExecutor with this broker and result backend.
    celery: CelerySettings | None = None

    @property
    def config_file(self) -> Path:
        return self.path / "airflow.cfg"

    @property
    def connections_file(self) -> Path:
        return self.path / "connections.json"

    @property
    def passwords_file(self) -> Path:
        return self.path / "simple_auth_manager_passwords.json.generated"

    def env(self) -> dict[str, str]:
        """The environment for an Airflow process of this home: only AIRFLOW_HOME and PATH."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("AIRFLOW__") and not key.startswith("AIRFLOW_CONN_")
        }
        env["AIRFLOW_HOME"] = str(self.path)
        # airflow standalone spawns `airflow` by name: the venv's bin must come first on PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def write(self, connections: dict[str, dict], extra: dict[str, dict[str, str]] | None = None) -> bool:
        """Write airflow.cfg (keeping its generated secrets across calls) and connections.json.

        Returns False when connections.json holds the user's own edits and was left alone.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        keys_file = self.path / "secret_keys.json"
        if keys_file.exists():
            keys = json.loads(keys_file.read_text())
        else:
            from cryptography.fernet import Fernet

            keys = {
                "fernet_key": Fernet.generate_key().decode(),
                "jwt_secret": secrets.token_urlsafe(32),
                "api_secret_key": secrets.token_urlsafe(32),
            }
            keys_file.write_text(json.dumps(keys))
            keys_file.chmod(0o600)
        sections = shared_settings()
        local: dict[str, dict[str, str]] = {
            "core": {
                "dags_folder": str(self.dags_folder),
                "plugins_folder": str(self.plugins_folder),
                "executor": "CeleryExecutor" if self.celery else "LocalExecutor",
                "fernet_key": keys["fernet_key"],
                "execution_api_server_url": f"http://127.0.0.1:{self.api_port}/execution/",
            },
            "database": {"sql_alchemy_conn": self.database_url or self._sqlite_url()},
            "api": {
                "host": "127.0.0.1",
                "port": str(self.api_port),
                "base_url": f"http://127.0.0.1:{self.api_port}",
                "secret_key": keys["api_secret_key"],
            },
            "api_auth": {"jwt_secret": keys["jwt_secret"]},
            "secrets": {
                "backend": "airflow.secrets.local_filesystem.LocalFilesystemBackend",
                "backend_kwargs": json.dumps({"connections_file_path": str(self.connections_file)}),
            },
            "logging": {"base_log_folder": str(self.path / "logs")},
        }
        if self.celery:
            local["celery"] = {
                "broker_url": self.celery.broker_url,
                "result_backend": self.celery.result_backend,
            }
        for section, values in local.items():
            sections.setdefault(section, {}).update(values)
        for section, values in (extra or {}).items():
            sections.setdefault(section, {}).update(values)
        lines = [
            "# Generated by devstack (make up) for the local development stack. Edits are overwritten;",
            "# change docker/airflow.env (shared with docker-compose.yaml) or devstack/airflow.py instead.",
            "# Secrets and passwords here are random, per machine, dev-only.",
        ]
        for section, values in sections.items():
            lines.append(f"\n[{section}]")
            lines.extend(f"{key} = {value}" for key, value in values.items())
        self.config_file.write_text("\n".join(lines) + "\n")
        self.config_file.chmod(0o600)
        return self.write_connections(connections)

    def _sqlite_url(self) -> str:
        # The CLI writes while the scheduler holds SQLite's lock: wait for it, do not fail at once.
        return f"sqlite:///{self.path / 'airflow.db'}?timeout=60"

    def write_connections(self, connections: dict[str, dict]) -> bool:
        """Write connections.json unless the user edited it since devstack last wrote it.

        Pointing the stack at another Kafka or MongoDB means editing that file; ``make up``
        must not undo it. Returns True when the file was (re)written.
        """
        content = json.dumps(connections, indent=2) + "\n"
        last_written = self.path / ".connections.generated.json"
        current = self.connections_file.read_text() if self.connections_file.exists() else None
        previous = last_written.read_text() if last_written.exists() else None
        if current is not None and current != previous:
            return False
        self.connections_file.write_text(content)
        last_written.write_text(content)
        return True

    def admin_password(self) -> str | None:
        try:
            return json.loads(self.passwords_file.read_text()).get("admin")
        except (FileNotFoundError, ValueError):
            return None


@dataclass
class AirflowStandalone(Service):
    """``airflow standalone`` (scheduler, dag-processor, api-server, triggerer) for one home."""

    home: AirflowHome
    state_dir: Path
    port_setting: str = "AIRFLOW_PORT"
    host: str = "127.0.0.1"

    name = "airflow"
    label = "Airflow"
    start_timeout = 300.0
    # standalone stops its components on SIGINT; the group signal reaches them all.
    stop_signal = signal.SIGINT
    stop_timeout = 40.0
    poll_interval = 1.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.home.api_port}"

    @property
    def address(self) -> str:
        return self.url

    def ports(self) -> list[Port]:
        return [Port(self.home.api_port, "Airflow api-server", self.port_setting)]

    def launch(self) -> None:
        airflow = Path(sys.executable).parent / "airflow"
        self.process.start([str(airflow), "standalone"], env=self.home.env(), cwd=REPO)

    def health(self) -> dict[str, str]:
        """Component -> status from the api-server's health endpoint ({} when it does not answer)."""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=3) as response:
                body = json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return {}
        return {
            name: (value or {}).get("status") or "unknown"
            for name, value in body.items()
            if isinstance(value, dict) or value is None
        }

    def ready(self) -> bool:
        health = self.health()
        wanted = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        return bool(health) and all(health.get(name) == "healthy" for name in wanted)


# The components `airflow standalone` runs, each started on its own here.
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# The api-server's health endpoint names them so.
HEALTH_NAMES = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}


@dataclass
class AirflowServices:
    """Airflow's components as separate processes plus ``workers`` Celery workers, for one home.

    ``airflow standalone`` forces the LocalExecutor, so the CeleryExecutor needs its components
    started one by one. Worker ``n`` runs as Celery node ``worker-<n>@<host>`` with its own pid file
    and log; no worker serves logs over HTTP (they share the home's log folder with the api-server,
    and one port per worker would clash on one machine).
    """

    home: AirflowHome
    state_dir: Path
    workers: int = 2
    port_setting: str = "AIRFLOW_PORT"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.home.api_port}"

    def component(self, name: str) -> ManagedProcess:
        return ManagedProcess(
            f"airflow {name}", self.state_dir / f"airflow-{name}.pid", self.state_dir / "logs" / f"{name}.log"
        )

    def worker(self, number: int) -> ManagedProcess:
        return ManagedProcess(
            f"worker-{number}",
            self.state_dir / f"worker-{number}.pid",
            self.state_dir / "logs" / f"worker-{number}.log",
        )

    @staticmethod
    def worker_name(number: int) -> str:
        return f"worker-{number}@{socket.gethostname()}"

    def worker_numbers(self) -> list[int]:
        """Workers with a pid file (running or crashed), in order."""
        names = (path.name for path in self.state_dir.glob("worker-*.pid"))
        return sorted(int(match[1]) for name in names if (match := re.fullmatch(r"worker-(\d+)\.pid", name)))

    @property
    def processes(self) -> list[ManagedProcess]:
        return [self.component(name) for name in COMPONENTS] + [
            self.worker(n) for n in sorted(set(self.worker_numbers()) | set(range(1, self.workers + 1)))
        ]

    def running(self) -> bool:
        return any(process.running() for process in self.processes)

    def ports(self) -> list[Port]:
        return AirflowStandalone(self.home, self.state_dir, self.port_setting).ports()

    def check_ports(self) -> None:
        AirflowStandalone(self.home, self.state_dir, self.port_setting).check_ports()

    def start(self, timeout: float = 300.0) -> bool:
        """Migrate the database, start what is not running, scale the workers to ``workers``.

        True if anything was started or stopped.
        """
        changed = False
        if not any(self.component(name).running() for name in COMPONENTS):
            self.check_ports()
            self.migrate(timeout)
        airflow = str(Path(sys.executable).parent / "airflow")
        for name in COMPONENTS:
            process = self.component(name)
            if not process.running():
                # The triggerer would serve its logs on 8794, a port other stacks on this machine use.
                argv = [airflow, name, *(["--skip-serve-logs"] if name == "triggerer" else [])]
                process.start(argv, env=self.home.env(), cwd=REPO)
                changed = True
        for number in range(1, self.workers + 1):
            process = self.worker(number)
            if not process.running():
                process.start(self._worker_argv(airflow, number), env=self.home.env(), cwd=REPO)
                changed = True
        for number in self.worker_numbers():
            if number > self.workers:
                changed |= self.worker(number).stop(timeout=60.0)
        self.wait_ready(timeout)
        return changed

    def _worker_argv(self, airflow: str, number: int) -> list[str]:
        return [
            airflow,
            "celery",
            "worker",
            "--celery-hostname",
            self.worker_name(number),
            "--skip-serve-logs",
        ]

    def migrate(self, timeout: float) -> None:
        """``airflow db migrate``: create or upgrade the schema (a no-op when it is current)."""
        log_file = self.state_dir / "logs" / "db-migrate.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        airflow = str(Path(sys.executable).parent / "airflow")
        with open(log_file, "ab") as log:
            result = subprocess.run(
                [airflow, "db", "migrate"],
                env=self.home.env(),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        if result.returncode != 0:
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
            raise StackError(f"airflow db migrate failed; its log is {log_file}:\n{tail}")

    def health(self) -> dict[str, str]:
        return AirflowStandalone(self.home, self.state_dir).health()

    def celery_workers(self) -> set[str]:
        """Celery node names (``worker-1@host``) that answer a ping on the broker now."""
        if self.home.celery is None:
            return set()
        from celery import Celery
        from kombu.exceptions import OperationalError

        app = Celery(broker=self.home.celery.broker_url)
        try:
            replies = app.control.ping(timeout=1.5)
        except (OperationalError, OSError):  # the broker is away: nobody answered
            return set()
        finally:
            app.close()
        return {name for reply in replies for name in reply}

    def ready(self) -> bool:
        health = self.health()
        components_up = bool(health) and all(
            health.get(name) == "healthy" for name in ("metadatabase", *HEALTH_NAMES.values())
        )
        if not components_up:
            return False
        wanted = {self.worker_name(n) for n in range(1, self.workers + 1)}
        return wanted <= self.celery_workers()

    def wait_ready(self, timeout: float = 300.0) -> None:
        what = f"Airflow (CeleryExecutor, workers: {self.workers}) on {self.url}"
        wait_until(what, self.ready, timeout, self.processes[: len(COMPONENTS) + self.workers], interval=1.0)

    def stop(self) -> bool:
        """Stop the workers (a warm shutdown lets running tasks finish, up to 60 s; they still need
        the api-server for that), then the components; each group side by side."""
        with ThreadPoolExecutor(max_workers=max(len(COMPONENTS), len(self.worker_numbers()), 1)) as pool:
            workers = list(pool.map(lambda n: self.worker(n).stop(timeout=60.0), self.worker_numbers()))
            components = list(pool.map(lambda name: self.component(name).stop(timeout=40.0), COMPONENTS))
        return any(workers + components)
