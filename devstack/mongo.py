"""The MongoDB-wire server (SecantusDB from PyPI) with on-disk storage."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from devstack.process import ManagedProcess, StackError, port_is_free, wait_until


def secantusd_command() -> str:
    """The server's launcher, installed into this virtualenv by requirements-dev.txt."""
    beside_python = Path(sys.executable).parent / "secantusd-py"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("secantusd-py")
    if found is None:
        raise StackError(
            "secantusd-py not found: install the dev requirements (make venv) "
            "or point mongo_default at a real MongoDB"
        )
    return found


@dataclass
class MongoWireServer:
    """A SecantusDB server on ``host:port`` storing its data in ``state_dir/mongo-data``."""

    state_dir: Path
    port: int = 27017
    host: str = "127.0.0.1"
    port_setting: str = "MONGO_PORT"
    # Require SCRAM authentication (users are created beforehand, on a start without it).
    auth: bool = False

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess("mongo", self.state_dir / "mongo.pid", self.state_dir / "logs" / "mongo.log")

    def check_ports(self) -> None:
        """Fail, naming the setting that moves it, when our port is taken."""
        if not port_is_free(self.host, self.port):
            raise StackError(
                f"port {self.port} (MongoDB-wire server) on {self.host} is already in use by another "
                f"process; stop it or move ours with {self.port_setting}=<port> "
                f"(e.g. make up {self.port_setting}={self.port + 10000})"
            )

    def start(self, timeout: float = 60.0) -> bool:
        """Start the server unless ours is already running; wait until it answers. True if started."""
        if self.process.running():
            self.wait_ready(timeout)
            return False
        self.check_ports()
        storage = self.state_dir / "mongo-data"
        storage.mkdir(parents=True, exist_ok=True)
        # An explicit, empty config file stops the server from picking up a stray
        # ./secantusd.toml or ~/.secantus/secantusd.toml.
        config = self.state_dir / "secantusd.toml"
        config.touch()
        self.process.start(
            [
                secantusd_command(),
                "--config",
                str(config),
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--storage-path",
                str(storage),
                "--log-level",
                "WARNING",
                *(["--auth"] if self.auth else []),
            ],
            cwd=self.state_dir,
        )
        self.wait_ready(timeout)
        return True

    def ready(self) -> bool:
        """The server answers ``ping`` (which needs no authentication)."""
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        client: MongoClient = MongoClient(self.uri, serverSelectionTimeoutMS=1000, connect=False)
        try:
            client.admin.command("ping")
        except PyMongoError:
            return False
        finally:
            client.close()
        return True

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_until(f"the MongoDB-wire server on {self.uri}", self.ready, timeout, self.process)

    def stop(self) -> bool:
        return self.process.stop(timeout=20.0)
