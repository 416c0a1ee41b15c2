"""Write errors on the real server: errors about the document become dead letters.

A collection validator and a second unique index refuse documents in every write mode; a
re-read of records already stored is never taken for such a refusal (SecantusDB reports a
re-read ``{_id: a, email: x}`` as a duplicate on the ``email`` index). A transient write error —
throttling, interruptions, lock timeouts, stale routing, not primary — and a write concern the
server could not satisfy fail the batch: nothing is committed and the retry loads it (a code we
do not know is taken for the document's: see test_poison_batches.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError
from pymongo.write_concern import WriteConcern

from kafka_mongo_etl.clients import EtlConsumerHook
from kafka_mongo_etl.drain import DrainSettings, drain_to_watermark
from kafka_mongo_etl.ids import id_function
from kafka_mongo_etl.mongo_sink import MongoDeadLetterSink, MongoSink
from kafka_mongo_etl.records import json_document
from kafka_mongo_etl.tasks import ConsumeJob, DeadLetterPolicy, run_consume
from kafka_mongo_etl.write_models import (
    DOCUMENT_ERRORS,
    TRANSIENT_ERRORS,
    WRITE_MODES,
    WriteFailedError,
    write_model,
)


@pytest.fixture
def job(connections, make_job) -> ConsumeJob:
    return make_job(
        drain=DrainSettings(batch_size=50, stall_timeout=10),
        dead_letter_policy=DeadLetterPolicy(max_count=None),
    )


def send(bootstrap: str, topic: str, records: list[tuple[str, Any]], partitions: int = 1) -> None:
    """Create ``topic`` if needed and send ``(key, value)`` records, values as JSON."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic not in admin.list_topics(timeout=30).topics:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(
            30
        )
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in records:
        producer.produce(topic, key=key.encode(), value=json.dumps(value).encode())
    assert producer.flush(60) == 0


def ids_in(collection: Collection) -> set:
    return {doc["_id"] for doc in collection.find({}, {"_id": 1})}


def reread(job: ConsumeJob, run: int = 2) -> ConsumeJob:
    """The same drain from the topic's start: what a retry after a crash before any commit reads."""
    return replace(
        job, group_id=f"{job.consumer_group}.reread{run}", batch=f"test/run-{run}", run_id=f"run-{run}"
    )


@pytest.mark.parametrize("mode", WRITE_MODES)
def test_a_validator_refuses_documents_in_every_mode(
    mode, job, kafka_broker, mongo_client, committed_offsets
) -> None:
    db = mongo_client[job.mongo_db]
    db.create_collection(
        "testnum",
        validator={"$jsonSchema": {"required": ["num"], "properties": {"num": {"bsonType": "int"}}}},
    )
    records = [
        ("ok-1", {"num": 1}),
        ("no-num", {"other": 1}),
        ("ok-2", {"num": 2}),
        ("str-num", {"num": "two"}),
    ]
    send(kafka_broker.bootstrap_servers, job.topic, records)
    moded = replace(job, write_mode=mode)

    result = run_consume(moded)
    assert (result["records"], result["loaded"], result["dead_letters"]) == (4, 2, 2)
    assert ids_in(db.testnum) == {"ok-1", "ok-2"}
    letters = list(db.testnum_dlq.find())
    assert {d["key"] for d in letters} == {b"no-num", b"str-num"}
    assert all(d["stage"] == "write" and "(code 121)" in d["reason"] for d in letters)
    assert committed_offsets(job.topic, job.consumer_group)[0] == 4

    # A re-read writes the stored documents again and refuses the same two, under the same ids.
    again = run_consume(reread(moded))
    assert (again["loaded"], again["dead_letters"]) == (2, 2)
    assert ids_in(db.testnum) == {"ok-1", "ok-2"} and db.testnum_dlq.count_documents({}) == 2


@pytest.mark.parametrize("mode", WRITE_MODES)
def test_a_second_unique_index_refuses_only_the_colliding_record_in_every_mode(
    mode, job, kafka_broker, mongo_client, committed_offsets
) -> None:
    db = mongo_client[job.mongo_db]
    db.testnum.create_index("email", unique=True)
    records = [
        ("a", {"email": "x@example.org"}),
        ("b", {"email": "y@example.org"}),
        ("c", {"email": "x@example.org"}),
    ]
    send(kafka_broker.bootstrap_servers, job.topic, records)
    moded = replace(job, write_mode=mode)

    result = run_consume(moded)
    assert (result["loaded"], result["dead_letters"]) == (2, 1)
    assert ids_in(db.testnum) == {"a", "b"}
    (letter,) = db.testnum_dlq.find()
    assert letter["key"] == b"c" and "(code 11000)" in letter["reason"] and "email" in letter["reason"]
    assert committed_offsets(job.topic, job.consumer_group)[0] == 3

    # a and b collide with themselves on the email index when read again: still loaded, not refused.
    again = run_consume(reread(moded))
    assert (again["loaded"], again["dead_letters"]) == (2, 1)
    assert ids_in(db.testnum) == {"a", "b"} and db.testnum_dlq.count_documents({}) == 1
    assert {d["_id"]: d["email"] for d in db.testnum.find()} == {"a": "x@example.org", "b": "y@example.org"}


@pytest.fixture
def without_key_pattern(monkeypatch, job):
    """The target's write errors as older servers and DocumentDB send them: no keyPattern, no keyValue."""
    original = Collection.bulk_write

    def bulk_write(self: Collection, requests, *args, **kwargs):
        try:
            return original(self, requests, *args, **kwargs)
        except BulkWriteError as err:
            if self.name == "testnum" and self.database.name == job.mongo_db:
                for error in err.details.get("writeErrors", []):
                    error.pop("keyPattern", None)
                    error.pop("keyValue", None)
            raise

    monkeypatch.setattr(Collection, "bulk_write", bulk_write)


@pytest.mark.parametrize("mode", WRITE_MODES)
def test_a_duplicate_key_without_key_pattern_is_not_taken_for_the_id(
    mode, job, kafka_broker, mongo_client, without_key_pattern
) -> None:
    db = mongo_client[job.mongo_db]
    db.testnum.create_index("email", unique=True)
    bootstrap = kafka_broker.bootstrap_servers
    send(bootstrap, job.topic, [("a", {"email": "x@example.org", "v": 1})])
    moded = replace(job, write_mode=mode)
    assert run_consume(moded)["loaded"] == 1

    # a again (its _id exists), c new but with a's email (another index), b new.
    send(bootstrap, job.topic, [("a", {"email": "x@example.org", "v": 2}), ("c", {"email": "x@example.org"})])
    send(bootstrap, job.topic, [("b", {"email": "y@example.org"})])
    result = run_consume(replace(moded, batch="test/run-2", run_id="run-2"))
    assert (result["records"], result["loaded"], result["dead_letters"]) == (3, 2, 1)
    assert ids_in(db.testnum) == {"a", "b"}
    assert db.testnum_dlq.find_one()["key"] == b"c"
    assert db.testnum.find_one({"_id": "a"})["v"] == (1 if mode == "insert" else 2)


def raising_on_first_write(monkeypatch, mongo_db: str, code: int, errmsg: str) -> list[int]:
    """The first bulk write to ``mongo_db.testnum`` is applied except its last request, which
    the server "refuses" with ``code``: a BulkWriteError shaped like the server's own."""
    original = Collection.bulk_write
    calls: list[int] = []

    def bulk_write(self: Collection, requests, *args, **kwargs):
        if self.name != "testnum" or self.database.name != mongo_db or calls:
            return original(self, requests, *args, **kwargs)
        requests = list(requests)
        calls.append(len(requests))
        applied = original(self, requests[:-1], *args, **kwargs).bulk_api_result
        error = {"index": len(requests) - 1, "code": code, "errmsg": errmsg, "op": {}}
        raise BulkWriteError({**applied, "writeErrors": [error]})

    monkeypatch.setattr(Collection, "bulk_write", bulk_write)
    return calls


NOT_ABOUT_THE_DOCUMENT = [
    (16500, "Request rate is large"),
    (11601, "operation was interrupted"),
    (46, "LockBusy"),
    (24, "Unable to acquire lock"),
    (13388, "StaleConfig"),
    (10107, "not primary"),
    # A code nobody has seen yet is taken for the document's: test_poison_batches.py.
]


@pytest.mark.parametrize("mode", WRITE_MODES)
@pytest.mark.parametrize(("code", "errmsg"), NOT_ABOUT_THE_DOCUMENT)
def test_write_errors_that_are_not_about_the_document_fail_the_batch(
    mode, code, errmsg, mongo_client, mongo_db, monkeypatch
) -> None:
    from confluent_kafka import Message

    collection = mongo_client[mongo_db]["testnum"]
    to_document = json_document(id_function("key"))
    documents = [
        to_document(Message(topic="t", partition=0, offset=n, key=f"k{n}".encode(), value=b'{"num": 1}'))
        for n in range(5)
    ]
    raising_on_first_write(monkeypatch, mongo_db, code, errmsg)
    with pytest.raises(WriteFailedError, match=rf"1 of 5 documents.*code {code} x1.*{errmsg}.*retry"):
        write_model(mode).write(collection, documents)
    assert code in TRANSIENT_ERRORS and code not in DOCUMENT_ERRORS


def test_a_throttled_batch_is_not_committed_and_the_retry_loads_it(
    job, kafka_broker, mongo_client, monkeypatch, committed_offsets
) -> None:
    send(kafka_broker.bootstrap_servers, job.topic, [(f"k{n}", {"num": n}) for n in range(30)])
    calls = raising_on_first_write(monkeypatch, job.mongo_db, 16500, "Request rate is large")
    with pytest.raises(WriteFailedError, match="code 16500"):
        run_consume(job)
    db = mongo_client[job.mongo_db]
    # The first batch was applied but for one document, and nothing was committed.
    assert len(calls) == 1 and db.testnum.count_documents({}) == calls[0] - 1
    assert committed_offsets(job.topic, job.consumer_group)[0] < 0
    assert db.testnum_dlq.count_documents({}) == 0
    assert db.etl_runs.find_one({"_id": job.batch})["state"] == "failed"

    retry = run_consume(job)  # the same run's retry
    assert (retry["records"], retry["loaded"], retry["dead_letters"]) == (30, 30, 0)
    assert ids_in(db.testnum) == {f"k{n}" for n in range(30)}
    assert committed_offsets(job.topic, job.consumer_group)[0] == 30


@pytest.mark.parametrize("mode", WRITE_MODES)
def test_an_unsatisfied_write_concern_fails_the_batch_and_never_dead_letters(
    mode, job, kafka_broker, mongo_client, committed_offsets
) -> None:
    send(kafka_broker.bootstrap_servers, job.topic, [(f"k{n}", {"num": n}) for n in range(10)])
    db = mongo_client[job.mongo_db]
    # SecantusDB is a one-member replica set: w=2 is applied, then reported unsatisfiable (100).
    two_members = db.testnum.with_options(write_concern=WriteConcern(w=2, wtimeout=2000))
    consumer = EtlConsumerHook(job.topic, job.consumer_group).get_conn
    try:
        with pytest.raises(WriteFailedError, match=r"could not confirm the write concern.*code 100"):
            drain_to_watermark(
                consumer,
                job.topic,
                job.consumer_group,
                MongoSink(two_members, mode),
                json_document(id_function("key")),
                DrainSettings(batch_size=50),
                dead_letters=MongoDeadLetterSink(db.testnum_dlq, "run-1", job.consumer_group),
            )
    finally:
        consumer.close()
    assert committed_offsets(job.topic, job.consumer_group)[0] < 0
    assert db.testnum_dlq.count_documents({}) == 0

    retry = run_consume(replace(job, write_mode=mode))
    assert (retry["loaded"], retry["dead_letters"]) == (10, 0)
    assert ids_in(db.testnum) == {f"k{n}" for n in range(10)}


def test_an_unacknowledged_write_concern_is_refused(mongo_client, mongo_db) -> None:
    unacknowledged = mongo_client[mongo_db]["testnum"].with_options(write_concern=WriteConcern(w=0))
    with pytest.raises(ValueError, match=r"w=0"):
        MongoSink(unacknowledged)
