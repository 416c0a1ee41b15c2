"""Session-wide test environment: a throw-away AIRFLOW_HOME, a real Kafka broker, a real
MongoDB-wire server and (for the tests that run Airflow's services) a real PostgreSQL, on free
ports (so a running `make up` stack is never touched).

Every test gets its own topic, consumer group and database through the fixtures below.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.airflow import AirflowHome
from devstack.kafka import KafkaBroker
from devstack.mongo import MongoWireServer
from devstack.postgres import PostgresServer
from devstack.process import free_port

REPO = Path(__file__).resolve().parent.parent

# Airflow reads AIRFLOW_HOME when it is first imported, so it must be set before any test module
# imports airflow. Settings from the caller's shell must not leak into the tests.
for _name in [name for name in os.environ if name.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))]:
    del os.environ[_name]
_TEST_HOME = AirflowHome(Path(tempfile.mkdtemp(prefix="kafka-to-mongo-airflow-")), api_port=free_port())
_TEST_HOME.write(connections={})
os.environ["AIRFLOW_HOME"] = str(_TEST_HOME.path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def airflow_home() -> AirflowHome:
    return _TEST_HOME


@pytest.fixture(scope="session")
def airflow_db(airflow_home: AirflowHome) -> AirflowHome:
    """The test home's SQLite metadata database, migrated once per session.

    It stays on SQLite: its tests run Airflow in this one process (``dag.test()``, an api-server),
    where SQLite's lock contention cannot arise; the tests of concurrent Airflow processes (the
    Celery stack, the backfill CLI) use ``postgres_server``. Moving it would mean starting PostgreSQL
    before any test module imports Airflow, for every test run, for about 2 s more per session.
    """
    from airflow.utils.db import initdb

    initdb()
    return airflow_home


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), port=free_port(), controller_port=free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the session; each Airflow home takes a database of its own.

    Not under pytest's tmp_path, which is private (0700): run as root, the server runs as 'nobody',
    and in a directory 'nobody' can enter it needs no capability to reach its data.
    """
    state = Path(tempfile.mkdtemp(prefix="kafka-to-mongo-postgres-"))
    state.chmod(0o755)
    server = PostgresServer(state, port=free_port(), durable=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoWireServer]:
    # The session's whole oplog is kept: past the server's default cap (100,000 entries) it
    # prunes every 1,000 writes, and every write after that takes about 1.5 times as long.
    server = MongoWireServer(tmp_path_factory.mktemp("mongo"), port=free_port(), oplog_entries=10_000_000)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _unique(prefix: str, request: pytest.FixtureRequest) -> str:
    name = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40]
    return f"{prefix}_{name}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def topic(request: pytest.FixtureRequest) -> str:
    return _unique("t", request)


@pytest.fixture
def group_id(request: pytest.FixtureRequest) -> str:
    return _unique("g", request)


@pytest.fixture
def mongo_db(request: pytest.FixtureRequest, mongo_server: MongoWireServer) -> Iterator[str]:
    from pymongo import MongoClient

    name = _unique("db", request)[:60]
    yield name
    client: MongoClient = MongoClient(mongo_server.uri)
    try:
        client.drop_database(name)
    finally:
        client.close()


@pytest.fixture
def mongo_client(mongo_server: MongoWireServer) -> Iterator:
    from pymongo import MongoClient

    client: MongoClient = MongoClient(mongo_server.uri, serverSelectionTimeoutMS=5000)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def connections(
    monkeypatch: pytest.MonkeyPatch, kafka_broker: KafkaBroker, mongo_server: MongoWireServer
) -> dict[str, dict]:
    """kafka_default and mongo_default pointing at the session's broker and server."""
    from devstack.airflow import local_connections

    conns = local_connections(kafka_broker.bootstrap_servers, mongo_server.host, mongo_server.port)
    for conn_id, conn in conns.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return conns
