"""``make cdc``: a PostgreSQL table mirrored into MongoDB through Debezium, shown in one step.

table -> Debezium's PostgreSQL connector (Kafka Connect standalone) -> Kafka topic -> the drain
(write_mode ``cdc``) -> MongoDB collection. It starts a PostgreSQL with ``wal_level=logical`` and
a Connect worker of its own, uses the ``make up`` stack's broker and MongoDB-wire server when they
run (else starts its own), makes changes to a demo table, drains the topic and prints the table
and the collection side by side. It stops everything it started; the topic and the collection
``cdc_demo.<topic>`` stay on the stack's services. Run it as ``make cdc`` (or with
``PYTHONPATH=plugins``: the ETL package is imported as Airflow imports it, from ``plugins/``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devstack.cli import LocalStack
from devstack.debezium import ConnectDebezium, PostgresCapture
from devstack.kafka import KafkaBroker
from devstack.mongo import MongoWireServer
from devstack.postgres import LOGICAL_DECODING, PostgresServer
from devstack.process import StackError, free_port, wait_until

TABLE = """CREATE TABLE items (
    id int PRIMARY KEY, name text NOT NULL, price numeric(10,2), updated_at timestamptz,
    in_stock boolean, note text)"""
BEFORE = [
    # Rows that exist before the connector starts: its snapshot reads them (op r).
    "INSERT INTO items VALUES (1, 'kettle', 24.90, '2026-12-01 09:00:00.123456+00', true, NULL)",
    "INSERT INTO items VALUES (2, 'teapot', 31.50, '2026-12-01 09:05:00+00', true, 'blue')",
    "INSERT INTO items VALUES (3, 'mug', 7.25, '2026-12-01 09:10:00+00', false, NULL)",
]
CHANGES = [
    # (statement, change events it makes: delete + tombstone, delete + tombstone + create for a key change)
    ("INSERT INTO items VALUES (4, 'cup', 4.00, now(), true, 'new')", 1),
    ("UPDATE items SET price = 22.00, note = 'on sale' WHERE id = 1", 1),
    ("DELETE FROM items WHERE id = 3", 2),
    ("UPDATE items SET id = 20 WHERE id = 2", 3),
]
COLUMNS = ["id", "name", "price", "updated_at", "in_stock", "note"]


@contextlib.contextmanager
def service(server: Any, name: str) -> Iterator[Any]:
    """Start ``server`` and stop it afterwards (only if this demo started it)."""
    print(f"  starting {name} ...", flush=True)
    started = server.start()
    try:
        yield server
    finally:
        if started:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.cdc_demo", description=__doc__)
    parser.parse_args(argv)
    stack = LocalStack.from_env()
    scratch = Path(tempfile.mkdtemp(prefix="kafka-to-mongo-cdc-demo-"))
    scratch.chmod(0o755)  # run as root, PostgreSQL runs as 'nobody' and must enter it
    broker = stack.kafka
    if not broker.process.running():
        broker = KafkaBroker(scratch / "kafka", port=free_port(), controller_port=free_port())
    mongo = stack.mongo
    if not mongo.process.running():
        mongo = MongoWireServer(scratch / "mongo", port=free_port())
    postgres = PostgresServer(
        scratch / "postgres", port=free_port(), durable=False, extra_settings=LOGICAL_DECODING
    )
    connect = ConnectDebezium(scratch / "connect", broker.bootstrap_servers, rest_port=free_port())
    try:
        with (
            service(broker, f"Kafka on {broker.bootstrap_servers}"),
            service(mongo, f"the MongoDB-wire server on {mongo.uri}"),
            service(postgres, "PostgreSQL (wal_level=logical)"),
            service(connect, "Kafka Connect with Debezium's PostgreSQL connector"),
        ):
            demo(broker, mongo, postgres, connect)
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def demo(
    broker: KafkaBroker, mongo: MongoWireServer, postgres: PostgresServer, connect: ConnectDebezium
) -> None:
    import psycopg
    from pymongo import MongoClient

    def run(statement: str) -> None:
        print(f"  SQL> {statement}")
        with psycopg.connect(postgres.dsn("shop"), autocommit=True) as connection:
            connection.execute(statement)

    postgres.create_database("shop")
    run(TABLE)
    for statement in BEFORE:
        run(statement)
    prefix = f"cdcdemo{int(time.time())}"
    capture = PostgresCapture("cdc_demo", postgres, "shop", ("public.items",), prefix)
    topic = capture.topic("public.items")
    print(f"\nDebezium captures public.items into the topic {topic} (schemas.enable=true)")
    connect.register(capture)
    client: MongoClient = MongoClient(mongo.uri, serverSelectionTimeoutMS=10_000)
    try:
        collection = client["cdc_demo"][topic.replace(".", "_")]
        collection.drop()
        events = len(BEFORE)
        show(postgres, broker, topic, collection, events, "the snapshot")
        for statement, count in CHANGES:
            run(statement)
            events += count
        show(postgres, broker, topic, collection, events, "the changes")
    finally:
        client.close()
    connect.delete(capture.name)


def show(
    postgres: PostgresServer, broker: KafkaBroker, topic: str, collection: Any, events: int, what: str
) -> None:
    """Wait for ``events`` change events, drain them, print the table beside the collection."""
    import psycopg

    wait_for(broker, topic, events)
    summary = drain(broker, topic, collection)
    print(
        f"\nAfter {what}: drained {summary.records} change events into {collection.full_name} "
        f"({summary.loaded} documents written or deleted, {summary.deleted} of them deleted; "
        f"{summary.skipped} events superseded by a later one of their key in the batch; "
        f"{summary.dead_letters} dead letters)\n"
    )
    with psycopg.connect(postgres.dsn("shop")) as connection:
        rows = connection.execute(f"SELECT {', '.join(COLUMNS)} FROM items ORDER BY id").fetchall()
    # Fenced writes (branch fence-writes) leave a delete's marker (`_deleted_at`) until a TTL purges it.
    documents = list(collection.find({"_deleted_at": {"$exists": False}}).sort("_id", 1))
    side_by_side(rows, documents)
    if what == "the changes" and documents:
        print("\nOne document in full:")
        print(json.dumps(documents[0], default=lambda v: f"{type(v).__name__}({v})", indent=2))


def wait_for(broker: KafkaBroker, topic: str, count: int) -> None:
    from confluent_kafka import Consumer

    from kafka_mongo_etl import offsets

    consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": "cdc-demo-watch"})
    try:

        def arrived() -> bool:
            # 0 while Debezium has not created the topic (a consumer's metadata request never does).
            return offsets.records_on(consumer, topic, timeout=10) >= count

        wait_until(f"{count} change events in {topic}", arrived, timeout=120)
    finally:
        consumer.close()


def drain(broker: KafkaBroker, topic: str, collection: Any) -> Any:
    """The library's drain, as the DAG's task runs it, with write_mode cdc."""
    from confluent_kafka import Consumer

    from kafka_mongo_etl.drain import drain_to_watermark
    from kafka_mongo_etl.ids import id_function
    from kafka_mongo_etl.mongo_sink import MongoDeadLetterSink, MongoSink
    from kafka_mongo_etl.records import json_document
    from kafka_mongo_etl.write_models import record_builder

    group = f"{topic}.demo"
    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap_servers, "group.id": group, "enable.auto.commit": False}
    )
    id_for = id_function("key")
    try:
        return drain_to_watermark(
            consumer,
            topic,
            group,
            MongoSink(collection, "cdc"),
            record_builder("cdc", json_document(id_for), id_for, "key"),
            dead_letters=MongoDeadLetterSink(collection.database[f"{collection.name}_dlq"], "demo", group),
        )
    finally:
        consumer.close()


def side_by_side(rows: list[tuple], documents: list[dict[str, Any]]) -> None:
    """The table's rows and the collection's documents, one line per primary key."""
    left = [" | ".join(COLUMNS)] + [" | ".join(_cell(v) for v in row) for row in rows]
    right = ["_id | " + " | ".join(COLUMNS) + " | _cdc.op"] + [
        " | ".join([_cell(doc["_id"]), *(_cell(doc.get(c)) for c in COLUMNS), doc["_cdc"]["op"]])
        for doc in documents
    ]
    width = max(len(line) for line in left)
    print(f"{'PostgreSQL shop.public.items':<{width}}    MongoDB (type of each value in the docs)")
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        print(f"{a:<{width}}    {b}")


def _cell(value: Any) -> str:
    return "NULL" if value is None else f"{type(value).__name__}:{value}"


if __name__ == "__main__":
    sys.exit(main())
