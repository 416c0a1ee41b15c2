"""Poison records between good ones, across partitions and batches, through two runs on the real
broker and server: every good record loaded exactly once, every poison record in
<collection>_dlq with its raw bytes and a reason, offsets at the high watermarks, the
dead-letter policy applied as the README says."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_mongo_etl.drain import DrainSettings
from kafka_mongo_etl.errors import DeadLetterLimitError
from kafka_mongo_etl.ids import record_key
from kafka_mongo_etl.records import BAD_RECORD_CODES, MAX_NESTING
from kafka_mongo_etl.tasks import ConsumeJob, DeadLetterPolicy, run_consume, run_produce

PARTITIONS = 3
BATCH_SIZE = 16
SEED = 20261201
BIG = 20 * 1024 * 1024


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] | None
    code: str | None  # None: a good record


def nested(levels: int) -> str:
    """A JSON object ``levels`` levels deep, counted as MongoDB does (the document is the first)."""
    return '{"a":' * levels + "1" + "}" * levels


def one_of_each(tag: str) -> list[Record]:
    """A bad record of every kind the record path knows (invalid_id needs another id strategy)."""
    half = 8 * 1024 * 1024
    raw = [
        (b"\xff\xfe{", "not_utf8"),
        (b"{num: 1", "not_json"),
        (b"[1, 2, 3]", "not_object"),
        (None, "tombstone"),
        (b'{"$set": {"num": 1}}', "invalid_field"),
        (b'{"a\\u0000b": 1}', "invalid_field"),
        (json.dumps({"." * 254: 1}).encode(), "invalid_field"),
        (b'{"num": 9223372036854775808}', "number_out_of_range"),
        (b'{"num": -1e400}', "number_out_of_range"),
        (b'{"num": ' + b"9" * 5000 + b"}", "number_out_of_range"),
        (b'{"s": "\\ud800"}', "invalid_string"),
        (nested(MAX_NESTING + 1).encode(), "too_deep"),
        (b"[" * 50_000 + b"]" * 50_000, "too_deep"),
        # Neither alone is over 16 MiB: the key that becomes the _id makes it so.
        (json.dumps({"blob": "x" * half}).encode(), "too_large"),
    ]
    records = [
        Record(f"{tag}-{code}-{n}".encode(), value, [("h", b"\x00")], code)
        for n, (value, code) in enumerate(raw)
    ]
    # The 8 MiB key of the too_large record (the last one).
    records[-1] = replace(records[-1], key=tag.encode() + b"k" * (half - len(tag)))
    records.append(Record(None, json.dumps({"num": 1, "tag": tag}).encode(), None, "no_id"))
    records.append(Record(b"\xff\xfe" + tag.encode(), b'{"num": 1}', None, "no_id"))
    return records


GENERATED_CODES = ("number_out_of_range", "invalid_string", "too_deep", "invalid_field")


def generated(rng: random.Random, tag: str, count: int) -> list[Record]:
    """Bad records drawn at random: an ordinary-looking object with one defect added to it."""

    def name() -> str:
        return rng.choice(["num", "order", "a", "é", "price.usd", "x" * rng.randint(1, 20)])

    def ordinary(depth: int = 0) -> object:
        roll = rng.random()
        if depth < 3 and roll < 0.2:
            return {name(): ordinary(depth + 1) for _ in range(rng.randint(0, 3))}
        if depth < 3 and roll < 0.3:
            return [ordinary(depth + 1) for _ in range(rng.randint(0, 3))]
        return rng.choice([rng.randint(-(2**63), 2**63 - 1), rng.random(), "text", None, True])

    def defect(code: str) -> tuple[str, str]:
        """A field to add (its name, its value as JSON text) that makes the record ``code``."""
        if code == "number_out_of_range":
            return "bad", rng.choice([str(2**63 + rng.randint(0, 10**6)), f"-1e{rng.randint(309, 999)}"])
        if code == "invalid_string":
            return rng.choice(
                [("bad", json.dumps(rng.choice(["\ud800", "a\udfff", "\udbff!"]))), ("\ud800", "1")]
            )
        if code == "too_deep":
            levels = rng.randint(MAX_NESTING, 3000)
            return "deep", "[" * levels + "]" * levels
        # A name MongoDB refuses: $-prefixed at the top level, with NUL or 255+ parts anywhere.
        bad = rng.choice(["$" + name(), name() + "\x00", "." * rng.randint(254, 300)])
        if bad.startswith("$") or rng.random() < 0.5:
            return bad, "1"
        return "deep", json.dumps({"inner": {bad: 1}})

    records = []
    for n in range(count):
        code = rng.choice(GENERATED_CODES)
        document = json.dumps({name(): ordinary() for _ in range(rng.randint(1, 6))})
        field, value = defect(code)
        text = f"{document[:-1]}, {json.dumps(field)}: {value}}}"
        records.append(Record(f"{tag}-gen-{n}".encode(), text.encode(), None, code))
    return records


def good(tag: str, count: int) -> list[Record]:
    """Good records, some of them close to the rules' edges."""
    edges = [
        {"num": 2**63 - 1, "low": -(2**63)},
        {"nested": {"$inc": 1, "$id": 2}, "price.usd": 1.5},
        {"nan": float("nan"), "inf": float("inf")},
        json.loads(nested(MAX_NESTING)),
        {"text": "nul \u0000 in a string, é, 😀", "": "empty name"},
        {"_id": "ignored", "_kafka": "overwritten", "num": -1},
    ]
    return [
        Record(
            f"{tag}-good-{n}".encode(),
            json.dumps(edges[n] if n < len(edges) else {"num": n}).encode(),
            None,
            None,
        )
        for n in range(count)
    ]


def interleave(rng: random.Random, *groups: list[Record]) -> list[Record]:
    records = [record for group in groups for record in group]
    rng.shuffle(records)
    return records


def send(bootstrap: str, topic: str, records: list[Record]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": BIG, "compression.type": "lz4"})
    for n, record in enumerate(records):
        producer.produce(
            topic, key=record.key, value=record.value, headers=record.headers, partition=n % PARTITIONS
        )
    assert producer.flush(60) == 0


def high_watermarks(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "poison-watermarks"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)[1]
            for p in range(PARTITIONS)
        }
    finally:
        consumer.close()


@pytest.fixture
def job(connections, make_job) -> ConsumeJob:
    # Small batches, so poison and good records share batches and batches span the topic.
    return make_job(drain=DrainSettings(batch_size=BATCH_SIZE, stall_timeout=10))


def test_poison_never_stops_a_drain_and_is_never_lost(
    job, kafka_broker, mongo_client, committed_offsets
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    rng = random.Random(SEED)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic_config = {"max.message.bytes": str(BIG)}
    new = NewTopic(job.topic, num_partitions=PARTITIONS, replication_factor=1, config=topic_config)
    admin.create_topics([new])[job.topic].result(30)
    db = mongo_client[job.mongo_db]

    # Run 1: poison between good records, then the run's own batch; the default policy (no dead
    # letters allowed) fails the run, without retry, after loading and committing everything.
    first = interleave(rng, one_of_each("r1"), generated(rng, "r1", 40), good("r1", 60))
    send(bootstrap, job.topic, first)
    produced = run_produce(
        kafka_conn_id="kafka_default",
        topic=job.topic,
        partitions=PARTITIONS,
        batch=job.batch,
        start=0,
        count=50,
    )
    with pytest.raises(DeadLetterLimitError, match=r"dead letters, more than the limit of 0") as err:
        run_consume(job, produced)
    from airflow.sdk.exceptions import AirflowFailException

    assert isinstance(err.value, AirflowFailException)
    poison = [r for r in first if r.code]
    good_ids = {r.key.decode() for r in first if not r.code} | {record_key(job.batch, n) for n in range(50)}
    assert {d["_id"] for d in db.testnum.find({}, {"_id": 1})} == good_ids
    assert db.testnum_dlq.count_documents({}) == len(poison)
    assert committed_offsets(job.topic, job.consumer_group, PARTITIONS) == high_watermarks(
        bootstrap, job.topic
    )
    audit = db.etl_runs.find_one({"_id": job.batch})
    assert audit["state"] == "failed" and audit["dead_letters"] == len(poison)
    assert audit["loaded"] == len(good_ids) and audit["batches"] > PARTITIONS

    # Run 2: more of both and its own batch, with dead letters allowed: it succeeds.
    second_job = replace(
        job, batch="test/run-2", run_id="run-2", dead_letter_policy=DeadLetterPolicy(max_count=None)
    )
    second = interleave(rng, one_of_each("r2"), generated(rng, "r2", 40), good("r2", 30))
    send(bootstrap, job.topic, second)
    produced = run_produce(
        kafka_conn_id="kafka_default",
        topic=job.topic,
        partitions=PARTITIONS,
        batch=second_job.batch,
        start=0,
        count=50,
    )
    result = run_consume(second_job, produced)
    assert result["state"] == "success"
    poison += [r for r in second if r.code]
    good_ids |= {r.key.decode() for r in second if not r.code} | {
        record_key(second_job.batch, n) for n in range(50)
    }
    assert result["records"] == len(second) + 50
    assert result["dead_letters"] == len([r for r in second if r.code])
    assert db.testnum.count_documents({}) == len(good_ids)
    assert {d["_id"] for d in db.testnum.find({}, {"_id": 1})} == good_ids
    assert committed_offsets(job.topic, job.consumer_group, PARTITIONS) == high_watermarks(
        bootstrap, job.topic
    )

    # Every poison record is a dead letter with its raw bytes, its headers and a reason.
    letters = list(db.testnum_dlq.find())
    assert len(letters) == len(poison)
    kept = 1024 * 1024  # a dead letter keeps the first MiB of a key and of a value, and their sizes

    def raw(key: bytes | None, value: bytes | None) -> tuple:
        return (key[:kept] if key is not None else None), (value[:kept] if value is not None else None)

    by_raw = {raw(letter["key"], letter["value"]): letter for letter in letters}
    assert len(by_raw) == len(letters)
    for record in poison:
        letter = by_raw[raw(record.key, record.value)]
        if record.key is not None:
            assert letter["key_size"] == len(record.key)
            assert letter["key_truncated"] is (len(record.key) > kept)
        if record.value is not None:
            assert letter["value_size"] == len(record.value)
            assert letter["value_truncated"] is (len(record.value) > kept)
        assert letter["headers"] == [{"key": k, "value": v} for k, v in record.headers or []]
        assert letter["code"] in BAD_RECORD_CODES and letter["stage"] == "decode"
        assert f"{job.topic}[{letter['partition']}]@{letter['offset']}" in letter["reason"]
        assert letter["code"] == record.code, (letter["code"], record.code, letter["reason"])

    # The good records near the rules' edges are stored as they were sent.
    edge = db.testnum.find_one({"_id": "r1-good-1"})
    assert edge["nested"] == {"$inc": 1, "$id": 2} and edge["price.usd"] == 1.5
    assert db.testnum.find_one({"_id": "r1-good-0"})["num"] == 2**63 - 1
    assert db.testnum.find_one({"_id": "r1-good-5"})["_kafka"] != "overwritten"
