"""A chain of post-processors through the Airflow task's path (``run_consume``) on the session's
broker and MongoDB-wire server: the final content, the dead letters, the offsets, and the
timestamps under the fence across runs and re-reads."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from typing import Any

import pytest

CHAIN = (
    {"type": "block", "fields": ["password", "customer.card"]},
    {"type": "rename", "fields": {"customer.email": "mail"}},
    {"type": "remove_nulls"},
    {"type": "function", "function": f"{__name__}.priced", "kwargs": {"currency": "EUR"}},
    {"type": "kafka_metadata", "fields": ["topic", "timestamp", "headers"]},
    {"type": "insert_timestamp", "field": "created"},
    {"type": "modify_timestamp", "field": "changed"},
)


def priced(value: dict[str, Any], message: Any, currency: str) -> dict[str, Any]:
    """The test's user function: a total in the currency; a record without lines is refused."""
    value["total"] = {"amount": sum(value.pop("lines")), "currency": currency}
    return value


def order(version: int, **extra: Any) -> dict[str, Any]:
    return {
        "version": version,
        "customer": {"name": "Ada", "email": f"ada{version}@example.com", "card": "4111"},
        "password": "hunter2",
        "lines": [version, 10],
        "note": None,
        **extra,
    }


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, dict[str, Any]]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value in records:
        producer.produce(topic, key=key, value=json.dumps(value).encode(), headers=[("source", b"shop")])
    assert producer.flush(60) == 0


@pytest.mark.parametrize("write_mode", ["replace", "update"])
def test_a_chain_shapes_what_run_consume_loads_exactly_once(
    connections, make_job, kafka_broker, mongo_client, committed_offsets, write_mode: str
) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    from kafka_mongo_etl.tasks import DeadLetterPolicy, run_consume

    job = make_job(
        write_mode=write_mode, processors=CHAIN, dead_letter_policy=DeadLetterPolicy(max_count=None)
    )
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap_servers})
    admin.create_topics([NewTopic(job.topic, 1, 1)])[job.topic].result(30)
    first = [
        (b"o1", order(1)),
        (b"o2", order(1)),
        (b"o1", order(2)),  # the latest version of o1 wins
        (b"bad", {"version": 1, "customer": {}}),  # no lines: the user function raises
        # customer.email -> customer.mail would overwrite the mail the record has: a dead letter.
        (b"clash", {"version": 1, "customer": {"email": "y", "mail": "z"}, "lines": []}),
    ]
    _produce(kafka_broker.bootstrap_servers, job.topic, first)

    result = run_consume(job)
    assert (result["records"], result["dead_letters"]) == (5, 2)
    assert committed_offsets(job.topic, job.consumer_group)[0] == 5
    letters = mongo_client[job.mongo_db][job.dead_letter_collection]
    assert {(d["offset"], d["code"]) for d in letters.find()} == {
        (3, "function_failed"),
        (4, "rename_conflict"),
    }
    assert "KeyError: 'lines'" in letters.find_one({"offset": 3})["reason"]
    collection = mongo_client[job.mongo_db][job.mongo_collection]
    stored = {doc["_id"]: doc for doc in collection.find()}
    assert set(stored) == {"o1", "o2"}
    assert stored["o2"]["customer"] == {"name": "Ada", "mail": "ada1@example.com"}
    o1 = stored["o1"]
    created, changed = o1.pop("created"), o1.pop("changed")
    assert isinstance(created, dt.datetime) and isinstance(changed, dt.datetime)
    timestamp = o1["_kafka"].pop("timestamp")
    assert isinstance(timestamp, dt.datetime)
    assert o1 == {
        "_id": "o1",
        "version": 2,
        "customer": {"name": "Ada", "mail": "ada2@example.com"},
        "total": {"amount": 12, "currency": "EUR"},
        "_kafka": {
            "topic": job.topic,
            "headers": [{"key": "source", "value": "shop"}],
            "applied": {f"{job.topic}:0": 2},
        },
        **(
            {"_created_at": o1["_created_at"], "_updated_at": o1["_updated_at"]}
            if write_mode == "update"
            else {}
        ),
    }

    # A later run: o1's new version replaces the content and the modify timestamp, and keeps the
    # insert timestamp the first write set.
    _produce(kafka_broker.bootstrap_servers, job.topic, [(b"o1", order(3))])
    again = run_consume(replace(job, batch="test/run-2", run_id="run-2"))
    assert (again["records"], again["loaded"]) == (1, 1)
    o1 = collection.find_one({"_id": "o1"})
    assert (o1["version"], o1["customer"]["mail"], o1["created"]) == (3, "ada3@example.com", created)
    assert o1["changed"] >= changed and o1["_kafka"]["applied"] == {f"{job.topic}:0": 5}
    assert "partition" not in o1["_kafka"] and "offset" not in o1["_kafka"]

    # A re-read of everything (a new group) is stale under the fence: nothing changes, the
    # timestamps included.
    before = {doc["_id"]: doc for doc in collection.find()}
    reread = run_consume(replace(job, batch="test/run-3", run_id="run-3", group_id=f"{job.topic}.reread"))
    assert (reread["records"], reread["dead_letters"]) == (6, 2)
    assert {doc["_id"]: doc for doc in collection.find()} == before


def priced_or_zero(value: dict[str, Any], message: Any, currency: str) -> dict[str, Any]:
    """The fixed user function: a record without lines costs nothing."""
    value.setdefault("lines", [])
    return priced(value, message, currency)


def test_a_replay_with_the_fixed_function_loads_the_dead_letters_of_the_broken_one(
    connections, make_job, kafka_broker, mongo_client
) -> None:
    """Dead letters replay through the current record path, processors included: a function
    fixed since the drain loads what it refused before."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from kafka_mongo_etl.replay import run_replay
    from kafka_mongo_etl.tasks import DeadLetterPolicy, run_consume

    job = make_job(processors=CHAIN, dead_letter_policy=DeadLetterPolicy(max_count=None))
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap_servers})
    admin.create_topics([NewTopic(job.topic, 1, 1)])[job.topic].result(30)
    _produce(kafka_broker.bootstrap_servers, job.topic, [(b"o1", order(1)), (b"free", {"version": 1})])
    assert run_consume(job)["dead_letters"] == 1

    fixed = [
        {**step, "function": f"{__name__}.priced_or_zero"} if step["type"] == "function" else step
        for step in CHAIN
    ]
    params = {
        "mongo_db": job.mongo_db,
        "mongo_collection": job.mongo_collection,
        "codes": ["function_failed"],
    }
    summary = run_replay({**params, "processors": fixed})
    assert (summary["selected"], summary["loaded"]) == (1, 1)
    collection = mongo_client[job.mongo_db][job.mongo_collection]
    free = collection.find_one({"_id": "free"})
    assert free["total"] == {"amount": 0, "currency": "EUR"} and free["_kafka"]["applied"] == {
        f"{job.topic}:0": 1
    }
    assert set(free) == {"_id", "version", "total", "created", "changed", "_kafka"}
    assert mongo_client[job.mongo_db][job.dead_letter_collection].count_documents({}) == 0
    assert collection.count_documents({}) == 2
