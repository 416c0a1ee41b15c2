"""The benchmark's own Kafka broker and MongoDB-wire server, on free ports, state in a temp dir.

Never the ``make up`` stack: a benchmark that wrote to 9092/27017 would measure (and disturb)
whatever else runs there.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devstack.airflow import AirflowHome, local_connections
from devstack.kafka import KafkaBroker
from devstack.mongo import MongoWireServer
from devstack.process import free_port

log = logging.getLogger(__name__)

# Every write a full run makes (about 1.5 million documents at REPS=5) stays in the server's
# oplog: past the server's default cap (100,000) it prunes every 1,000 writes, and every later
# write takes about 1.5 times as long.
OPLOG_ENTRIES = 20_000_000


@dataclass(frozen=True)
class BenchServices:
    """Where the running services are, and the Airflow home every bench process uses."""

    state_dir: Path
    kafka: KafkaBroker
    mongo: MongoWireServer
    airflow_home: AirflowHome

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka.bootstrap_servers

    @property
    def mongo_uri(self) -> str:
        return self.mongo.uri


@contextmanager
def bench_services() -> Iterator[BenchServices]:
    """Start a broker and a Mongo-wire server on free ports under a temp dir; stop them at the end."""
    state_dir = Path(tempfile.mkdtemp(prefix="kafka-mongo-bench-"))
    kafka = KafkaBroker(state_dir / "kafka", port=free_port(), controller_port=free_port(), heap="1g")
    mongo = MongoWireServer(state_dir / "mongo", port=free_port(), oplog_entries=OPLOG_ENTRIES)
    home = AirflowHome(state_dir / "airflow", api_port=free_port(), dags_folder=state_dir / "dags")
    home.dags_folder.mkdir(parents=True)
    try:
        log.info(
            "Starting the bench broker on %s and Mongo-wire server on %s", kafka.bootstrap_servers, mongo.uri
        )
        kafka.start()
        mongo.start()
        # This process and its subprocesses use the bench's home, never settings from the shell;
        # Airflow's log servers default to ports (8793, 8794) that a running `make up` holds.
        for name in [name for name in os.environ if name.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))]:
            del os.environ[name]
        ports = {"worker_log_server_port": str(free_port()), "trigger_log_server_port": str(free_port())}
        home.write(
            local_connections(kafka.bootstrap_servers, mongo.host, mongo.port), extra={"logging": ports}
        )
        os.environ["AIRFLOW_HOME"] = str(home.path)
        yield BenchServices(state_dir, kafka, mongo, home)
    finally:
        mongo.stop()
        kafka.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
