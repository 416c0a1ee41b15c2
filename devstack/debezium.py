"""Debezium's PostgreSQL connector on Kafka Connect standalone, resolved from Maven Central.

The jars come from devstack/debezium/pom.xml (Debezium 3.6.1.Final with the Connect 4.3.0 it was
built against), resolved like the broker's. One Connect worker (``ConnectDebezium``) keeps its
source offsets in a file under its state directory, so a restart resumes where it stopped without
a new snapshot; connectors are registered over its REST API (``register``), each capturing the
tables of one PostgreSQL database into ``<topic_prefix>.<schema>.<table>`` topics.

The PostgreSQL server needs ``wal_level=logical`` (``devstack.postgres.LOGICAL_DECODING``); the
connector uses the server's built-in ``pgoutput`` plugin and creates its own replication slot and
publication. A slot outlives the connector (that is how a restart resumes): ``drop_slot`` removes
it when a capture is over, or the server keeps WAL for it for ever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.kafka import REPO, maven_classpath, require_java_and_maven
from devstack.postgres import PostgresServer
from devstack.process import StackError, wait_until
from devstack.service import Port, Service, call_api

POM = REPO / "devstack" / "debezium" / "pom.xml"
CLASSPATH_FILE = REPO / ".cache" / "debezium.classpath"
CONNECTOR_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"


def connect_classpath() -> str:
    """Debezium's connector and the Connect runtime, resolved by Maven (cached)."""
    return maven_classpath(POM, CLASSPATH_FILE, "Debezium's PostgreSQL connector and Kafka Connect")


@dataclass(frozen=True)
class PostgresCapture:
    """One Debezium PostgreSQL connector: which tables of which database, and the events' shape.

    ``schemas_enable`` is the JSON converter's setting for keys and values: True wraps each in
    ``{"schema", "payload"}``, which is what lets a reader restore ``numeric`` columns (Debezium's
    default ``decimal.handling.mode=precise`` sends them as the unscaled integer's bytes, the
    scale only in the schema) and tell dates and times from plain integers.
    """

    name: str
    server: PostgresServer
    database: str
    tables: tuple[str, ...]
    topic_prefix: str
    schemas_enable: bool = True
    # More connector settings, e.g. {"decimal.handling.mode": "string"}.
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def slot(self) -> str:
        # Slot and publication names: lower-case letters, digits and underscores only.
        return "".join(c if c.isalnum() else "_" for c in self.name.lower())

    def topic(self, table: str) -> str:
        """The topic a ``schema.table`` of ``tables`` is captured into."""
        return f"{self.topic_prefix}.{table}"

    def config(self) -> dict[str, str]:
        schemas = "true" if self.schemas_enable else "false"
        return {
            "connector.class": CONNECTOR_CLASS,
            "tasks.max": "1",
            "database.hostname": self.server.host,
            "database.port": str(self.server.port),
            "database.user": self.server.role,
            "database.password": self.server.password(),
            "database.dbname": self.database,
            "topic.prefix": self.topic_prefix,
            "table.include.list": ",".join(self.tables),
            "plugin.name": "pgoutput",
            "slot.name": self.slot,
            "publication.name": self.slot,
            "publication.autocreate.mode": "filtered",
            # The stack's broker does not create topics on demand: Connect creates them.
            "topic.creation.default.replication.factor": "1",
            "topic.creation.default.partitions": "1",
            "key.converter": JSON_CONVERTER,
            "key.converter.schemas.enable": schemas,
            "value.converter": JSON_CONVERTER,
            "value.converter.schemas.enable": schemas,
            **self.extra,
        }

    def drop_slot(self) -> None:
        """Drop the connector's replication slot and publication (stop the connector first)."""
        import psycopg

        with psycopg.connect(self.server.dsn(self.database), autocommit=True) as connection:
            connection.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                (self.slot,),
            )
            connection.execute(f'DROP PUBLICATION IF EXISTS "{self.slot}"')


@dataclass
class ConnectDebezium(Service):
    """A Kafka Connect standalone worker with Debezium's PostgreSQL connector on its classpath.

    State (offsets file, worker properties, log) lives under ``state_dir``; the REST API listens on
    ``host:rest_port``. Stop it with ``stop``; its replication slots stay (see ``drop_slot``).
    """

    state_dir: Path
    bootstrap_servers: str
    rest_port: int = 8083
    host: str = "127.0.0.1"
    heap: str = "384m"

    name = "connect"
    label = "Kafka Connect"
    start_timeout = 180.0

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def address(self) -> str:
        return self.rest_url

    def worker_properties(self) -> str:
        props = {
            "bootstrap.servers": self.bootstrap_servers,
            "listeners": f"http://{self.host}:{self.rest_port}",
            "offset.storage.file.filename": str(self.state_dir / "offsets.dat"),
            # Source offsets reach the file within a second: a stop loses little to re-send.
            "offset.flush.interval.ms": "1000",
            # Connectors set their own converters; these are the worker's defaults.
            "key.converter": JSON_CONVERTER,
            "value.converter": JSON_CONVERTER,
        }
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def ports(self) -> list[Port]:
        return [Port(self.rest_port, "Kafka Connect REST", "rest_port")]

    def launch(self) -> None:
        require_java_and_maven()
        classpath = connect_classpath()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        properties = self.state_dir / "connect-standalone.properties"
        properties.write_text(self.worker_properties())
        self.process.start(
            [
                "java",
                f"-Xmx{self.heap}",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
                "-Dorg.slf4j.simpleLogger.showDateTime=true",
                "-cp",
                classpath,
                "org.apache.kafka.connect.cli.ConnectStandalone",
                str(properties),
            ]
        )

    def ready(self) -> bool:
        try:
            self._request("GET", "/connectors")
        except (OSError, StackError):
            return False
        return True

    def register(self, capture: PostgresCapture, timeout: float = 120.0) -> None:
        """Create (or reconfigure) the connector and wait until its task runs."""
        self._request("PUT", f"/connectors/{capture.name}/config", capture.config())
        wait_until(
            f"Debezium connector {capture.name!r}",
            lambda: self._task_running(capture.name),
            timeout,
            self.process,
        )

    def _task_running(self, name: str) -> bool:
        try:
            status = self._request("GET", f"/connectors/{name}/status")
        except StackError:
            return False  # not created yet: the PUT is handled asynchronously
        tasks = status.get("tasks") or []
        failed = [task for task in tasks if task.get("state") == "FAILED"]
        if status.get("connector", {}).get("state") == "FAILED" or failed:
            trace = (failed[0] if failed else status["connector"]).get("trace", "")
            raise StackError(
                f"Debezium connector {name!r} failed; the worker's log is {self.process.log_file}:\n"
                f"{trace[:3000]}"
            )
        return bool(tasks) and all(task.get("state") == "RUNNING" for task in tasks)

    def delete(self, name: str) -> None:
        """Remove a connector (its offsets stay in the file, its slot in PostgreSQL)."""
        self._request("DELETE", f"/connectors/{name}")

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return call_api("Kafka Connect", self.rest_url, method, path, body)
