"""A broker or MongoDB that goes away mid-drain: a clear failure in bounded time, nothing
committed beyond what was written, and the retry loads the rest — exactly once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from devstack.kafka import KafkaBroker
from devstack.mongo import MongoWireServer
from devstack.process import free_port
from kafka_mongo_etl.drain import DrainSettings
from kafka_mongo_etl.errors import ConnectionProblem
from kafka_mongo_etl.ids import record_key
from kafka_mongo_etl.mongo_sink import MongoSink
from kafka_mongo_etl.tasks import ConsumeJob, run_consume, run_produce


@pytest.fixture
def own_broker(tmp_path) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path / "kafka", port=free_port(), controller_port=free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def own_mongo(tmp_path) -> Iterator[MongoWireServer]:
    server = MongoWireServer(tmp_path / "mongo", port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def use(monkeypatch, broker: KafkaBroker, mongo: MongoWireServer) -> None:
    from devstack.airflow import local_connections

    for conn_id, conn in local_connections(broker.bootstrap_servers, mongo.host, mongo.port).items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


@pytest.fixture
def job(make_job) -> ConsumeJob:
    # A try whose MongoDB went away cannot release its lease: the retry waits for it to expire.
    return make_job(drain=DrainSettings(batch_size=100, stall_timeout=10), lease_ttl=5)


def ids(mongo: MongoWireServer, db: str) -> list:
    from pymongo import MongoClient

    client: MongoClient = MongoClient(mongo.uri)
    try:
        return [d["_id"] for d in client[db].testnum.find({}, {"_id": 1})]
    finally:
        client.close()


def test_mongodb_down_mid_drain(
    monkeypatch, kafka_broker, own_mongo, topic, mongo_db, job, committed_offsets
) -> None:
    use(monkeypatch, kafka_broker, own_mongo)
    run_produce(kafka_conn_id="kafka_default", topic=topic, partitions=1, batch=job.batch, start=0, count=500)

    class StopsTheServerOnThirdWrite(MongoSink):
        sizes: list[int] = []

        def write(self, documents):
            type(self).sizes.append(len(documents))
            if len(type(self).sizes) == 3:
                own_mongo.stop()
            return super().write(documents)

    monkeypatch.setattr("kafka_mongo_etl.tasks.MongoSink", StopsTheServerOnThirdWrite)
    began = time.monotonic()
    with pytest.raises(ConnectionProblem, match=rf"'mongo_default' \(127.0.0.1:{own_mongo.port}\)"):
        run_consume(job)
    assert time.monotonic() - began < 60
    # The first batch is committed; the second was written, and its commit (which runs while
    # the third write begins) may have found the server gone. A batch can hold fewer than
    # batch_size records when consume() times out on a busy machine, so their own sizes.
    first, second = StopsTheServerOnThirdWrite.sizes[:2]
    committed = sum(max(o, 0) for o in committed_offsets(topic, job.consumer_group).values())
    assert committed in (first, first + second)

    own_mongo.start()
    monkeypatch.setattr("kafka_mongo_etl.tasks.MongoSink", MongoSink)
    retry = run_consume(job)
    assert retry["records"] == 500 - committed
    loaded = ids(own_mongo, mongo_db)
    assert len(loaded) == 500 and set(loaded) == {record_key(job.batch, n) for n in range(500)}


def test_broker_restarted_mid_drain(monkeypatch, own_broker, mongo_server, topic, mongo_db, job) -> None:
    use(monkeypatch, own_broker, mongo_server)
    run_produce(
        kafka_conn_id="kafka_default", topic=topic, partitions=3, batch=job.batch, start=0, count=3000
    )

    class StopsTheBrokerOnSecondWrite(MongoSink):
        writes = 0

        def write(self, documents):
            type(self).writes += 1
            if type(self).writes == 2:
                own_broker.stop()
            return super().write(documents)

    monkeypatch.setattr("kafka_mongo_etl.tasks.MongoSink", StopsTheBrokerOnSecondWrite)
    began = time.monotonic()
    # The batch written while the broker went down cannot be committed: the task fails.
    with pytest.raises(ConnectionProblem, match=r"'kafka_default' \(127.0.0.1:\d+\): no broker answered"):
        run_consume(replace(job, drain=replace(job.drain, batch_size=500)))
    elapsed = time.monotonic() - began
    assert elapsed < 120, f"the drain took {elapsed:.0f}s with the broker down"

    own_broker.start()
    monkeypatch.setattr("kafka_mongo_etl.tasks.MongoSink", MongoSink)
    run_consume(job)
    loaded = ids(mongo_server, mongo_db)
    assert len(loaded) == 3000 and set(loaded) == {record_key(job.batch, n) for n in range(3000)}


def test_mongodb_credentials_wrong_or_right(
    monkeypatch, kafka_broker, tmp_path, topic, job, committed_offsets
) -> None:
    from pymongo import MongoClient

    server = MongoWireServer(tmp_path / "mongo-auth", port=free_port())
    server.start()
    try:
        client: MongoClient = MongoClient(server.uri)
        client.admin.command("createUser", "etl", pwd="right-horse-battery", roles=["root"])
        client.close()
        server.stop()
        server.auth = True
        server.start()

        use(monkeypatch, kafka_broker, server)
        run_produce(
            kafka_conn_id="kafka_default", topic=topic, partitions=1, batch=job.batch, start=0, count=20
        )

        def connect_as(password: str) -> None:
            conn = {"conn_type": "mongo", "host": server.host, "port": server.port, "login": "etl"}
            conn |= {"password": password, "extra": {"authSource": "admin"}}
            monkeypatch.setenv("AIRFLOW_CONN_MONGO_DEFAULT", json.dumps(conn))

        connect_as("wrong-staple")
        began = time.monotonic()
        with pytest.raises(ConnectionProblem, match="'mongo_default'.*authentication failed") as err:
            run_consume(job)
        assert time.monotonic() - began < 30
        assert "wrong-staple" not in str(err.value) and "wrong-staple" not in repr(err.value.__cause__)
        assert sum(max(o, 0) for o in committed_offsets(topic, job.consumer_group).values()) == 0

        connect_as("right-horse-battery")
        assert run_consume(job)["loaded"] == 20
    finally:
        server.stop()


def test_produce_fails_naming_how_many_records_were_not_delivered(monkeypatch, own_broker, topic) -> None:
    from kafka_mongo_etl.clients import EtlProducerHook
    from kafka_mongo_etl.errors import DeliveryError
    from kafka_mongo_etl.produce import ensure_topic, produce_batch

    conn = {"conn_type": "kafka", "extra": {"bootstrap.servers": own_broker.bootstrap_servers}}
    conn["extra"]["message.timeout.ms"] = 3000  # a connection may tune delivery timeouts
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_DEFAULT", json.dumps(conn))
    from kafka_mongo_etl.clients import admin_client

    ensure_topic(admin_client("kafka_default"), topic, 1)
    producer = EtlProducerHook("kafka_default").get_producer()
    produce_batch(producer, topic, "test/ok", 0, 10)

    class StopsTheBrokerOnFirstSend:
        """The producer, but the broker goes away after the metadata, with the first record."""

        def __init__(self) -> None:
            self.stopped = False

        def __getattr__(self, name: str):
            return getattr(producer, name)

        def produce(self, *args, **kwargs) -> None:
            if not self.stopped:
                own_broker.stop()
                self.stopped = True
            producer.produce(*args, **kwargs)

    with pytest.raises(
        DeliveryError, match=rf"50 of 50 records were not delivered to topic '{topic}'"
    ) as err:
        produce_batch(StopsTheBrokerOnFirstSend(), topic, "test/lost", 0, 50, flush_timeout=30)
    assert err.value.failed == 50
