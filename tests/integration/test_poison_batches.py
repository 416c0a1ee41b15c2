"""Nothing a record does to a write wedges its partition (real broker, real MongoDB-wire server).

- A per-document error whose code was never on the old allow-list (SecantusDB's 16572 for a
  2dsphere-indexed point out of range) is a dead letter with the server's code and message.
- A command the server refuses as a whole (mongod's 10334 for one statement over 16 MiB + 16 KiB)
  is narrowed down to the records that cause it. SecantusDB does not enforce that limit, so the
  refusal is injected at ``Collection.bulk_write``, with pymongo's real ``OperationFailure`` and
  mongod's message, for every command that holds a record marked ``"statement_too_large"``;
  everything else reaches the real server.
- A record with 600,000 empty headers becomes a dead letter that fits, with its headers counted.

Each run ends with exact counts, ``_id`` sets, content (the latest version of a key wins, or the
first in ``insert`` mode) and offsets committed past every record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from kafka_mongo_etl.bulk import DOCUMENT_ERRORS, TRANSIENT_ERRORS
from kafka_mongo_etl.drain import DrainSettings
from kafka_mongo_etl.mongo_sink import MAX_STORED_HEADERS
from kafka_mongo_etl.tasks import ConsumeJob, DeadLetterPolicy, run_consume
from kafka_mongo_etl.write_models import WRITE_MODES

GEO_OUT_OF_RANGE = 16572
# What the pre-fix allow-list held: a code outside it failed the batch on every retry.
OLD_ALLOW_LIST = {2, 15, 52, 53, 55, 56, 57, 66, 121, 10334, 11000, 16755, 17419, 17420}


@pytest.fixture
def job(connections, make_job) -> ConsumeJob:
    return make_job(
        drain=DrainSettings(batch_size=500, stall_timeout=10),
        dead_letter_policy=DeadLetterPolicy(max_count=None),
    )


def create_topic(bootstrap: str, topic: str, config: dict[str, str] | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(topic, num_partitions=1, replication_factor=1, config=config or {})
    admin.create_topics([new])[topic].result(30)


def send(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, Any]], **config: Any) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, **config})
    for key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=headers)
    assert producer.flush(60) == 0


def fields(document: dict[str, Any]) -> dict[str, Any]:
    """The record's own fields of a stored document (not _id, _kafka or the update timestamps)."""
    return {k: v for k, v in document.items() if not k.startswith("_")}


def point(longitude: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [longitude, 45.0]}


def reread(job: ConsumeJob) -> ConsumeJob:
    return replace(job, group_id=f"{job.consumer_group}.reread", batch="test/run-2", run_id="run-2")


@pytest.mark.parametrize("mode", WRITE_MODES)
def test_a_geo_refusal_that_was_never_on_the_allow_list_is_a_dead_letter(
    mode, job, kafka_broker, mongo_client, committed_offsets
) -> None:
    assert GEO_OUT_OF_RANGE not in OLD_ALLOW_LIST and GEO_OUT_OF_RANGE not in TRANSIENT_ERRORS
    db = mongo_client[job.mongo_db]
    db.testnum.create_index([("loc", "2dsphere")])
    bootstrap = kafka_broker.bootstrap_servers
    create_topic(bootstrap, job.topic)
    first = [
        ("a", {"v": 1, "loc": point(10)}),
        ("b", {"v": 1, "loc": point(20)}),
        ("off-map", {"v": 1, "loc": point(500)}),  # longitude out of range: refused by the index
        ("c", {"v": 1, "loc": point(30)}),
    ]
    send(bootstrap, job.topic, [(k.encode(), json.dumps(v).encode(), None) for k, v in first])
    moded = replace(job, write_mode=mode)

    result = run_consume(moded)
    assert (result["records"], result["loaded"], result["dead_letters"]) == (4, 3, 1)
    stored = {
        "a": {"v": 1, "loc": point(10)},
        "b": {"v": 1, "loc": point(20)},
        "c": {"v": 1, "loc": point(30)},
    }
    assert {d["_id"]: fields(d) for d in db.testnum.find()} == stored
    (letter,) = db.testnum_dlq.find()
    assert (letter["_id"], letter["key"], letter["stage"], letter["code"]) == (
        f"{job.topic}:0:2",
        b"off-map",
        "write",
        "rejected",
    )
    assert f"(code {GEO_OUT_OF_RANGE})" in letter["reason"] and "geo keys" in letter["reason"]
    assert json.loads(letter["value"]) == {"v": 1, "loc": point(500)}
    assert committed_offsets(job.topic, job.consumer_group)[0] == 4

    # The next run: a new version of a (its _id exists: the rewrite step) and of off-map, still
    # off the map (refused by the insert and by the rewrite), and a new key.
    second = [
        ("a", {"v": 2, "loc": point(11)}),
        ("off-map", {"v": 2, "loc": point(-200)}),
        ("d", {"v": 1, "loc": point(40)}),
    ]
    send(bootstrap, job.topic, [(k.encode(), json.dumps(v).encode(), None) for k, v in second])
    again = run_consume(replace(moded, batch="test/run-2", run_id="run-2"))
    assert (again["records"], again["loaded"], again["dead_letters"]) == (3, 2, 1)
    if mode != "insert":  # insert: the first version of a stays
        stored["a"] = {"v": 2, "loc": point(11)}
    stored["d"] = {"v": 1, "loc": point(40)}
    assert {d["_id"]: fields(d) for d in db.testnum.find()} == stored
    assert {d["_id"]: d["key"] for d in db.testnum_dlq.find()} == {
        f"{job.topic}:0:2": b"off-map",
        f"{job.topic}:0:5": b"off-map",
    }
    assert committed_offsets(job.topic, job.consumer_group)[0] == 7


TOO_LARGE = "statement_too_large"


@pytest.fixture
def statement_limit(monkeypatch, job) -> list[int]:
    """mongod's statement limit, as SecantusDB does not enforce it: a bulk write to ``testnum``
    that holds a request for a record marked ``statement_too_large`` is refused as a whole with
    mongod's code and message (nothing of it applied). Returns the sizes of the commands sent."""
    original = Collection.bulk_write
    commands: list[int] = []

    def holds_mark(part: Any) -> bool:
        # A request's document, an update's operators, or a fenced rewrite's pipeline (the
        # record's body inside $literal, $mergeObjects, ...): the mark is a field name anywhere.
        if isinstance(part, Mapping):
            return TOO_LARGE in part or any(holds_mark(value) for value in part.values())
        if isinstance(part, list):
            return any(holds_mark(item) for item in part)
        return False

    def marked(request: Any) -> bool:
        return holds_mark(getattr(request, "_doc", None) or {})

    def bulk_write(self: Collection, requests: Any, *args: Any, **kwargs: Any) -> Any:
        if self.name != "testnum" or self.database.name != job.mongo_db:
            return original(self, requests, *args, **kwargs)
        requests = list(requests)
        commands.append(len(requests))
        if any(marked(request) for request in requests):
            reply = {
                "ok": 0.0,
                "errmsg": "BSONObj size: 16794000 (0x1004190) is invalid. Size must be between 0 and "
                "16793600(16MB) First element: q: { _id: ... }",
                "code": 10334,
                "codeName": "BSONObjectTooLarge",
            }
            raise OperationFailure(reply["errmsg"], reply["code"], reply)
        return original(self, requests, *args, **kwargs)

    monkeypatch.setattr(Collection, "bulk_write", bulk_write)
    return commands


@pytest.mark.parametrize("mode", WRITE_MODES)
def test_a_command_refused_as_a_whole_is_narrowed_down_to_its_records(
    mode, job, kafka_broker, mongo_client, committed_offsets, statement_limit
) -> None:
    assert 10334 in DOCUMENT_ERRORS
    db = db_of(mongo_client, job)
    bootstrap = kafka_broker.bootstrap_servers
    create_topic(bootstrap, job.topic)
    first: list[tuple[str, dict[str, Any]]] = [(f"k{n}", {"v": 1, "n": n}) for n in range(60)]
    first[17] = ("big-1", {"v": 1, TOO_LARGE: True})
    first[45] = ("big-2", {"v": 1, TOO_LARGE: True})
    send(bootstrap, job.topic, [(k.encode(), json.dumps(v).encode(), None) for k, v in first])
    moded = replace(job, write_mode=mode)

    result = run_consume(moded)
    expected = {key: value for key, value in first if TOO_LARGE not in value}
    assert (result["records"], result["loaded"], result["dead_letters"]) == (60, 58, 2)
    assert {d["_id"]: fields(d) for d in db.testnum.find()} == expected
    letters = {d["_id"]: d for d in db.testnum_dlq.find()}
    assert {i: d["key"] for i, d in letters.items()} == {
        f"{job.topic}:0:17": b"big-1",
        f"{job.topic}:0:45": b"big-2",
    }
    for letter in letters.values():
        assert letter["stage"] == "write" and "(code 10334)" in letter["reason"]
        assert "BSONObj size" in letter["reason"]
    assert committed_offsets(job.topic, job.consumer_group)[0] == 60
    # One batch of 60 documents: refused whole, then halves (each one bulk write) down to the two
    # records — at most 1 + 2 x 2 x 6 commands — then the same for the rewrite of those two.
    assert statement_limit[0] == 60 and len(statement_limit) <= (1 + 2 * 2 * 6) + 3

    # The next run: new versions of every third key (their _ids exist: the rewrite step) and one
    # more record the server refuses as a whole.
    second = [(f"k{n}", {"v": 2, "n": n}) for n in range(0, 60, 3) if n != 45]
    second.insert(7, ("big-3", {"v": 2, TOO_LARGE: True}))
    send(bootstrap, job.topic, [(k.encode(), json.dumps(v).encode(), None) for k, v in second])
    again = run_consume(replace(moded, batch="test/run-2", run_id="run-2"))
    assert (again["records"], again["loaded"], again["dead_letters"]) == (20, 19, 1)
    if mode != "insert":  # insert: the first version of a key stays
        expected.update((key, value) for key, value in second if TOO_LARGE not in value)
    assert {d["_id"]: fields(d) for d in db.testnum.find()} == expected
    assert db.testnum_dlq.find_one({"key": b"big-3"})["_id"] == f"{job.topic}:0:67"
    assert committed_offsets(job.topic, job.consumer_group)[0] == 80


def db_of(client: Any, job: ConsumeJob) -> Any:
    return client[job.mongo_db]


def test_a_record_with_100000_headers_over_16_mib_is_a_dead_letter_that_fits(
    job, kafka_broker, mongo_client, committed_offsets
) -> None:
    # 100,000 is the most headers librdkafka's consumer parses (more: Message.headers() is None),
    # so the headers are made large instead of many: 20 MiB of them, over MongoDB's 16 MiB, which
    # a dead letter copying them whole could never store.
    headers = [(f"h{n}", b"x" * 200) for n in range(100_000)]
    total = sum(len(name) + len(value) for name, value in headers)
    assert total > 16 * 1024 * 1024
    bootstrap = kafka_broker.bootstrap_servers
    limit = str(32 * 1024 * 1024)
    create_topic(bootstrap, job.topic, {"max.message.bytes": limit})
    send(
        bootstrap,
        job.topic,
        [
            (b"good-1", b'{"v": 1}', None),
            (b"many-headers", b"not json", headers),
            (b"good-2", b'{"v": 2}', [("trace", b"abc")]),
        ],
        **{"message.max.bytes": limit, "compression.type": "lz4"},
    )

    result = run_consume(job)
    assert (result["records"], result["loaded"], result["dead_letters"]) == (3, 2, 1)
    db = db_of(mongo_client, job)
    assert {d["_id"]: fields(d) for d in db.testnum.find()} == {"good-1": {"v": 1}, "good-2": {"v": 2}}
    (letter,) = db.testnum_dlq.find()
    assert (letter["key"], letter["code"], letter["value"]) == (b"many-headers", "not_json", b"not json")
    kept = [{"key": name, "value": value} for name, value in headers[:MAX_STORED_HEADERS]]
    assert letter["headers"] == kept
    assert (letter["headers_count"], letter["headers_size"], letter["headers_truncated"]) == (
        100_000,
        total,
        True,
    )
    assert committed_offsets(job.topic, job.consumer_group)[0] == 3
