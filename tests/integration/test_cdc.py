"""A PostgreSQL table mirrored into MongoDB through real Debezium change events: the PostgreSQL
connector on Kafka Connect standalone (devstack.debezium) captures a table of a logical-decoding
PostgreSQL server into the session's broker, and the drain loads the topic with write_mode
``cdc``. After inserts, updates, deletes, primary-key changes, a drain that crashes after a
written but uncommitted batch, and a full re-read, the collection equals the table row for row
and type for type; a truncate is a dead letter."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import Decimal128
from confluent_kafka import Consumer, TopicPartition
from pymongo.collection import Collection

from devstack.debezium import ConnectDebezium, PostgresCapture
from devstack.postgres import LOGICAL_DECODING, PostgresServer
from devstack.process import free_port, wait_until
from kafka_mongo_etl.drain import DrainSettings, DrainSummary, drain_to_watermark
from kafka_mongo_etl.ids import id_function
from kafka_mongo_etl.mongo_sink import MongoDeadLetterSink, MongoSink
from kafka_mongo_etl.records import json_document
from kafka_mongo_etl.write_models import WriteResult, record_builder

TABLE = """CREATE TABLE items (
    id int PRIMARY KEY,
    name text NOT NULL,
    price numeric(10,2),
    updated_at timestamptz,
    active boolean,
    note text,
    born date
)"""
COLUMNS = ["id", "name", "price", "updated_at", "active", "note", "born"]
# The rows: with fenced writes (branch fence-writes) a delete leaves a marker document with
# `_deleted_at` until a TTL index purges it; markers are not rows. Without them, this is all.
LIVE = {"_deleted_at": {"$exists": False}}


@pytest.fixture(scope="module")
def logical_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server with wal_level=logical, for this module only (the session's has not).

    Not under pytest's private tmp_path: run as root, the server runs as 'nobody'."""
    state = Path(tempfile.mkdtemp(prefix="kafka-to-mongo-cdc-postgres-"))
    state.chmod(0o755)
    server = PostgresServer(state, port=free_port(), durable=False, extra_settings=LOGICAL_DECODING)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def connect(kafka_broker, tmp_path_factory) -> Iterator[ConnectDebezium]:
    worker = ConnectDebezium(
        tmp_path_factory.mktemp("connect"), kafka_broker.bootstrap_servers, rest_port=free_port()
    )
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


class Table:
    """The captured table, counting the change events its statements make (what Debezium sends
    for each row: one per insert or update, delete + tombstone, and delete + tombstone + create
    for a primary-key change)."""

    def __init__(self, server: PostgresServer, database: str) -> None:
        self.server, self.database = server, database
        self.events = 0

    def run(self, statement: str, events_per_row: int = 1) -> int:
        import psycopg

        with psycopg.connect(self.server.dsn(self.database), autocommit=True) as connection:
            rowcount = connection.execute(statement).rowcount
        self.events += max(rowcount, 0) * events_per_row
        return rowcount

    def rows(self) -> list[dict[str, Any]]:
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.server.dsn(self.database), row_factory=dict_row) as connection:
            return connection.execute(f"SELECT {', '.join(COLUMNS)} FROM items ORDER BY id").fetchall()


def as_document(row: dict[str, Any]) -> dict[str, Any]:
    """The document the cdc mode promises for a row (docs/cdc.md's type table), with each
    value's type: numeric -> Decimal128 (its scale kept), timestamptz -> Debezium's exact UTC
    ISO string (microseconds), date -> a date at midnight UTC, the rest as they are."""
    document = {"_id": row["id"]}
    for column in COLUMNS:
        value = row[column]
        if value is not None:
            if column == "price":
                value = Decimal128(value)
            elif column == "updated_at":
                value = value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            elif column == "born":
                value = dt.datetime.combine(value, dt.time())
        document[column] = value
    return document


def typed(document: dict[str, Any]) -> list[tuple[str, str, Any]]:
    return [(name, type(value).__name__, value) for name, value in document.items()]


def mirror(collection: Collection) -> list[list[tuple[str, str, Any]]]:
    return [
        typed({k: v for k, v in doc.items() if k not in ("_cdc", "_kafka")})
        for doc in collection.find(LIVE).sort("_id", 1)
    ]


def expected(table: Table) -> list[list[tuple[str, str, Any]]]:
    return [typed(as_document(row)) for row in table.rows()]


class CrashAfterWrites:
    """A sink that writes ``n`` batches, then writes the next one and raises before the drain
    can commit it: the retry re-reads a batch that MongoDB already holds."""

    def __init__(self, sink: MongoSink, n: int) -> None:
        self.sink, self.n = sink, n

    def write(self, documents) -> WriteResult:
        result = self.sink.write(documents)
        self.n -= 1
        if self.n < 0:
            raise RuntimeError("crash after a written, uncommitted batch")
        return result


def wait_for_events(bootstrap: str, topic: str, count: int) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "cdc-watch"})
    try:

        def arrived() -> bool:
            if topic not in consumer.list_topics(timeout=10).topics:
                return False
            return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1] >= count

        wait_until(f"{count} change events in {topic}", arrived, timeout=180)
        high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
        assert high == count, f"Debezium sent {high} events, the statements make {count}"
    finally:
        consumer.close()


def drain(bootstrap: str, topic: str, group: str, sink, collection: Collection) -> DrainSummary:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
        }
    )
    id_for = id_function("key")
    try:
        return drain_to_watermark(
            consumer,
            topic,
            group,
            sink,
            record_builder("cdc", json_document(id_for), id_for, "key"),
            DrainSettings(batch_size=10, stall_timeout=30),
            dead_letters=MongoDeadLetterSink(collection.database[f"{collection.name}_dlq"], "run", group),
        )
    finally:
        consumer.close()


def test_a_table_is_mirrored_row_for_row_and_type_for_type_through_debezium(
    logical_postgres, connect, kafka_broker, mongo_client, mongo_db, group_id
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    database = f"shop_{group_id[-8:]}"
    logical_postgres.create_database(database)
    table = Table(logical_postgres, database)
    table.run(TABLE, 0)
    table.run(
        "INSERT INTO items SELECT n, 'item ' || n, n * 10.25, "
        "'2026-12-06 10:00:00.123456+00'::timestamptz + n * interval '1 hour 1.000001 second', "
        "n % 2 = 0, CASE WHEN n % 3 = 0 THEN NULL ELSE 'note ' || n END, "
        "date '2026-01-01' + n FROM generate_series(1, 40) AS n"
    )
    capture = PostgresCapture(
        f"cdc_{group_id[-8:]}",
        logical_postgres,
        database,
        ("public.items",),
        f"cdc{group_id[-8:]}",
        # Let truncates through (Debezium skips them by default): they must become dead letters.
        extra={"skipped.operations": "none"},
    )
    topic = capture.topic("public.items")
    connect.register(capture)
    try:
        # The snapshot first: once its 40 reads are in, the slot exists and every later statement
        # is streamed (a change made before the slot would be folded into the snapshot instead).
        wait_for_events(bootstrap, topic, table.events)  # the 40 rows inserted above, as reads
        table.run(
            "INSERT INTO items SELECT n, 'new ' || n, -n - 0.01, now(), true, NULL, NULL "
            "FROM generate_series(41, 60) AS n"
        )
        table.run("UPDATE items SET price = price + 0.5, name = name || ' v2' WHERE id <= 10")
        table.run("UPDATE items SET note = NULL, active = NULL WHERE id BETWEEN 11 AND 15")
        table.run("DELETE FROM items WHERE id BETWEEN 16 AND 20", events_per_row=2)
        table.run("UPDATE items SET id = id + 1000 WHERE id BETWEEN 21 AND 25", events_per_row=3)
        table.run("UPDATE items SET price = 99999999.99 WHERE id = 1")
        table.run("UPDATE items SET price = 0.01 WHERE id = 1")
        table.run("INSERT INTO items VALUES (16, 'back', 1, NULL, false, 'again', NULL)")
        wait_for_events(bootstrap, topic, table.events)

        collection = mongo_client[mongo_db]["items"]
        sink = MongoSink(collection, "cdc")
        with pytest.raises(RuntimeError, match="crash after a written"):
            drain(bootstrap, topic, group_id, CrashAfterWrites(MongoSink(collection, "cdc"), 3), collection)
        # The retry reads from the last commit, which is below the batch written last.
        summary = drain(bootstrap, topic, group_id, sink, collection)
        assert summary.dead_letters == 0 and summary.records < table.events
        assert len(table.rows()) == 56  # 40 + 20 inserted, 5 deleted, 1 inserted again
        assert mirror(collection) == expected(table)

        table.run("UPDATE items SET active = NOT active, note = 'round 2' WHERE id % 3 = 0")
        table.run("DELETE FROM items WHERE id = 41", events_per_row=2)
        table.run("UPDATE items SET id = 2021 WHERE id = 1021", events_per_row=3)
        wait_for_events(bootstrap, topic, table.events)
        summary = drain(bootstrap, topic, group_id, sink, collection)
        assert summary.dead_letters == 0 and summary.deleted >= 2
        assert mirror(collection) == expected(table)

        # Every event again, from the start (a new group): the collection does not change.
        again = drain(bootstrap, topic, f"{group_id}.reread", sink, collection)
        assert again.records == table.events and again.dead_letters == 0
        assert mirror(collection) == expected(table)
        assert collection.database[f"{collection.name}_dlq"].count_documents({}) == 0
        documents = {doc["_id"]: doc for doc in collection.find()}
        assert documents[2021]["_cdc"]["op"] == "c" and documents[43]["_cdc"]["op"] == "c"
        assert documents[31]["_cdc"]["op"] == "r" and documents[30]["_cdc"]["op"] == "u"

        # A truncate is not applied: a dead letter that names the table, the documents stay.
        before = mirror(collection)
        table.run("TRUNCATE items", 0)
        wait_for_events(bootstrap, topic, table.events + 1)
        summary = drain(bootstrap, topic, group_id, sink, collection)
        assert (summary.records, summary.dead_letters, summary.dead_letter_reasons) == (1, 1, {"truncate": 1})
        letter = collection.database[f"{collection.name}_dlq"].find_one()
        assert "public.items" in letter["reason"] and letter["offset"] == table.events
        assert mirror(collection) == before and table.rows() == []
    finally:
        connect.delete(capture.name)
        wait_until("the connector to let go of its slot", lambda: _slot_free(capture), timeout=60)
        capture.drop_slot()


def _slot_free(capture: PostgresCapture) -> bool:
    import psycopg

    with psycopg.connect(capture.server.dsn(capture.database)) as connection:
        row = connection.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (capture.slot,)
        ).fetchone()
    return row is None or not row[0]


def test_the_drain_task_loads_captured_change_events_with_write_mode_cdc(
    connections, make_job, kafka_broker, mongo_client, committed_offsets
) -> None:
    """The Airflow task's path (``run_consume``: options, lease, audit) with ``write_mode='cdc'``,
    on the real events of tests/unit/data re-sent with their keys and headers."""
    import json

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from kafka_mongo_etl.errors import ParamsRefusedError
    from kafka_mongo_etl.tasks import DeadLetterPolicy, run_consume

    captured = json.loads(
        (Path(__file__).parents[1] / "unit" / "data" / "debezium_postgres_events.json").read_text()
    )["topics"]
    job = make_job(write_mode="cdc", dead_letter_policy=DeadLetterPolicy(max_count=None))
    bootstrap = kafka_broker.bootstrap_servers
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: its futures need the handle
    admin.create_topics([NewTopic(job.topic, 1, 1)])[job.topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap})
    records = captured["cap_json_schema:public.items"] + captured["cap_json_schema:public.pairs"]
    for record in records:
        producer.produce(
            job.topic,
            key=None if record["key"] is None else record["key"].encode(),
            value=None if record["value"] is None else record["value"].encode(),
            headers=[(k, v.encode()) for k, v in record["headers"]],
        )
    assert producer.flush(60) == 0

    result = run_consume(job)
    # items: one row left (id 10); pairs: two rows; the truncate of pairs is the one dead letter.
    assert (result["records"], result["dead_letters"], result["dead_letter_reasons"]) == (
        12,
        1,
        {"truncate": 1},
    )
    collection = mongo_client[job.mongo_db][job.mongo_collection]
    assert {repr(doc["_id"]) for doc in collection.find(LIVE)} == {
        "10",
        repr({"region": "eu", "n": 1}),
        repr({"region": "us", "n": 2}),
    }
    item = collection.find_one({"_id": 10})
    assert item["price"] == Decimal128("99999999.99") and item["born"] == dt.datetime(2026, 1, 2)
    assert collection.find_one({"_id": {"region": "eu", "n": 1}})["qty"] == 11
    assert committed_offsets(job.topic, job.consumer_group)[0] == 12

    with pytest.raises(ParamsRefusedError, match="needs id_strategy 'key'"):
        run_consume(make_job(write_mode="cdc", id_strategy="coordinates"))
