"""The write models on the real broker and server: each loads exactly once under re-reads and
re-sent batches, and each keeps its own promise (latest version, first version, merged fields
with timestamps, deletes on tombstones). ``replace`` inserts first and replaces only what exists.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from pymongo import InsertOne, UpdateOne
from pymongo.collection import Collection

from kafka_mongo_etl.drain import DrainSettings
from kafka_mongo_etl.errors import ParamsRefusedError
from kafka_mongo_etl.ids import record_key
from kafka_mongo_etl.tasks import ConsumeJob, DeadLetterPolicy, run_consume, run_produce
from kafka_mongo_etl.write_models import (
    CREATED_AT,
    DELETED_AT,
    MARKER_INDEX,
    UPDATED_AT,
    WRITE_MODES,
    ReplaceModel,
)


@pytest.fixture
def job(connections, make_job) -> ConsumeJob:
    return make_job(
        drain=DrainSettings(batch_size=100, stall_timeout=10),
        dead_letter_policy=DeadLetterPolicy(max_count=None),
    )


def produce(job: ConsumeJob, count: int, partitions: int = 3, batch: str | None = None) -> None:
    run_produce(
        kafka_conn_id="kafka_default",
        topic=job.topic,
        partitions=partitions,
        batch=batch or job.batch,
        start=0,
        count=count,
    )


def send(bootstrap: str, topic: str, records: list[tuple[bytes | None, Any]]) -> None:
    """``(key, value)`` records to a one-partition ``topic``; a value of None is a tombstone."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic not in admin.list_topics(timeout=30).topics:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in records:
        producer.produce(topic, key=key, value=None if value is None else json.dumps(value).encode())
    assert producer.flush(60) == 0


def expected_ids(batch: str, count: int) -> set[str]:
    return {record_key(batch, n) for n in range(count)}


def ids_in(collection: Collection) -> set:
    return {doc["_id"] for doc in collection.find({}, {"_id": 1})}


# What readers of a delete_on_tombstone collection filter on: a tombstone leaves a marker.
LIVE = {DELETED_AT: {"$exists": False}}


def live_ids(collection: Collection) -> set:
    return {doc["_id"] for doc in collection.find(LIVE, {"_id": 1})}


def marker_ids(collection: Collection) -> set:
    return {doc["_id"] for doc in collection.find({DELETED_AT: {"$exists": True}}, {"_id": 1})}


def reread(job: ConsumeJob, run: int = 2) -> ConsumeJob:
    """The same drain from the topic's start: what a retry after a crash before any commit reads."""
    return replace(
        job, group_id=f"{job.consumer_group}.reread{run}", batch=f"test/run-{run}", run_id=f"run-{run}"
    )


@pytest.fixture
def requests_sent(monkeypatch, job) -> list[list[type]]:
    """The request types of every bulk write to the job's target collection, in order."""
    sent: list[list[type]] = []
    original = Collection.bulk_write

    def bulk_write(self: Collection, requests, *args, **kwargs):
        requests = list(requests)
        if self.name == job.mongo_collection and self.database.name == job.mongo_db:
            sent.append([type(r) for r in requests])
        return original(self, requests, *args, **kwargs)

    monkeypatch.setattr(Collection, "bulk_write", bulk_write)
    return sent


@pytest.mark.parametrize("mode", WRITE_MODES)
def test_every_mode_loads_exactly_once_under_resent_batches_and_rereads(
    mode, job, mongo_client, committed_offsets
) -> None:
    moded = replace(job, write_mode=mode)
    produce(moded, 200)
    produce(moded, 200)  # the produce task's retry re-sends the same keys
    collection = mongo_client[job.mongo_db]["testnum"]

    first = run_consume(moded)
    # Copies of one key in one batch are superseded there (the later offset wins).
    assert (first["records"], first["loaded"] + first["skipped"], first["dead_letters"]) == (400, 400, 0)
    assert collection.count_documents({}) == 200 and ids_in(collection) == expected_ids(job.batch, 200)
    assert sorted(d["num"] for d in collection.find()) == list(range(200))

    again = run_consume(reread(moded))
    assert (again["records"], again["loaded"] + again["skipped"], again["dead_letters"]) == (400, 400, 0)
    assert collection.count_documents({}) == 200 and ids_in(collection) == expected_ids(job.batch, 200)
    offsets = committed_offsets(job.topic, job.consumer_group, 3)
    assert sum(offsets.values()) == 400


def test_a_first_load_in_replace_mode_is_inserts_only(job, mongo_client, requests_sent) -> None:
    produce(job, 300, partitions=1)
    assert run_consume(job)["loaded"] == 300
    assert ids_in(mongo_client[job.mongo_db]["testnum"]) == expected_ids(job.batch, 300)
    # Only inserts, one bulk write per batch: no _id existed, so there was no second step.
    assert sum(len(r) for r in requests_sent) == 300
    assert {t for r in requests_sent for t in r} == {InsertOne}


def test_a_reread_in_replace_mode_replaces_what_exists_and_goes_back_to_inserts(
    job, mongo_client, requests_sent
) -> None:
    produce(job, 200, partitions=1)
    run_consume(job)
    produce(job, 200, partitions=1, batch="test/later")
    requests_sent.clear()
    # From the start: 200 records stored already, then 200 new ones, in batches of 100.
    result = run_consume(reread(job))
    assert (result["records"], result["loaded"]) == (400, 400)
    collection = mongo_client[job.mongo_db]["testnum"]
    assert ids_in(collection) == expected_ids(job.batch, 200) | expected_ids("test/later", 200)
    # The first batch's inserts all collide, so its documents are rewritten (the fenced replace,
    # an UpdateOne pipeline) and the next batches go straight to rewriting; a batch of new _ids
    # (upserted) sends the drain back to inserts.
    kinds = [set(r) for r in requests_sent]
    assert kinds[0] == {InsertOne} and kinds[1] == {UpdateOne}
    assert kinds[-1] == {InsertOne} and {UpdateOne} in kinds[2:-1]
    assert sum(len(r) for r, kind in zip(requests_sent, kinds, strict=True) if kind == {UpdateOne}) >= 200
    # The re-read records were applied already: the fence left them as they were.
    assert result["stale"] == 200


def test_existing_ids_with_other_content_get_the_latest_version(job, mongo_client) -> None:
    collection = mongo_client[job.mongo_db]["testnum"]
    stale = sorted(expected_ids(job.batch, 300))[::2]
    collection.insert_many([{"_id": _id, "num": -1, "stale": True} for _id in stale])
    produce(job, 300)

    result = run_consume(job)
    assert (result["loaded"], result["dead_letters"]) == (300, 0)
    assert collection.count_documents({}) == 300 and ids_in(collection) == expected_ids(job.batch, 300)
    # Replaced whole: the stored version's own fields are gone, the record's are there.
    assert collection.count_documents({"stale": {"$exists": True}}) == 0
    assert all(d["_id"] == record_key(job.batch, d["num"]) for d in collection.find())


def test_a_crash_between_the_insert_and_the_replace_step(
    job, mongo_client, monkeypatch, committed_offsets
) -> None:
    collection = mongo_client[job.mongo_db]["testnum"]
    ids = sorted(expected_ids(job.batch, 300), key=lambda _id: int(_id.rsplit("/", 1)[1]))
    # Two of the first batch's records are stored with other content.
    collection.insert_many([{"_id": _id, "num": -1, "stale": True} for _id in (ids[3], ids[50])])
    produce(job, 300, partitions=1)

    original_write, original_write_again = ReplaceModel.write, ReplaceModel.write_again
    batches: list[int] = []
    crashed: list[int] = []

    def write(self, target, documents):
        batches.append(len(documents))
        return original_write(self, target, documents)

    def crash_before_the_second_step(self, target, again, at):
        if again and not crashed:
            crashed.append(len(again))
            raise RuntimeError("crashed between the insert and the replace step")
        return original_write_again(self, target, again, at)

    monkeypatch.setattr(ReplaceModel, "write", write)
    monkeypatch.setattr(ReplaceModel, "write_again", crash_before_the_second_step)
    with pytest.raises(RuntimeError, match="between the insert and the replace"):
        run_consume(job)
    assert len(batches) == 1 and batches[0] > 50 and crashed == [2]
    # The first batch's new documents are in, the two old ones untouched, nothing committed.
    assert committed_offsets(job.topic, job.consumer_group)[0] < 0
    assert collection.count_documents({}) == batches[0]
    assert collection.count_documents({"stale": True}) == 2

    retry = run_consume(job)  # the same run's retry
    assert (retry["records"], retry["loaded"], retry["dead_letters"]) == (300, 300, 0)
    assert collection.count_documents({}) == 300 and ids_in(collection) == expected_ids(job.batch, 300)
    assert collection.count_documents({"stale": True}) == 0
    assert committed_offsets(job.topic, job.consumer_group)[0] == 300


def test_update_mode_merges_fields_and_keeps_the_creation_time(job, kafka_broker, mongo_client) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    updating = replace(job, write_mode="update")
    collection = mongo_client[job.mongo_db]["testnum"]
    send(bootstrap, job.topic, [(b"a", {"num": 1, "colour": "red"}), (b"b", {"num": 2, CREATED_AT: "mine"})])
    assert run_consume(updating)["loaded"] == 2
    first = {d["_id"]: d for d in collection.find()}
    assert first["a"][CREATED_AT] == first["a"][UPDATED_AT]
    assert first["b"][CREATED_AT] != "mine"  # the write's own timestamps, not the record's

    # A re-read changes nothing, not even the updated-at: the fence finds the records applied.
    assert run_consume(reread(updating))["stale"] == 2
    again = {d["_id"]: d for d in collection.find()}
    assert again == first

    # A new version $sets its fields; a field it lacks stays; created-at stays.
    send(bootstrap, job.topic, [(b"a", {"size": 3})])
    run_consume(replace(updating, batch="test/run-3", run_id="run-3"))
    a = collection.find_one({"_id": "a"})
    assert (a["num"], a["colour"], a["size"]) == (1, "red", 3)
    assert a[CREATED_AT] == first["a"][CREATED_AT] and a["_kafka"]["offset"] == 2


def test_update_mode_refuses_field_names_it_would_take_for_paths(job, kafka_broker, mongo_client) -> None:
    send(kafka_broker.bootstrap_servers, job.topic, [(b"a", {"num": 1}), (b"dotted", {"a.b": 1})])
    result = run_consume(replace(job, write_mode="update"))
    assert (result["loaded"], result["dead_letters"]) == (1, 1)
    letter = mongo_client[job.mongo_db]["testnum_dlq"].find_one()
    assert letter["key"] == b"dotted" and "['a.b']" in letter["reason"] and "'replace'" in letter["reason"]
    assert ids_in(mongo_client[job.mongo_db]["testnum"]) == {"a"}


def test_delete_on_tombstone_deletes_the_keys_document(job, kafka_broker, mongo_client) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    deleting = replace(job, write_mode="delete_on_tombstone")
    collection = mongo_client[job.mongo_db]["testnum"]
    send(
        bootstrap,
        job.topic,
        [(b"a", {"v": 1}), (b"b", {"v": 1}), (b"c", {"v": 1}), (b"never", None), (None, None)],
    )
    result = run_consume(deleting)
    # A tombstone of a key never stored deletes nothing (it leaves a marker, so that an older
    # value delivered late cannot bring the key back); one without a key has no _id to delete.
    assert (result["records"], result["loaded"], result["deleted"], result["dead_letters"]) == (5, 4, 0, 1)
    assert live_ids(collection) == {"a", "b", "c"} and marker_ids(collection) == {"never"}
    assert MARKER_INDEX in collection.index_information()
    letter = mongo_client[job.mongo_db]["testnum_dlq"].find_one()
    assert letter["key"] is None and letter["code"] == "no_id" and "no key" in letter["reason"]

    send(bootstrap, job.topic, [(b"b", None)])
    assert run_consume(replace(deleting, batch="test/run-2", run_id="run-2"))["deleted"] == 1
    assert live_ids(collection) == {"a", "c"} and marker_ids(collection) == {"b", "never"}

    # A re-read from the start: b's value and then its tombstone (superseded in one batch, or
    # both stale across two): the same end state, nothing deleted or written again.
    reread_all = run_consume(reread(deleting, 3))
    assert (reread_all["records"], reread_all["deleted"]) == (6, 0)
    assert reread_all["skipped"] + reread_all["stale"] == 6 - 1  # the keyless tombstone: dead letter
    assert live_ids(collection) == {"a", "c"} and marker_ids(collection) == {"b", "never"}

    # A later value brings the key back.
    send(bootstrap, job.topic, [(b"b", {"v": 2})])
    run_consume(replace(deleting, batch="test/run-4", run_id="run-4"))
    assert {d["_id"]: d["v"] for d in collection.find(LIVE)} == {"a": 1, "b": 2, "c": 1}
    assert marker_ids(collection) == {"never"}


def test_tombstones_stay_dead_letters_in_the_other_modes(job, kafka_broker, mongo_client) -> None:
    send(kafka_broker.bootstrap_servers, job.topic, [(b"a", {"v": 1}), (b"a", None)])
    result = run_consume(job)
    assert (result["loaded"], result["dead_letters"], result["dead_letter_reasons"]) == (
        1,
        1,
        {"tombstone": 1},
    )
    assert ids_in(mongo_client[job.mongo_db]["testnum"]) == {"a"}


def test_delete_on_tombstone_needs_ids_from_the_key(job, kafka_broker) -> None:
    send(kafka_broker.bootstrap_servers, job.topic, [(b"a", {"v": 1})])
    # Refused before anything is read, and not retried: a retry would fail the same way.
    with pytest.raises(ParamsRefusedError, match="needs id_strategy 'key'"):
        run_consume(replace(job, write_mode="delete_on_tombstone", id_strategy="coordinates"))
