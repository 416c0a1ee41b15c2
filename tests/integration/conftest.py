"""Fixtures shared by the integration tests of the ETL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest


@pytest.fixture
def make_job(topic: str, mongo_db: str) -> Callable[..., Any]:
    """A ``ConsumeJob`` for this test's topic and database into ``testnum``; keywords override."""
    from kafka_mongo_etl.drain import DrainSettings
    from kafka_mongo_etl.tasks import ConsumeJob

    base = ConsumeJob(
        kafka_conn_id="kafka_default",
        mongo_conn_id="mongo_default",
        topic=topic,
        mongo_db=mongo_db,
        mongo_collection="testnum",
        batch="test/run-1",
        run_id="run-1",
        drain=DrainSettings(batch_size=1000, stall_timeout=10),
    )
    return lambda **changes: replace(base, **changes)


@pytest.fixture
def committed_offsets(kafka_broker) -> Callable[..., dict[int, int]]:
    """``(topic, group, partitions=1) -> {partition: offset}`` the group has committed on the
    session broker (negative where it has committed nothing). Asks again while the group
    coordinator is still loading, as the drain does (``offsets.committed_offsets``)."""
    from confluent_kafka import Consumer, TopicPartition

    from kafka_mongo_etl.offsets import committed_offsets as read_committed

    def read(topic: str, group: str, partitions: int = 1) -> dict[int, int]:
        consumer = Consumer({"bootstrap.servers": kafka_broker.bootstrap_servers, "group.id": group})
        try:
            wanted = [TopicPartition(topic, p) for p in range(partitions)]
            found = read_committed(consumer, wanted, timeout=20)
        finally:
            consumer.close()
        return {tp.partition: tp.offset for tp in found}

    return read


@pytest.fixture
def send_keyed(kafka_broker) -> Callable[[str, list[tuple[int, str, dict[str, Any]]]], None]:
    """``(topic, [(partition, key, value), ...])``: sends each value as JSON to its partition, in
    order, on the session broker, creating ``topic`` with 2 partitions first if it is new."""
    import json

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = kafka_broker.bootstrap_servers

    def send(topic: str, records: list[tuple[int, str, dict[str, Any]]]) -> None:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        if topic not in admin.list_topics(timeout=30).topics:
            admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        for partition, key, value in records:
            producer.produce(topic, key=key.encode(), value=json.dumps(value).encode(), partition=partition)
        assert producer.flush(30) == 0

    return send


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Confluent-compatible Schema Registry (Apicurio, devstack.registry) for the session,
    started only for the tests that ask for it; built by Maven on first use (cached in .cache/)."""
    from devstack.process import free_port
    from devstack.registry import SchemaRegistry

    registry = SchemaRegistry(tmp_path_factory.mktemp("registry"), port=free_port())
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def registry_client(schema_registry, monkeypatch) -> Any:
    """A client of the session's registry; the connection ``schema_registry_default`` points at it
    (host, port and the API's path in ``schema``, as Airflow parses http://host:port/apis/ccompat/v7)."""
    import json

    from confluent_kafka.schema_registry import SchemaRegistryClient

    connection = {
        "conn_type": "http",
        "host": schema_registry.host,
        "port": schema_registry.port,
        "schema": "apis/ccompat/v7",
    }
    monkeypatch.setenv("AIRFLOW_CONN_SCHEMA_REGISTRY_DEFAULT", json.dumps(connection))
    return SchemaRegistryClient({"url": schema_registry.ccompat_url})


@pytest.fixture
def send_bytes(kafka_broker) -> Callable[[str, list[tuple[bytes | None, bytes | None]]], None]:
    """``(topic, [(key, value), ...])``: sends the bytes as they are, in order, on the session
    broker (an idempotent producer), creating ``topic`` with one partition first if it is new."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = kafka_broker.bootstrap_servers

    def send(topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        if topic not in admin.list_topics(timeout=30).topics:
            admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        for key, value in records:
            producer.produce(topic, key=key, value=value)
        assert producer.flush(30) == 0

    return send
