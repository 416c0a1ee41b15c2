"""Replaying dead letters on the real server: records dead-lettered by a collection validator load
once it is relaxed, leave the dead-letter collection, never overwrite newer content, and load
exactly once when a replay crashes between its write and its delete."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_mongo_etl import replay
from kafka_mongo_etl.drain import DrainSettings
from kafka_mongo_etl.errors import ParamsRefusedError
from kafka_mongo_etl.replay import DeadLetterSelection, replay_dead_letters, run_replay
from kafka_mongo_etl.tasks import ConsumeJob, DeadLetterPolicy, run_consume

NUM_IS_INT = {"$jsonSchema": {"required": ["num"], "properties": {"num": {"bsonType": "int"}}}}


@pytest.fixture
def job(connections, make_job) -> ConsumeJob:
    return make_job(
        drain=DrainSettings(batch_size=50, stall_timeout=10),
        dead_letter_policy=DeadLetterPolicy(max_count=None),
    )


@pytest.fixture
def db(job, mongo_client):
    database = mongo_client[job.mongo_db]
    database.create_collection("testnum", validator=NUM_IS_INT)
    return database


def position(topic: str, offset: int) -> dict[str, Any]:
    """The ``_kafka`` of a document stored from partition 0 of ``topic`` at ``offset``."""
    return {"topic": topic, "partition": 0, "offset": offset, "applied": {f"{topic}:0": offset}}


def send(bootstrap: str, topic: str, records: list[tuple[str, Any]]) -> None:
    """Create ``topic`` (one partition) if needed and send ``(key, value)``: bytes as they are,
    anything else as JSON."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic not in admin.list_topics(timeout=30).topics:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in records:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        producer.produce(topic, key=key.encode(), value=raw)
    assert producer.flush(60) == 0


def run(job: ConsumeJob, number: int) -> dict[str, Any]:
    """Drain what is new on the topic as run ``run-<number>`` of the same group."""
    return run_consume(replace(job, batch=f"test/run-{number}", run_id=f"run-{number}"))


def content(db, _id: str) -> dict[str, Any]:
    return content_of(db.testnum, _id)


def content_of(collection, _id: str) -> dict[str, Any]:
    found = collection.find_one({"_id": _id})
    assert found is not None, _id
    return {name: value for name, value in found.items() if name != "_kafka"}


def test_a_fixed_cause_loads_the_selected_run_and_leaves_the_others(job, db, kafka_broker) -> None:
    send(kafka_broker.bootstrap_servers, job.topic, [("ok-1", {"num": 1}), ("no-num", {"other": 1})])
    send(kafka_broker.bootstrap_servers, job.topic, [("str-num", {"num": "two", "tags": ["a"]})])
    assert run(job, 1)["dead_letters"] == 2
    send(kafka_broker.bootstrap_servers, job.topic, [("later", {"other": 3})])
    assert run(job, 2)["dead_letters"] == 1
    assert {d["_id"]: d["run_id"] for d in db.testnum_dlq.find()} == {
        f"{job.topic}:0:1": "run-1",
        f"{job.topic}:0:2": "run-1",
        f"{job.topic}:0:3": "run-2",
    }
    db.command("collMod", "testnum", validator={})

    # Through the DAG's task, with the form's params and the connection.
    summary = run_replay({"mongo_db": job.mongo_db, "mongo_collection": "testnum", "run_id": "run-1"})

    assert summary == {
        "target": f"{job.mongo_db}.testnum",
        "selected": 2,
        "loaded": 2,
        "stale": 0,
        "still_failing": {},
        "unreplayable": 0,
        "changed": 0,
    }
    assert {d["_id"] for d in db.testnum.find({}, {"_id": 1})} == {"ok-1", "no-num", "str-num"}
    assert content(db, "no-num") == {"_id": "no-num", "other": 1}
    assert content(db, "str-num") == {"_id": "str-num", "num": "two", "tags": ["a"]}
    assert db.testnum.find_one({"_id": "str-num"})["_kafka"] == {
        "topic": job.topic,
        "partition": 0,
        "offset": 2,
        "applied": {f"{job.topic}:0": 2},
    }
    (left,) = db.testnum_dlq.find()
    assert (left["_id"], left["run_id"], left.get("replays")) == (f"{job.topic}:0:3", "run-2", None)


def test_a_record_that_still_fails_stays_with_the_new_reason(job, db, kafka_broker) -> None:
    records = [("no-num", {"other": 1}), ("str-num", {"num": "two"}), ("garbage", b"{not json")]
    send(kafka_broker.bootstrap_servers, job.topic, records)
    assert run(job, 1)["dead_letters"] == 3
    before = {d["_id"]: d for d in db.testnum_dlq.find()}
    # Any type of num is fine now; a record without num is still refused.
    db.command("collMod", "testnum", validator={"$jsonSchema": {"required": ["num"]}})

    summary = replay_dead_letters(db, "testnum", DeadLetterSelection(failed_before=dt.datetime(2999, 1, 1)))

    assert summary.as_dict() == {
        "selected": 3,
        "loaded": 1,
        "stale": 0,
        "still_failing": {"rejected": 1, "not_json": 1},
        "unreplayable": 0,
        "changed": 0,
    }
    assert content(db, "str-num") == {"_id": "str-num", "num": "two"}
    assert db.testnum.count_documents({}) == 1
    letters = {d["key"]: d for d in db.testnum_dlq.find()}
    assert set(letters) == {b"no-num", b"garbage"}
    refused, garbage = letters[b"no-num"], letters[b"garbage"]
    assert (refused["code"], refused["stage"], refused["replays"]) == ("rejected", "write", 1)
    assert "(code 121)" in refused["reason"] and refused["replayed_at"] >= refused["failed_at"]
    assert (garbage["code"], garbage["stage"], garbage["replays"]) == ("not_json", "decode", 1)
    # The record itself and where it failed first are kept as they were.
    assert refused["failed_at"] == before[refused["_id"]]["failed_at"]
    assert refused["value"] == before[refused["_id"]]["value"] == b'{"other": 1}'

    again = replay_dead_letters(db, "testnum", DeadLetterSelection(codes=("rejected",)))
    assert (again.selected, again.still_failing) == (1, {"rejected": 1})
    assert db.testnum_dlq.find_one({"key": b"no-num"})["replays"] == 2


def test_a_replay_never_overwrites_newer_content(job, db, kafka_broker) -> None:
    send(kafka_broker.bootstrap_servers, job.topic, [("k", {"other": "old"})])
    assert run(job, 1)["dead_letters"] == 1
    db.command("collMod", "testnum", validator={})
    send(kafka_broker.bootstrap_servers, job.topic, [("k", {"num": 2, "v": "new"})])
    assert run(job, 2)["loaded"] == 1

    summary = replay_dead_letters(db, "testnum", DeadLetterSelection(ids=(f"{job.topic}:0:0",)))

    assert (summary.selected, summary.loaded, summary.stale) == (1, 1, 1)
    assert content(db, "k") == {"_id": "k", "num": 2, "v": "new"}
    assert db.testnum.find_one({"_id": "k"})["_kafka"] == position(job.topic, 1)
    assert db.testnum_dlq.count_documents({}) == 0


def test_versions_of_one_key_replay_in_offset_order_not_id_order(job, db, kafka_broker) -> None:
    """Dead-letter _ids sort as text ("t:0:10" before "t:0:9"); the latest version must still win."""
    send(kafka_broker.bootstrap_servers, job.topic, [("k", {"other": n}) for n in range(11)])
    assert run(job, 1)["dead_letters"] == 11
    db.command("collMod", "testnum", validator={})

    summary = replay_dead_letters(db, "testnum", DeadLetterSelection(run_id="run-1"))

    assert (summary.selected, summary.loaded, summary.stale) == (11, 11, 0)
    assert content(db, "k") == {"_id": "k", "other": 10}
    assert db.testnum.find_one({"_id": "k"})["_kafka"] == position(job.topic, 10)
    assert db.testnum_dlq.count_documents({}) == 0


def test_routed_dead_letters_replay_into_the_collection_they_were_routed_to(job, db, kafka_broker) -> None:
    """A routing drain keeps every dead letter in <target>_dlq; replayed with the same route_by,
    each record goes to its routed collection (the latest version winning), not to the target."""
    db.create_collection("returns", validator=NUM_IS_INT)
    records = [("r1", {"kind": "returns", "other": n}) for n in range(3)]
    records += [("t1", {"num": 1}), ("r2", {"kind": "returns", "num": 5}), ("t2", {"kind": None, "x": 1})]
    send(kafka_broker.bootstrap_servers, job.topic, records)
    assert run(replace(job, route_by="value.kind"), 1)["dead_letters"] == 4
    assert {d["_id"] for d in db.testnum_dlq.find({}, {"_id": 1})} == {
        f"{job.topic}:0:{n}" for n in (0, 1, 2, 5)
    }
    assert {d["_id"] for d in db.returns.find({}, {"_id": 1})} == {"r2"}
    db.command("collMod", "returns", validator={})
    db.command("collMod", "testnum", validator={})

    summary = run_replay(
        {"mongo_db": job.mongo_db, "mongo_collection": "testnum", "run_id": "run-1", "route_by": "value.kind"}
    )

    assert (summary["selected"], summary["loaded"], summary["still_failing"]) == (4, 4, {})
    assert content_of(db.returns, "r1") == {"_id": "r1", "kind": "returns", "other": 2}
    assert {d["_id"] for d in db.returns.find({}, {"_id": 1})} == {"r1", "r2"}
    assert {d["_id"] for d in db.testnum.find({}, {"_id": 1})} == {"t1", "t2"}
    assert content_of(db.testnum, "t2") == {"_id": "t2", "kind": None, "x": 1}
    assert db.testnum_dlq.count_documents({}) == 0


def test_a_route_by_that_names_no_field_is_refused_before_anything_is_read(job, db) -> None:
    params = {"mongo_db": job.mongo_db, "mongo_collection": "testnum", "run_id": "r", "route_by": "value"}
    with pytest.raises(ParamsRefusedError, match="route_by 'value' names no field"):
        run_replay(params)


def test_a_crash_between_write_and_delete_loads_exactly_once(job, db, kafka_broker, monkeypatch) -> None:
    send(kafka_broker.bootstrap_servers, job.topic, [("a", {"other": 1}), ("b", {"other": 2})])
    assert run(job, 1)["dead_letters"] == 2
    db.command("collMod", "testnum", validator={})
    real_delete = replay._delete
    calls = []

    def crash_once(letters: Any, deletes: list) -> int:
        calls.append(len(deletes))
        if len(calls) == 1:
            raise RuntimeError("the worker died after the write")
        return real_delete(letters, deletes)

    monkeypatch.setattr(replay, "_delete", crash_once)
    selection = DeadLetterSelection(run_id="run-1")
    with pytest.raises(RuntimeError, match="worker died"):
        replay_dead_letters(db, "testnum", selection)
    assert db.testnum.count_documents({}) == 2 and db.testnum_dlq.count_documents({}) == 2

    summary = replay_dead_letters(db, "testnum", selection)

    assert (summary.selected, summary.loaded, summary.stale, summary.changed) == (2, 2, 2, 0)
    assert calls == [2, 2]
    assert [content(db, _id) for _id in ("a", "b")] == [{"_id": "a", "other": 1}, {"_id": "b", "other": 2}]
    assert db.testnum_dlq.count_documents({}) == 0
    assert replay_dead_letters(db, "testnum", selection).selected == 0


def test_a_dead_letter_rewritten_meanwhile_is_kept(job, db, kafka_broker, monkeypatch) -> None:
    send(kafka_broker.bootstrap_servers, job.topic, [("a", {"other": 1})])
    assert run(job, 1)["dead_letters"] == 1
    db.command("collMod", "testnum", validator={})
    real_delete = replay._delete

    def drain_rewrites_it_first(letters: Any, deletes: list) -> int:
        letters.update_many({}, {"$set": {"failed_at": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)}})
        return real_delete(letters, deletes)

    monkeypatch.setattr(replay, "_delete", drain_rewrites_it_first)
    summary = replay_dead_letters(db, "testnum", DeadLetterSelection(run_id="run-1"))
    assert (summary.selected, summary.loaded, summary.changed) == (1, 0, 1)
    assert db.testnum_dlq.count_documents({}) == 1 and content(db, "a") == {"_id": "a", "other": 1}


def test_a_truncated_dead_letter_is_not_replayed(job, db) -> None:
    failed_at = dt.datetime(2026, 12, 6, 10, tzinfo=dt.UTC)
    letter = {
        "_id": "t:0:7",
        "topic": "t",
        "partition": 0,
        "offset": 7,
        "key": b"big",
        "value": b'{"num": 1, "pad": "',
        "value_truncated": True,
        "headers": [],
        "code": "rejected",
        "run_id": "run-1",
        "failed_at": failed_at,
    }
    db.testnum_dlq.insert_one(letter)

    summary = replay_dead_letters(db, "testnum", DeadLetterSelection(failed_after="2026-12-06"))

    assert summary.as_dict()["unreplayable"] == 1 and summary.loaded == 0
    assert db.testnum.count_documents({}) == 0
    kept = db.testnum_dlq.find_one({"_id": "t:0:7"})
    assert "value (cut to its bounds)" in kept["unreplayable"] and kept["code"] == "rejected"
    assert replay_dead_letters(db, "testnum", DeadLetterSelection(failed_before="2026-12-06")).selected == 0


def test_an_empty_selection_is_refused(job, db) -> None:
    with pytest.raises(ValueError, match="give at least one of run_id, codes"):
        replay_dead_letters(db, "testnum", DeadLetterSelection())
    with pytest.raises(ParamsRefusedError, match="no dead letters selected.*Nothing was replayed"):
        run_replay({"mongo_db": job.mongo_db, "mongo_collection": "testnum", "codes": [], "ids": None})
    with pytest.raises(ParamsRefusedError, match="not an ISO 8601"):
        run_replay({"mongo_db": job.mongo_db, "mongo_collection": "testnum", "failed_after": "yesterday"})
    with pytest.raises(ValueError, match="is not before"):
        DeadLetterSelection(failed_after="2026-12-07", failed_before="2026-12-06").query()
