"""value_format avro, json_schema and protobuf end to end: records written by confluent-kafka's own
serializers against a real Schema Registry (Apicurio, devstack.registry), drained by
``run_consume`` into the MongoDB-wire server. Keys with several versions (the latest wins), a
schema evolving within the topic, Avro logical types landing as BSON types, dead letters for
values that are not the wire format, of unknown schemas and corrupt payloads, offsets committed
after the write, and a registry that cannot be reached failing the task."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
from dataclasses import replace
from typing import Any

import pytest
from bson import Decimal128
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from kafka_mongo_etl.drain import DrainSettings
from kafka_mongo_etl.errors import ConnectionProblem
from kafka_mongo_etl.tasks import ConsumeJob, DeadLetterPolicy, run_consume

ORDER_V1 = {
    "type": "record",
    "name": "Order",
    "namespace": "etl.test",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "status", "type": "string"},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "due", "type": {"type": "int", "logicalType": "date"}},
        {"name": "blob", "type": "bytes"},
    ],
}
# v2 adds a defaulted field: BACKWARD compatible, so the registry takes it under the same subject.
ORDER_V2 = {
    **ORDER_V1,
    "fields": [*ORDER_V1["fields"], {"name": "note", "type": ["null", "string"], "default": None}],
}
PLACED = dt.datetime(2026, 12, 7, 4, 30, 15, 123000, tzinfo=dt.UTC)
CUSTOMER_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Customer",
    "type": "object",
    "properties": {"name": {"type": "string"}, "tier": {"type": "integer", "minimum": 0}},
    "required": ["name", "tier"],
}


@pytest.fixture
def job(connections, make_job, registry_client) -> ConsumeJob:
    return make_job(
        value_format="avro",
        drain=DrainSettings(batch_size=50, stall_timeout=10),
        dead_letter_policy=DeadLetterPolicy(max_count=None),
    )


def order(n: int, status: str, **more: Any) -> dict[str, Any]:
    return {
        "id": n,
        "status": status,
        "amount": decimal.Decimal(f"{n}.{n % 100:02d}"),
        "placed_at": PLACED,
        "due": dt.date(2027, 1, n % 28 + 1),
        "blob": bytes([n % 256, 0, 255]),
        **more,
    }


def test_avro_records_load_with_bson_types_latest_version_wins_and_schema_evolves(
    job, send_bytes, mongo_client, registry_client, committed_offsets
) -> None:
    context = SerializationContext(job.topic, MessageField.VALUE)
    v1 = AvroSerializer(registry_client, json.dumps(ORDER_V1))
    v2 = AvroSerializer(registry_client, json.dumps(ORDER_V2))
    records = [(f"order-{n}".encode(), v1(order(n, "new"), context)) for n in range(10)]
    # Keys 0-4 again, written with v2 (new field): the latest version of each must win.
    records += [(f"order-{n}".encode(), v2(order(n, "paid", note=f"paid {n}"), context)) for n in range(5)]
    send_bytes(job.topic, records)
    assert records[0][1][0] == 0 and records[10][1][1:5] != records[0][1][1:5]  # two schema ids

    result = run_consume(job)

    # 15 records, 10 keys: the 5 older versions are superseded within the batch.
    assert (result["records"], result["loaded"], result["dead_letters"]) == (15, 10, 0)
    documents = {d["_id"]: d for d in mongo_client[job.mongo_db].testnum.find()}
    assert set(documents) == {f"order-{n}" for n in range(10)}
    for n in range(10):
        found = documents[f"order-{n}"]
        assert found["status"] == ("paid" if n < 5 else "new")
        assert found.get("note") == (f"paid {n}" if n < 5 else None)
        assert ("note" in found) == (n < 5)
        assert found["amount"] == Decimal128(decimal.Decimal(f"{n}.{n % 100:02d}"))
        assert found["placed_at"] == PLACED.replace(tzinfo=None)  # pymongo reads BSON dates naive UTC
        assert found["due"] == dt.datetime(2027, 1, n % 28 + 1)
        assert found["blob"] == bytes([n % 256, 0, 255])
        assert found["id"] == n
        assert found["_kafka"]["topic"] == job.topic
    assert committed_offsets(job.topic, job.consumer_group)[0] == 15


def test_bad_wire_format_unknown_schema_and_corrupt_payload_are_dead_letters(
    job, send_bytes, mongo_client, registry_client, committed_offsets
) -> None:
    context = SerializationContext(job.topic, MessageField.VALUE)
    good = AvroSerializer(registry_client, json.dumps(ORDER_V1))(order(1, "new"), context)
    schema_id = int.from_bytes(good[1:5], "big")
    unknown_id = schema_id + 100_000
    bad = {
        b"json": (b'{"id": 2}', "bad_wire_format", "magic byte"),
        b"short": (b"\x00\x00\x01", "bad_wire_format", "3 bytes"),
        b"unknown": (b"\x00" + unknown_id.to_bytes(4, "big") + good[5:], "unknown_schema", f"{unknown_id}"),
        b"truncated": (good[:-4], "schema_mismatch", f"schema id {schema_id}"),
        b"extra": (good + b"\x01\x02", "schema_mismatch", "left over"),
    }
    send_bytes(job.topic, [(b"good-1", good), *((key, value) for key, (value, *_) in bad.items())])

    result = run_consume(job)

    db = mongo_client[job.mongo_db]
    assert (result["records"], result["loaded"], result["dead_letters"]) == (6, 1, 5)
    assert [d["_id"] for d in db.testnum.find()] == ["good-1"]
    letters = {d["key"]: d for d in db.testnum_dlq.find()}
    assert set(letters) == set(bad)
    for key, (value, code, named) in bad.items():
        assert letters[key]["code"] == code, letters[key]
        assert named in letters[key]["reason"], letters[key]["reason"]
        assert letters[key]["value"] == value
    assert result["dead_letter_reasons"] == {"bad_wire_format": 2, "unknown_schema": 1, "schema_mismatch": 2}
    assert committed_offsets(job.topic, job.consumer_group)[0] == 6


def test_json_schema_values_are_validated_and_loaded(
    job, send_bytes, mongo_client, registry_client, committed_offsets
) -> None:
    context = SerializationContext(job.topic, MessageField.VALUE)
    serialize = JSONSerializer(json.dumps(CUSTOMER_SCHEMA), registry_client)
    good = [(f"c-{n}".encode(), serialize({"name": f"name {n}", "tier": n}, context)) for n in range(4)]
    good.append((b"c-1", serialize({"name": "renamed", "tier": 7}, context)))
    header = good[0][1][:5]
    # Valid JSON in the wire format that breaks its schema (the serializer would refuse to write it).
    invalid = (b"c-bad", header + json.dumps({"name": "x", "tier": -1}).encode())
    other = SerializationContext(job.topic + ".other", MessageField.VALUE)  # a subject of its own
    avro_id = AvroSerializer(registry_client, json.dumps(ORDER_V1))(order(1, "new"), other)[:5]
    wrong_type = (b"c-avro", avro_id + b'{"name": "y", "tier": 1}')
    send_bytes(job.topic, [*good, invalid, wrong_type])

    result = run_consume(replace(job, value_format="json_schema"))

    db = mongo_client[job.mongo_db]
    assert (result["records"], result["loaded"], result["dead_letters"]) == (7, 4, 2)  # c-1 twice
    documents = {d["_id"]: {k: v for k, v in d.items() if k != "_kafka"} for d in db.testnum.find()}
    assert documents == {
        "c-0": {"_id": "c-0", "name": "name 0", "tier": 0},
        "c-1": {"_id": "c-1", "name": "renamed", "tier": 7},
        "c-2": {"_id": "c-2", "name": "name 2", "tier": 2},
        "c-3": {"_id": "c-3", "name": "name 3", "tier": 3},
    }
    letters = {d["key"]: d for d in db.testnum_dlq.find()}
    assert letters[b"c-bad"]["code"] == "schema_mismatch" and "tier" in letters[b"c-bad"]["reason"]
    assert letters[b"c-avro"]["code"] == "schema_mismatch" and "AVRO" in letters[b"c-avro"]["reason"]
    assert committed_offsets(job.topic, job.consumer_group)[0] == 7


def test_registry_down_fails_the_task_naming_it_commits_nothing_and_the_retry_loads_once(
    job, send_bytes, mongo_client, registry_client, monkeypatch, committed_offsets
) -> None:
    from devstack.process import free_port

    context = SerializationContext(job.topic, MessageField.VALUE)
    serialize = AvroSerializer(registry_client, json.dumps(ORDER_V1))
    send_bytes(job.topic, [(f"order-{n}".encode(), serialize(order(n, "new"), context)) for n in range(3)])
    assert run_consume(job)["loaded"] == 3
    send_bytes(
        job.topic,
        [(f"order-{n}".encode(), serialize(order(n, "paid"), context)) for n in range(2, 6)],
    )
    working = json.loads(os.environ["AIRFLOW_CONN_SCHEMA_REGISTRY_DEFAULT"])
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/apis/ccompat/v7"
    monkeypatch.setenv(
        "AIRFLOW_CONN_SCHEMA_REGISTRY_DEFAULT", json.dumps({"conn_type": "http", "extra": {"url": url}})
    )

    with pytest.raises(ConnectionProblem, match=rf"'schema_registry_default' at {url} could not be reached"):
        run_consume(replace(job, batch="test/run-2", run_id="run-2"))

    db = mongo_client[job.mongo_db]
    assert committed_offsets(job.topic, job.consumer_group)[0] == 3
    assert db.testnum_dlq.count_documents({}) == 0
    assert {d["_id"]: d["status"] for d in db.testnum.find()} == {f"order-{n}": "new" for n in range(3)}

    # The registry is back: the retry loads the 4 records once, the latest version of order-2 wins.
    monkeypatch.setenv("AIRFLOW_CONN_SCHEMA_REGISTRY_DEFAULT", json.dumps(working))
    retry = run_consume(replace(job, batch="test/run-2", run_id="run-2"))
    assert (retry["records"], retry["dead_letters"]) == (4, 0)
    assert {d["_id"]: d["status"] for d in db.testnum.find()} == {
        "order-0": "new",
        "order-1": "new",
        **{f"order-{n}": "paid" for n in range(2, 6)},
    }
    assert committed_offsets(job.topic, job.consumer_group)[0] == 7


def order_message_class() -> Any:
    """A Protobuf message class built at run time (no protoc): Order with a nested Line, an enum,
    a repeated and a map field, a Timestamp and proto3 ``optional`` presence."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="etl_order.proto",
        package="etl.test",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    proto.enum_type.add(name="Status", value=[{"name": "NEW", "number": 0}, {"name": "PAID", "number": 1}])
    message = proto.message_type.add(name="Order")
    line = message.nested_type.add(name="Line")
    line.field.add(name="sku", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    line.field.add(name="qty", number=2, type=field.TYPE_INT32, label=field.LABEL_OPTIONAL)
    entry = message.nested_type.add(name="AttrsEntry", options={"map_entry": True})
    entry.field.add(name="key", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=field.TYPE_INT64, label=field.LABEL_OPTIONAL)
    add = message.field.add
    add(name="id", number=1, type=field.TYPE_INT64, label=field.LABEL_OPTIONAL)
    add(
        name="status",
        number=2,
        type=field.TYPE_ENUM,
        type_name=".etl.test.Status",
        label=field.LABEL_OPTIONAL,
    )
    add(
        name="lines",
        number=3,
        type=field.TYPE_MESSAGE,
        type_name=".etl.test.Order.Line",
        label=field.LABEL_REPEATED,
    )
    add(
        name="attrs",
        number=4,
        type=field.TYPE_MESSAGE,
        type_name=".etl.test.Order.AttrsEntry",
        label=field.LABEL_REPEATED,
    )
    add(
        name="placed_at",
        number=5,
        type=field.TYPE_MESSAGE,
        type_name=".google.protobuf.Timestamp",
        label=field.LABEL_OPTIONAL,
    )
    add(
        name="note",
        number=6,
        type=field.TYPE_STRING,
        label=field.LABEL_OPTIONAL,
        proto3_optional=True,
        oneof_index=0,
    )
    message.oneof_decl.add(name="_note")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("etl.test.Order"))


def test_protobuf_records_load_latest_version_wins_and_corrupt_payloads_are_dead_letters(
    job, send_bytes, mongo_client, registry_client, committed_offsets
) -> None:
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer

    context = SerializationContext(job.topic, MessageField.VALUE)
    order_class = order_message_class()
    serialize = ProtobufSerializer(order_class, registry_client, {"use.deprecated.format": False})

    def proto_order(n: int, status: int, **more: Any) -> bytes:
        placed = order_class().placed_at.__class__()
        placed.FromDatetime(PLACED)
        lines = [order_class.Line(sku=f"sku-{n}", qty=n)]
        return serialize(
            order_class(id=n, status=status, lines=lines, attrs={"n": n}, placed_at=placed, **more), context
        )

    records = [(f"p-{n}".encode(), proto_order(n, 0)) for n in range(4)]
    records += [(b"p-1", proto_order(1, 1, note="paid"))]
    corrupt = records[0][1][:6] + b"\xff\xff\xff"
    records += [(b"p-corrupt", corrupt), (b"p-indexes", records[0][1][:5] + b"\x02\x0a")]
    send_bytes(job.topic, records)

    result = run_consume(replace(job, value_format="protobuf"))

    db = mongo_client[job.mongo_db]
    assert (result["records"], result["loaded"], result["dead_letters"]) == (7, 4, 2)
    documents = {d["_id"]: {k: v for k, v in d.items() if k != "_kafka"} for d in db.testnum.find()}
    placed = PLACED.replace(tzinfo=None)
    expected = {
        f"p-{n}": {
            "_id": f"p-{n}",
            "id": n,
            "status": "NEW",
            "lines": [{"sku": f"sku-{n}", "qty": n}],
            "attrs": {"n": n},
            "placed_at": placed,
        }
        for n in range(4)
    }
    expected["p-1"].update(status="PAID", note="paid")
    assert documents == expected
    letters = {d["key"]: d for d in db.testnum_dlq.find()}
    assert (
        letters[b"p-corrupt"]["code"] == "schema_mismatch"
        and "etl.test.Order" in letters[b"p-corrupt"]["reason"]
    )
    assert letters[b"p-indexes"]["code"] == "schema_mismatch" and "[5]" in letters[b"p-indexes"]["reason"]
    assert committed_offsets(job.topic, job.consumer_group)[0] == 7


def test_avro_loaded_as_json_by_mistake_replays_once_value_format_is_fixed(
    job, send_bytes, mongo_client, registry_client
) -> None:
    from kafka_mongo_etl.replay import run_replay

    context = SerializationContext(job.topic, MessageField.VALUE)
    serialize = AvroSerializer(registry_client, json.dumps(ORDER_V1))
    send_bytes(job.topic, [(f"order-{n}".encode(), serialize(order(n, "new"), context)) for n in range(3)])

    loaded_as_json = run_consume(replace(job, value_format="json"))
    db = mongo_client[job.mongo_db]
    assert (loaded_as_json["loaded"], loaded_as_json["dead_letters"]) == (0, 3)

    summary = run_replay(
        {
            "mongo_db": job.mongo_db,
            "mongo_collection": "testnum",
            "run_id": job.run_id,
            "value_format": "avro",
        }
    )

    assert (summary["selected"], summary["loaded"], summary["still_failing"]) == (3, 3, {})
    assert db.testnum_dlq.count_documents({}) == 0
    documents = {d["_id"]: d for d in db.testnum.find()}
    assert set(documents) == {"order-0", "order-1", "order-2"}
    assert documents["order-2"]["amount"] == Decimal128("2.02") and documents["order-2"]["status"] == "new"
