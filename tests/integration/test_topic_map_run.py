"""A two-topic run of the ``kafka_to_mongo`` DAG (``dag.test``) against the real broker and
Mongo-wire server: the topic map drains each topic into its own collection, with its own
options, group, leases and audit, exactly once — several versions per key, the latest wins."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from kafka_mongo_etl.ids import default_group_id, record_key

DAGS = Path(__file__).resolve().parents[2] / "dags"
CLOCK_FIELDS = ("_created_at", "_updated_at")

pytestmark = pytest.mark.airflow


def documents(collection) -> dict[str, dict[str, Any]]:
    """``{_id: document}`` without the write's clock (kept as whether the field is there)."""
    found = {}
    for document in collection.find():
        for name in CLOCK_FIELDS:
            if name in document:
                document[name] = True
        found[document["_id"]] = document
    return found


def content(document: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in document.items() if name not in ("_id", "_kafka")}


def test_a_two_topic_run_loads_two_collections_exactly_once(
    airflow_db, connections, send_keyed, topic, mongo_db, mongo_client, committed_offsets
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    orders, returns = topic, f"{topic}-returns"
    # Three versions of each key, each key on its own partition (key order in a partition is kept).
    send_keyed(
        orders,
        [
            (n % 2, f"o{n}", {"v": v, **({"first": True} if v == 0 else {})})
            for v in range(3)
            for n in range(6)
        ],
    )
    send_keyed(
        returns,
        [(n % 2, f"r{n}", {"v": v, f"set_by_{v}": True}) for v in range(3) for n in range(4)],
    )

    dag = DagBag(dag_folder=str(DAGS)).dags["kafka_to_mongo"]
    conf = {
        "topic": orders,  # produce adds its numbered records to the orders topic
        "count": 20,
        "partitions": 2,
        "mongo_db": mongo_db,
        "topics": {
            orders: f"{mongo_db}.orders",
            returns: {
                "collection": f"{mongo_db}.returns",
                "write_mode": "update",
                "parallelism": "per partition",
            },
        },
    }
    first = dag.test(run_conf=conf, logical_date=dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
    assert first.state == "success"

    database = mongo_client[mongo_db]
    batch = f"kafka_to_mongo/{first.run_id}"
    numbered = {record_key(batch, n): {"num": n, "batch": batch} for n in range(20)}
    stored = documents(database["orders"])
    # replace: the latest version whole (the first version's field is gone).
    assert {_id: content(doc) for _id, doc in stored.items()} == {
        **numbered,
        **{f"o{n}": {"v": 2} for n in range(6)},
    }
    assert {doc["_kafka"]["topic"] for doc in stored.values()} == {orders}
    # update: the latest version's fields set on what the earlier ones set.
    returned = documents(database["returns"])
    every_version = {"v": 2, "set_by_0": True, "set_by_1": True, "set_by_2": True}
    clock = dict.fromkeys(CLOCK_FIELDS, True)
    assert {_id: content(doc) for _id, doc in returned.items()} == {
        f"r{n}": {**every_version, **clock} for n in range(4)
    }
    assert {doc["_kafka"]["topic"] for doc in returned.values()} == {returns}
    # One audit document per drain: orders in one task, returns one per partition.
    audit = {d["_id"]: d for d in database["etl_runs"].find()}
    assert set(audit) == {f"{batch}/{orders}", f"{batch}/{returns}:0", f"{batch}/{returns}:1"}
    assert audit[f"{batch}/{orders}"]["target"] == f"{mongo_db}.orders"
    assert {audit[f"{batch}/{returns}:{p}"]["target"] for p in (0, 1)} == {f"{mongo_db}.returns"}
    assert audit[f"{batch}/{orders}"]["records"] == 18 + 20
    assert sum(audit[f"{batch}/{returns}:{p}"]["records"] for p in (0, 1)) == 12
    # Each topic committed under its own target's group, everything it read.
    assert sum(committed_offsets(orders, default_group_id(mongo_db, "orders"), 2).values()) == 38
    assert committed_offsets(returns, default_group_id(mongo_db, "returns"), 2) == {0: 6, 1: 6}

    # A second run reads only what came since: new versions win, nothing loads twice.
    send_keyed(orders, [(0, "o0", {"v": 3})])
    send_keyed(returns, [(1, "r1", {"v": 3, "set_by_3": True})])
    second = dag.test(
        run_conf={**conf, "start": 20, "count": 5}, logical_date=dt.datetime(2026, 5, 1, 1, tzinfo=dt.UTC)
    )
    assert second.state == "success"
    second_batch = f"kafka_to_mongo/{second.run_id}"
    stored = documents(database["orders"])
    assert {_id: content(doc) for _id, doc in stored.items()} == {
        **numbered,
        **{record_key(second_batch, n): {"num": n, "batch": second_batch} for n in range(20, 25)},
        **{f"o{n}": {"v": 3 if n == 0 else 2} for n in range(6)},
    }
    returned = documents(database["returns"])
    assert {_id: content(doc) for _id, doc in returned.items()} == {
        **{f"r{n}": {**every_version, **clock} for n in (0, 2, 3)},
        "r1": {**every_version, "v": 3, "set_by_3": True, **clock},
    }
    audit = {d["_id"]: d for d in database["etl_runs"].find({"dag_run_id": second.run_id})}
    assert audit[f"{second_batch}/{orders}"]["records"] == 6
    assert sum(audit[f"{second_batch}/{returns}:{p}"]["records"] for p in (0, 1)) == 1
    assert sum(committed_offsets(orders, default_group_id(mongo_db, "orders"), 2).values()) == 44
    assert committed_offsets(returns, default_group_id(mongo_db, "returns"), 2) == {0: 6, 1: 7}
