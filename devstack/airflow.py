"""Airflow 3.3 standalone for the local stack: its home, its config and its connections.

Everything an Airflow process needs is in ``$AIRFLOW_HOME/airflow.cfg``: the DAG and plugin
folders, the SQLite database, and a local-filesystem secrets backend that serves
``kafka_default`` and ``mongo_default`` from ``$AIRFLOW_HOME/connections.json``. So every
process and every CLI command that uses this home (``bin/airflow ...``) sees the same
connections, not only the processes ``make up`` started.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devstack.process import ManagedProcess, StackError, port_is_free, wait_until

REPO = Path(__file__).resolve().parent.parent


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
        sections: dict[str, dict[str, str]] = {
            "core": {
                "dags_folder": str(self.dags_folder),
                "plugins_folder": str(self.plugins_folder),
                "load_examples": "False",
                "executor": "LocalExecutor",
                "auth_manager": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "simple_auth_manager_users": "admin:admin",
                "fernet_key": keys["fernet_key"],
                "execution_api_server_url": f"http://127.0.0.1:{self.api_port}/execution/",
                "parallelism": "8",
            },
            # The CLI writes while the scheduler holds SQLite's lock: wait for it, do not fail at once.
            "database": {"sql_alchemy_conn": f"sqlite:///{self.path / 'airflow.db'}?timeout=60"},
            "api": {
                "host": "127.0.0.1",
                "port": str(self.api_port),
                "base_url": f"http://127.0.0.1:{self.api_port}",
                "secret_key": keys["api_secret_key"],
                "workers": "1",
            },
            "api_auth": {"jwt_secret": keys["jwt_secret"]},
            "secrets": {
                "backend": "airflow.secrets.local_filesystem.LocalFilesystemBackend",
                "backend_kwargs": json.dumps({"connections_file_path": str(self.connections_file)}),
            },
            "dag_processor": {"refresh_interval": "30"},
            "scheduler": {"min_file_process_interval": "30"},
            "logging": {"base_log_folder": str(self.path / "logs")},
        }
        for section, values in (extra or {}).items():
            sections.setdefault(section, {}).update(values)
        lines = [
            "# Generated by devstack (make up) for the local development stack. Edits are overwritten;",
            "# change devstack/airflow.py instead. Secrets here are random, per machine, dev-only.",
        ]
        for section, values in sections.items():
            lines.append(f"\n[{section}]")
            lines.extend(f"{key} = {value}" for key, value in values.items())
        self.config_file.write_text("\n".join(lines) + "\n")
        self.config_file.chmod(0o600)
        return self.write_connections(connections)

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
class AirflowStandalone:
    """``airflow standalone`` (scheduler, dag-processor, api-server, triggerer) for one home."""

    home: AirflowHome
    state_dir: Path
    port_setting: str = "AIRFLOW_PORT"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.home.api_port}"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(
            "airflow", self.state_dir / "airflow.pid", self.state_dir / "logs" / "airflow.log"
        )

    def check_ports(self) -> None:
        """Fail, naming the setting that moves it, when the api-server's port is taken."""
        if not port_is_free("127.0.0.1", self.home.api_port):
            raise StackError(
                f"port {self.home.api_port} (Airflow api-server) is already in use by another process; "
                f"stop it or move ours with {self.port_setting}=<port> "
                f"(e.g. make up {self.port_setting}={self.home.api_port + 10000})"
            )

    def start(self, timeout: float = 300.0) -> bool:
        if self.process.running():
            self.wait_ready(timeout)
            return False
        self.check_ports()
        airflow = Path(sys.executable).parent / "airflow"
        self.process.start([str(airflow), "standalone"], env=self.home.env(), cwd=REPO)
        self.wait_ready(timeout)
        return True

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

    def wait_ready(self, timeout: float = 300.0) -> None:
        wait_until(f"Airflow on {self.url}", self.ready, timeout, self.process, interval=1.0)

    def stop(self) -> bool:
        # standalone stops its components on SIGINT; the group signal reaches them all.
        return self.process.stop(timeout=40.0, first_signal=signal.SIGINT)
