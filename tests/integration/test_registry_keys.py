"""key_format end to end: record keys written by confluent-kafka's AvroSerializer for keys (subject
``<topic>-key``) against the real Schema Registry (Apicurio, devstack.registry), drained by
``run_consume`` into the MongoDB-wire server. Record keys become embedded ``_id``s and primitive
keys (string, long) ``_id``s of their own type; JSON Schema keys (``JSONSerializer``) are
validated; several versions per key (the latest wins), a tombstone deleting its key's document,
``key.<field>`` routing on the decoded key, keys that do not decode as dead letters naming the
key, a registry that cannot be reached failing the task, and a replay with key_format fixed."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from kafka_mongo_etl.drain import DrainSettings
from kafka_mongo_etl.errors import ConnectionProblem
from kafka_mongo_etl.tasks import ConsumeJob, DeadLetterPolicy, run_consume

CUSTOMER_KEY = {
    "type": "record",
    "name": "CustomerKey",
    "namespace": "etl.test",
    "fields": [{"name": "region", "type": "string"}, {"name": "id", "type": "long"}],
}
CUSTOMER = {
    "type": "record",
    "name": "Customer",
    "namespace": "etl.test",
    "fields": [{"name": "name", "type": "string"}, {"name": "tier", "type": "int"}],
}
# delete_on_tombstone leaves a marker (_deleted_at) until a TTL index purges it; markers are not rows.
LIVE = {"_deleted_at": {"$exists": False}}


@pytest.fixture
def job(connections, make_job, registry_client) -> ConsumeJob:
    return make_job(
        key_format="avro",
        drain=DrainSettings(batch_size=50, stall_timeout=10),
        dead_letter_policy=DeadLetterPolicy(max_count=None),
    )


class Serializers:
    """confluent-kafka's Avro serializers of one topic: ``key`` (subject ``<topic>-key``) and
    ``value`` (``<topic>-value``)."""

    def __init__(self, client: SchemaRegistryClient, topic: str, key_schema: Any, value_schema: Any) -> None:
        self._key = AvroSerializer(client, json.dumps(key_schema))
        self._value = AvroSerializer(client, json.dumps(value_schema))
        self._key_context = SerializationContext(topic, MessageField.KEY)
        self._value_context = SerializationContext(topic, MessageField.VALUE)

    def key(self, key: Any) -> bytes:
        return self._key(key, self._key_context)

    def value(self, value: Any) -> bytes:
        return self._value(value, self._value_context)


def without_kafka(document: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in document.items() if name != "_kafka"}


def test_avro_record_keys_route_latest_wins_tombstone_deletes_and_bad_keys_are_dead_letters(
    job, send_bytes, mongo_client, registry_client, committed_offsets
) -> None:
    avro = Serializers(registry_client, job.topic, CUSTOMER_KEY, CUSTOMER)
    regions = ("eu", "us")

    def key(n: int) -> bytes:
        return avro.key({"region": regions[n % 2], "id": n})

    records = [(key(n), avro.value({"name": f"v1 {n}", "tier": n})) for n in range(6)]
    records += [(key(n), avro.value({"name": f"v2 {n}", "tier": 10 + n})) for n in range(3)]
    records.append((key(5), None))  # deletes customer 5 (us)
    good_key = key(0)
    key_id = int.from_bytes(good_key[1:5], "big")
    bad = {
        b"eu-customer-7": ("bad_wire_format", "the key starts with byte 0x65"),
        b"\x00" + (key_id + 100_000).to_bytes(4, "big") + good_key[5:]: (
            "unknown_schema",
            f"the key's schema id {key_id + 100_000}",
        ),
        good_key[:-1]: ("schema_mismatch", f"the key's payload does not decode with Avro schema id {key_id}"),
    }
    records += [(raw, avro.value({"name": "bad", "tier": 0})) for raw in bad]
    send_bytes(job.topic, records)
    assert key_id != int.from_bytes(records[0][1][1:5], "big")  # keys have a schema of their own

    routed_job = replace(job, value_format="avro", write_mode="delete_on_tombstone", route_by="key.region")
    result = run_consume(routed_job)

    db = mongo_client[job.mongo_db]
    assert (result["records"], result["dead_letters"]) == (13, 3)
    for region in regions:
        found = {json.dumps(d["_id"]): without_kafka(d) for d in db[region].find(LIVE)}
        expected = {}
        for n in range(5):
            if regions[n % 2] != region:
                continue
            _id = {"region": region, "id": n}
            latest = {"name": f"v2 {n}", "tier": 10 + n} if n < 3 else {"name": f"v1 {n}", "tier": n}
            expected[json.dumps(_id)] = {"_id": _id, **latest}
        assert found == expected, region
        assert list(next(iter(db[region].find(LIVE)))["_id"]) == ["region", "id"]  # the schema's order
    assert db.us.count_documents({"_id": {"region": "us", "id": 5}, **LIVE}) == 0
    assert db.us.count_documents({"_id": {"region": "us", "id": 5}, "_deleted_at": {"$exists": True}}) == 1
    assert db.testnum.count_documents({}) == 0  # every record had a region
    letters = {d["key"]: d for d in db.testnum_dlq.find()}
    assert set(letters) == set(bad)
    for raw, (code, reason) in bad.items():
        assert letters[raw]["code"] == code, letters[raw]
        assert reason in letters[raw]["reason"], letters[raw]["reason"]
    assert committed_offsets(job.topic, job.consumer_group)[0] == 13


def test_primitive_string_and_long_keys_are_ids_of_their_own_type(
    job, send_bytes, mongo_client, registry_client, committed_offsets
) -> None:
    db = mongo_client[job.mongo_db]
    cases = {"string": [f"s-{n}" for n in range(4)], "long": [0, -1, 2**40, 2**63 - 1]}
    for kind, keys in cases.items():
        topic = f"{job.topic}-{kind}"
        serialize = AvroSerializer(registry_client, json.dumps(kind))
        context = SerializationContext(topic, MessageField.KEY)
        # JSON values: key_format does not depend on value_format.
        records = [
            (serialize(k, context), json.dumps({"n": n, "rev": 1}).encode()) for n, k in enumerate(keys)
        ]
        records += [
            (serialize(k, context), json.dumps({"n": n, "rev": 2}).encode()) for n, k in enumerate(keys[:2])
        ]
        send_bytes(topic, records)

        kind_job = replace(job, topic=topic, mongo_collection=kind)
        result = run_consume(kind_job)

        assert (result["records"], result["dead_letters"]) == (6, 0)
        documents = {d["_id"]: without_kafka(d) for d in db[kind].find()}
        assert documents == {k: {"_id": k, "n": n, "rev": 2 if n < 2 else 1} for n, k in enumerate(keys)}, (
            kind
        )
        assert all(isinstance(_id, str if kind == "string" else int) for _id in documents)
        assert committed_offsets(topic, kind_job.consumer_group)[0] == 6


def test_registry_down_for_keys_fails_the_task_and_commits_nothing(
    job, send_bytes, mongo_client, registry_client, monkeypatch, committed_offsets
) -> None:
    from devstack.process import free_port

    serialize = AvroSerializer(registry_client, json.dumps("string"))
    context = SerializationContext(job.topic, MessageField.KEY)
    send_bytes(job.topic, [(serialize(f"k-{n}", context), b'{"n": 1}') for n in range(3)])
    working = json.loads(os.environ["AIRFLOW_CONN_SCHEMA_REGISTRY_DEFAULT"])
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv(
        "AIRFLOW_CONN_SCHEMA_REGISTRY_DEFAULT", json.dumps({"conn_type": "http", "extra": {"url": url}})
    )

    with pytest.raises(ConnectionProblem, match=rf"'schema_registry_default' at {url} could not be reached"):
        run_consume(job)

    db = mongo_client[job.mongo_db]
    assert committed_offsets(job.topic, job.consumer_group)[0] < 0
    assert db.testnum.count_documents({}) == db.testnum_dlq.count_documents({}) == 0

    monkeypatch.setenv("AIRFLOW_CONN_SCHEMA_REGISTRY_DEFAULT", json.dumps(working))
    retry = run_consume(job)
    assert (retry["records"], retry["dead_letters"]) == (3, 0)
    assert sorted(d["_id"] for d in db.testnum.find()) == ["k-0", "k-1", "k-2"]
    assert committed_offsets(job.topic, job.consumer_group)[0] == 3


def test_avro_keys_read_as_json_by_mistake_replay_once_key_format_is_fixed(
    job, send_bytes, mongo_client, registry_client
) -> None:
    from kafka_mongo_etl.replay import run_replay

    avro = Serializers(registry_client, job.topic, CUSTOMER_KEY, CUSTOMER)
    send_bytes(
        job.topic,
        [(avro.key({"region": "eu", "id": n}), avro.value({"name": f"c {n}", "tier": n})) for n in range(3)],
    )
    # Key processors read a JSON object key: Avro keys read as JSON cannot make an _id.
    processors = [{"type": "rename", "on": "key", "fields": {"id": "customer"}}]
    mistaken = replace(job, key_format="json", value_format="avro", processors=tuple(processors))
    loaded_as_json = run_consume(mistaken)
    db = mongo_client[job.mongo_db]
    assert (loaded_as_json["records"], loaded_as_json["dead_letters"]) == (3, 3)
    assert {d["code"] for d in db.testnum_dlq.find()} == {"no_id"}

    summary = run_replay(
        {
            "mongo_db": job.mongo_db,
            "mongo_collection": "testnum",
            "run_id": job.run_id,
            "value_format": "avro",
            "key_format": "avro",
            "processors": processors,
        }
    )

    assert (summary["selected"], summary["loaded"], summary["still_failing"]) == (3, 3, {})
    assert db.testnum_dlq.count_documents({}) == 0
    documents = sorted((without_kafka(d) for d in db.testnum.find()), key=lambda d: d["tier"])
    assert documents == [
        {"_id": {"region": "eu", "customer": n}, "name": f"c {n}", "tier": n} for n in range(3)
    ]


TENANT_KEY = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "TenantKey",
    "type": "object",
    "properties": {"tenant": {"type": "string"}, "n": {"type": "integer", "minimum": 0}},
    "required": ["tenant", "n"],
}


def test_json_schema_keys_are_validated_and_become_embedded_ids(
    job, send_bytes, mongo_client, registry_client, committed_offsets
) -> None:
    from confluent_kafka.schema_registry.json_schema import JSONSerializer

    serialize = JSONSerializer(json.dumps(TENANT_KEY), registry_client)
    context = SerializationContext(job.topic, MessageField.KEY)
    keys = [serialize({"tenant": "acme", "n": n}, context) for n in range(3)]
    records = [(key, json.dumps({"rev": 1, "n": n}).encode()) for n, key in enumerate(keys)]
    records.append((keys[1], json.dumps({"rev": 2, "n": 1}).encode()))
    # In the wire format and JSON, but against its schema (the serializer would refuse to write it).
    invalid = keys[0][:5] + json.dumps({"tenant": "acme", "n": -1}).encode()
    records.append((invalid, b'{"rev": 1}'))
    send_bytes(job.topic, records)

    result = run_consume(replace(job, key_format="json_schema"))

    db = mongo_client[job.mongo_db]
    assert (result["records"], result["dead_letters"]) == (5, 1)
    documents = sorted((without_kafka(d) for d in db.testnum.find()), key=lambda d: d["n"])
    assert documents == [
        {"_id": {"tenant": "acme", "n": n}, "rev": 2 if n == 1 else 1, "n": n} for n in range(3)
    ]
    (letter,) = db.testnum_dlq.find()
    assert letter["key"] == invalid and letter["code"] == "schema_mismatch"
    assert "the key does not match JSON schema id" in letter["reason"] and "n" in letter["reason"]
    assert committed_offsets(job.topic, job.consumer_group)[0] == 5
