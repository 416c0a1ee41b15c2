"""Records that cannot be loaded go to <collection>_dlq before their offsets are committed."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_mongo_etl.drain import DrainSettings
from kafka_mongo_etl.errors import ConnectionProblem, DeadLetterLimitError
from kafka_mongo_etl.ids import record_key
from kafka_mongo_etl.tasks import ConsumeJob, DeadLetterPolicy, run_consume, run_produce


@pytest.fixture
def job(connections, make_job) -> ConsumeJob:
    return make_job(
        drain=DrainSettings(batch_size=50, stall_timeout=10),
        dead_letter_policy=DeadLetterPolicy(max_count=None),
    )


def create_topic(bootstrap: str, topic: str, partitions: int = 1, config: dict | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})
    admin.create_topics([new])[topic].result(30)


def send(bootstrap: str, topic: str, records: list[tuple], **config) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, **config})
    for key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=headers)
    assert producer.flush(60) == 0


BAD_RECORDS = [
    (b"k-not-utf8", b"\xff\xfe{", [("trace", b"abc")], "not_utf8"),
    (b"k-not-json", b"{num: 1", None, "not_json"),
    (b"k-array", b"[1, 2, 3]", None, "not_object"),
    (b"k-tombstone", None, None, "tombstone"),
    (b"k-dollar", b'{"$set": {"num": 1}}', None, "invalid_field"),
]


def test_bad_records_go_to_the_dlq_and_good_ones_still_load(
    job, kafka_broker, mongo_client, committed_offsets
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    create_topic(bootstrap, job.topic)
    good = [(f"good-{n}".encode(), json.dumps({"num": n}).encode(), None) for n in range(20)]
    bad = [(key, value, headers) for key, value, headers, _ in BAD_RECORDS]
    # Bad records between good ones, in the same batch.
    send(bootstrap, job.topic, good[:10] + bad + good[10:])

    result = run_consume(job)
    db = mongo_client[job.mongo_db]
    assert result["records"] == 25 and result["loaded"] == 20 and result["dead_letters"] == 5
    assert {d["_id"] for d in db.testnum.find({}, {"_id": 1})} == {f"good-{n}" for n in range(20)}
    assert result["dead_letter_reasons"] == {code: 1 for *_, code in BAD_RECORDS}

    letters = {d["key"]: d for d in db.testnum_dlq.find()}
    assert set(letters) == {key for key, *_ in BAD_RECORDS}
    not_utf8 = letters[b"k-not-utf8"]
    assert not_utf8["_id"] == f"{job.topic}:0:10"
    assert (not_utf8["topic"], not_utf8["partition"], not_utf8["offset"]) == (job.topic, 0, 10)
    assert not_utf8["value"] == b"\xff\xfe{" and not_utf8["value_size"] == 3
    assert not_utf8["headers"] == [{"key": "trace", "value": b"abc"}]
    assert not_utf8["code"] == "not_utf8" and "UTF-8" in not_utf8["reason"]
    assert not_utf8["run_id"] == "run-1" and not_utf8["timestamp"] is not None
    assert letters[b"k-tombstone"]["value"] is None

    # Every offset, dead letters included, is committed: the next run reads nothing again.
    assert committed_offsets(job.topic, job.consumer_group)[0] == 25
    again = run_consume(replace(job, batch="test/run-2", run_id="run-2"))
    assert again["records"] == 0
    assert db.testnum_dlq.count_documents({}) == 5
    audit = db.etl_runs.find_one({"_id": job.batch})
    assert audit["dead_letters"] == 5 and audit["state"] == "success"


def test_a_reread_rewrites_the_same_dead_letters(job, kafka_broker, mongo_client) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    create_topic(bootstrap, job.topic)
    send(bootstrap, job.topic, [(b"a", b"not json", None), (b"b", b'{"num": 1}', None)])
    run_consume(job)
    # A crash before the commit means the same records are read again by the retry.
    run_consume(replace(job, group_id=job.consumer_group + ".again"))
    db = mongo_client[job.mongo_db]
    assert db.testnum_dlq.count_documents({}) == 1
    assert db.testnum.count_documents({}) == 1


def test_documents_mongodb_refuses_go_to_the_dlq(job, kafka_broker, mongo_client, committed_offsets) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    db = mongo_client[job.mongo_db]
    db.create_collection(
        "testnum",
        validator={"$jsonSchema": {"required": ["num"], "properties": {"num": {"bsonType": "int"}}}},
    )
    create_topic(bootstrap, job.topic)
    send(
        bootstrap,
        job.topic,
        [
            (b"ok-1", b'{"num": 1}', None),
            (b"no-num", b'{"other": 1}', None),
            (b"ok-2", b'{"num": 2}', None),
            (b"str-num", b'{"num": "two"}', None),
        ],
    )
    result = run_consume(job)
    assert (result["loaded"], result["dead_letters"]) == (2, 2)
    assert {d["_id"] for d in db.testnum.find({}, {"_id": 1})} == {"ok-1", "ok-2"}
    letters = list(db.testnum_dlq.find())
    assert {d["key"] for d in letters} == {b"no-num", b"str-num"}
    assert all(d["stage"] == "write" and "121" in d["reason"] for d in letters)
    assert committed_offsets(job.topic, job.consumer_group)[0] == 4


def test_a_document_over_16_mib_goes_to_the_dlq(job, kafka_broker, mongo_client) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    big = 20 * 1024 * 1024
    create_topic(bootstrap, job.topic, config={"max.message.bytes": str(big + 1024 * 1024)})
    huge = json.dumps({"num": 1, "blob": "x" * (17 * 1024 * 1024)}).encode()
    send(
        bootstrap,
        job.topic,
        [(b"small", b'{"num": 0}', None), (b"huge", huge, None), (b"k" * (9 * 1024 * 1024), huge, None)],
        **{"message.max.bytes": 2 * big, "compression.type": "lz4"},
    )
    result = run_consume(job)
    assert (result["loaded"], result["dead_letters"]) == (1, 2)
    dlq = mongo_client[job.mongo_db].testnum_dlq
    letter = dlq.find_one({"key": b"huge"})
    assert letter["code"] == "too_large" and letter["value_size"] == len(huge)
    assert letter["value_truncated"] is True and len(letter["value"]) == 1024 * 1024
    assert letter["key_truncated"] is False and letter["key_size"] == 4
    # A huge key is cut like a huge value, so the dead letter itself stays under 16 MiB.
    (long_key,) = dlq.find({"key_size": 9 * 1024 * 1024})
    assert long_key["key_truncated"] is True and len(long_key["key"]) == 1024 * 1024


def test_policy_fails_the_run_without_retry_after_committing(
    job, kafka_broker, mongo_client, committed_offsets
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    create_topic(bootstrap, job.topic)
    send(
        bootstrap,
        job.topic,
        [(b"a", b"nope", None)] + [(f"{n}".encode(), b'{"num": 1}', None) for n in range(9)],
    )
    strict = replace(job, dead_letter_policy=DeadLetterPolicy())  # the default: none allowed
    with pytest.raises(DeadLetterLimitError, match=r"1 dead letters.*testnum_dlq") as err:
        run_consume(strict)
    from airflow.sdk.exceptions import AirflowFailException

    assert isinstance(err.value, AirflowFailException)  # Airflow does not retry it
    db = mongo_client[job.mongo_db]
    assert db.testnum.count_documents({}) == 9 and db.testnum_dlq.count_documents({}) == 1
    assert committed_offsets(job.topic, job.consumer_group)[0] == 10
    assert db.etl_runs.find_one({"_id": job.batch})["state"] == "failed"


def test_ratio_policy(job, kafka_broker) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    create_topic(bootstrap, job.topic)
    send(
        bootstrap,
        job.topic,
        [(b"a", b"nope", None)] + [(f"{n}".encode(), b'{"num": 1}', None) for n in range(9)],
    )
    lenient = replace(job, dead_letter_policy=DeadLetterPolicy(max_count=None, max_ratio=0.2))
    assert run_consume(lenient)["dead_letters"] == 1
    send(bootstrap, job.topic, [(b"b", b"nope", None), (b"c", b"nope", None), (b"d", b'{"num": 1}', None)])
    with pytest.raises(DeadLetterLimitError, match="66.7%"):
        run_consume(replace(lenient, batch="test/run-2", run_id="run-2"))


def test_mongodb_down_at_start_names_the_connection_and_commits_nothing(
    job, kafka_broker, monkeypatch, committed_offsets
) -> None:
    from devstack.process import free_port

    run_produce(
        kafka_conn_id="kafka_default", topic=job.topic, partitions=1, batch=job.batch, start=0, count=10
    )
    port = free_port()  # nothing listens there
    monkeypatch.setenv(
        "AIRFLOW_CONN_MONGO_DEFAULT",
        json.dumps(
            {
                "conn_type": "mongo",
                "host": "127.0.0.1",
                "port": port,
                "extra": {"serverSelectionTimeoutMS": 2000},
            }
        ),
    )
    began = time.monotonic()
    with pytest.raises(ConnectionProblem, match=rf"'mongo_default' \(127.0.0.1:{port}\)"):
        run_consume(job)
    assert time.monotonic() - began < 15
    assert committed_offsets(job.topic, job.consumer_group)[0] < 0


def test_kafka_connection_problems_name_the_connection(job, monkeypatch) -> None:
    from devstack.process import free_port

    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_DEFAULT", json.dumps({"conn_type": "kafka", "extra": {}}))
    with pytest.raises(ConnectionProblem, match="'kafka_default' has no bootstrap.servers"):
        run_produce(kafka_conn_id="kafka_default", topic=job.topic, partitions=1, batch="b", start=0, count=1)

    dead_port = free_port()
    monkeypatch.setenv(
        "AIRFLOW_CONN_KAFKA_DEFAULT",
        json.dumps({"conn_type": "kafka", "extra": {"bootstrap.servers": f"127.0.0.1:{dead_port}"}}),
    )
    began = time.monotonic()
    with pytest.raises(
        ConnectionProblem, match=rf"'kafka_default' \(127.0.0.1:{dead_port}\): no broker answered"
    ):
        run_produce(kafka_conn_id="kafka_default", topic=job.topic, partitions=1, batch="b", start=0, count=1)
    assert time.monotonic() - began < 30

    monkeypatch.setenv(
        "AIRFLOW_CONN_KAFKA_DEFAULT",
        json.dumps({"conn_type": "kafka", "extra": {"bootstrap.servers": "no-such-host.invalid:9092"}}),
    )
    with pytest.raises(ConnectionProblem, match="no-such-host.invalid:9092"):
        run_consume(job)


def test_records_keyed_like_the_project_are_unaffected(job, mongo_client) -> None:
    run_produce(
        kafka_conn_id="kafka_default", topic=job.topic, partitions=2, batch=job.batch, start=0, count=100
    )
    result = run_consume(job)
    assert (result["loaded"], result["dead_letters"]) == (100, 0)
    ids = {d["_id"] for d in mongo_client[job.mongo_db].testnum.find({}, {"_id": 1})}
    assert ids == {record_key(job.batch, n) for n in range(100)}
    assert "testnum_dlq" not in mongo_client[job.mongo_db].list_collection_names()


def test_a_dead_letter_mongodb_refuses_fails_the_run_and_commits_nothing(
    job, kafka_broker, mongo_client, committed_offsets
) -> None:
    from kafka_mongo_etl.write_models import WriteFailedError

    bootstrap = kafka_broker.bootstrap_servers
    db = mongo_client[job.mongo_db]
    db.create_collection("testnum_dlq", validator={"$jsonSchema": {"required": ["never_there"]}})
    create_topic(bootstrap, job.topic)
    send(bootstrap, job.topic, [(b"good", b'{"num": 1}', None), (b"bad", b"not json", None)])
    with pytest.raises(WriteFailedError, match=r"did not keep 1 dead letters in .*testnum_dlq \(code 121"):
        run_consume(job)
    assert committed_offsets(job.topic, job.consumer_group)[0] < 0
