"""The MongoDB-wire server (SecantusDB from PyPI) with on-disk storage."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from devstack.process import StackError
from devstack.service import Port, Service


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
class MongoWireServer(Service):
    """A SecantusDB server on ``host:port`` storing its data in ``state_dir/mongo-data``."""

    state_dir: Path
    port: int = 27017
    host: str = "127.0.0.1"
    port_setting: str = "MONGO_PORT"
    # Require SCRAM authentication (users are created beforehand, on a start without it).
    auth: bool = False
    # Oplog entries kept (the server's default, 100,000, when None). Past its cap the server
    # prunes the oldest entries every 1,000 writes, and every write after that is slower (the
    # benchmark's inserts: ~1.05 s per 20,000 before, 1.5-1.8 s after): the benchmark keeps
    # its whole run's oplog, so no contender pays for having run after another.
    oplog_entries: int | None = None

    name = "mongo"
    label = "MongoDB-wire server"
    stop_timeout = 20.0

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return self.uri

    def ports(self) -> list[Port]:
        return [Port(self.port, "MongoDB-wire server", self.port_setting)]

    def launch(self) -> None:
        storage = self.state_dir / "mongo-data"
        storage.mkdir(parents=True, exist_ok=True)
        # An explicit, empty config file stops the server from picking up a stray
        # ./secantusd.toml or ~/.secantus/secantusd.toml.
        config = self.state_dir / "secantusd.toml"
        if self.oplog_entries is None:
            config.touch()
        else:
            # Time retention (an hour by default) would prune a long run just the same.
            config.write_text(f"[oplog]\nmax_entries = {self.oplog_entries}\nretention_seconds = 604800\n")
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
