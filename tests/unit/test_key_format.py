"""key_format without a registry: keys in Confluent's wire format decoded on the record path (a
small stand-in registry client, as in test_schema_formats): the key ``_id`` is the decoded key
(Hypothesis over primitive and record keys), MongoDB's ``_id`` rules, dead letters that name the
key, tombstones, key routing and key processors, and the options' refusals. The real registry
and broker are in tests/integration/test_registry_keys.py."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pytest
from bson import BSON
from confluent_kafka import Message
from confluent_kafka.schema_registry import Schema
from fakes import FakeRegistryClient
from hypothesis import given
from hypothesis import strategies as st

from kafka_mongo_etl.errors import ConnectionProblem
from kafka_mongo_etl.options import KEY_FORMATS, VALUE_FORMATS, form_params, option_problems
from kafka_mongo_etl.processors import Chain
from kafka_mongo_etl.records import BadRecordError, id_identity
from kafka_mongo_etl.routing import routed
from kafka_mongo_etl.schema_formats import (
    AvroValues,
    JsonSchemaValues,
    RegistrySettings,
    SchemaCache,
    decoded_key_ids,
    registry_decoders,
)
from kafka_mongo_etl.write_models import record_path

SETTINGS = RegistrySettings("schema_registry_default", "http://registry:8081")
VALUE = b'{"name": "n", "n": 1}'


def message(key: bytes | None, value: bytes | None = VALUE) -> Message:
    """A record as the consumer gives it, at t:0:7."""
    return Message(topic="t", partition=0, offset=7, key=key, value=value)


CUSTOMER_KEY = {
    "type": "record",
    "name": "CustomerKey",
    "fields": [{"name": "region", "type": "string"}, {"name": "id", "type": "long"}],
}
LISTED = {"type": "array", "items": "string"}
MAPPED = {
    "type": "record",
    "name": "Mapped",
    "fields": [{"name": "parts", "type": {"type": "map", "values": "string"}}],
}
SCHEMAS = {
    1: Schema(json.dumps(CUSTOMER_KEY), "AVRO"),
    2: Schema(json.dumps("string"), "AVRO"),
    3: Schema(json.dumps("long"), "AVRO"),
    4: Schema(json.dumps(LISTED), "AVRO"),
    5: Schema(json.dumps(MAPPED), "AVRO"),
    6: Schema(json.dumps({"type": "string", "minLength": 1}), "JSON"),
    7: Schema(json.dumps("null"), "AVRO"),
}


def avro_key(schema: Any, value: Any, schema_id: int) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), value)
    return b"\x00" + schema_id.to_bytes(4, "big") + out.getvalue()


def key_decoder(client: FakeRegistryClient | None = None, fmt: type = AvroValues) -> Any:
    return fmt(SchemaCache(SETTINGS, client or FakeRegistryClient(SCHEMAS)), "key")


def build(write_mode: str = "replace", processors: Any = None, decoder: Any = None) -> Any:
    builder, _ = record_path(write_mode, "key", processors=processors, key_decoder=decoder or key_decoder())
    return builder


def test_key_format_offers_the_value_formats() -> None:
    assert set(KEY_FORMATS) == set(VALUE_FORMATS)
    param = form_params()["key_format"]
    assert param.value == "json" and param.schema["enum"] == list(KEY_FORMATS)


def test_options_refuse_unknown_key_formats_and_cdc_with_a_registry_key() -> None:
    assert any("unknown key_format 'xml'" in p for p in option_problems({"key_format": "xml"}))
    cdc = option_problems({"key_format": "avro", "write_mode": "cdc"})
    assert len(cdc) == 1 and "key_format 'avro'" in cdc[0] and "cdc" in cdc[0]
    assert option_problems({"key_format": "avro"}) == []
    assert option_problems({"key_format": "protobuf", "value_format": "avro"}) == []
    with pytest.raises(ValueError, match="key_format other than json"):
        record_path("cdc", "key", key_decoder=key_decoder())


def test_registry_decoders_share_one_schema_cache_and_name_the_option(monkeypatch) -> None:
    assert registry_decoders("json", "json", "no_such_connection") == (None, None)
    with pytest.raises(ValueError, match="unknown key_format 'xml'"):
        registry_decoders("json", "xml")
    monkeypatch.setenv("AIRFLOW_CONN_SCHEMA_REGISTRY_DEFAULT", '{"conn_type": "http", "host": "reg"}')
    values, keys = registry_decoders("avro", "json_schema")
    assert values is not None and keys is not None
    assert values.schemas is keys.schemas and (values.side, keys.side) == ("value", "key")
    assert registry_decoders("json", "avro")[0] is None


AVRO_PRIMITIVES = st.one_of(
    st.tuples(st.just("string"), st.text()),
    st.tuples(st.just("long"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("int"), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.just("boolean"), st.booleans()),
    st.tuples(st.just("double"), st.floats(allow_nan=False)),
    st.tuples(st.just("bytes"), st.binary()),
)


@given(AVRO_PRIMITIVES)
def test_a_primitive_key_is_the_id_as_it_is(typed: tuple[str, Any]) -> None:
    kind, key = typed
    decoder = key_decoder(FakeRegistryClient({9: Schema(json.dumps(kind), "AVRO")}))
    document = build(decoder=decoder)(message(avro_key(kind, key, 9)))
    assert document.id == key and type(document.id) is type(key)
    assert BSON(document.body.raw).decode()["_id"] == key
    assert document.body["name"] == "n"


@given(st.text(), st.integers(-(2**63), 2**63 - 1), st.text(), st.integers(-(2**63), 2**63 - 1))
def test_a_record_key_is_an_embedded_id_and_equal_keys_are_one_identity(
    region: str, n: int, other_region: str, other_n: int
) -> None:
    make = build()
    first = make(message(avro_key(CUSTOMER_KEY, {"region": region, "id": n}, 1)))
    assert first.id == {"region": region, "id": n} and list(first.id) == ["region", "id"]
    assert BSON(first.body.raw).decode()["_id"] == {"region": region, "id": n}
    second = make(message(avro_key(CUSTOMER_KEY, {"region": other_region, "id": other_n}, 1)))
    same = (region, n) == (other_region, other_n)
    assert (first.identity == second.identity) == same
    assert first.identity == id_identity({"region": region, "id": n})


def test_ids_mongodb_refuses_are_dead_letters() -> None:
    make = build()
    with pytest.raises(BadRecordError) as caught:
        make(message(avro_key(LISTED, ["a", "b"], 4)))
    assert caught.value.code == "invalid_id" and "array" in str(caught.value)
    for name in ("$ref", "a.b"):
        with pytest.raises(BadRecordError) as caught:
            make(message(avro_key(MAPPED, {"parts": {name: "x"}}, 5)))
        assert caught.value.code == "invalid_id" and name in str(caught.value)
    assert make(message(avro_key(MAPPED, {"parts": {"x": "y"}}, 5))).id == {"parts": {"x": "y"}}


def test_keys_that_do_not_decode_are_dead_letters_naming_the_key() -> None:
    make = build()
    good = avro_key(CUSTOMER_KEY, {"region": "eu", "id": 1}, 1)
    cases = {
        b"plain-text-key": ("bad_wire_format", "the key starts with byte 0x70"),
        b"\x00\x00": ("bad_wire_format", "the key is 2 bytes"),
        b"\x00\x00\x00\x01\x00" + good[5:]: ("unknown_schema", "the key's schema id 256"),
        good[:-1]: ("schema_mismatch", "the key's payload does not decode with Avro schema id 1"),
        good + b"\x00": ("schema_mismatch", "1 bytes of the key are left over"),
        b"\x00\x00\x00\x00\x06" + b'"x"': ("schema_mismatch", "is a JSON schema, but key_format reads AVRO"),
    }
    for key, (code, reason) in cases.items():
        with pytest.raises(BadRecordError) as caught:
            make(message(key))
        assert caught.value.code == code, (key, caught.value)
        assert reason in str(caught.value) and "t[0]@7" in str(caught.value), str(caught.value)


def test_no_key_or_a_null_key_is_no_id() -> None:
    make = build()
    for key, reason in ((None, "record has no key"), (avro_key("null", None, 7), "decodes to null")):
        with pytest.raises(BadRecordError) as caught:
            make(message(key))
        assert caught.value.code == "no_id" and reason in str(caught.value)


def test_a_tombstone_deletes_the_decoded_key_and_an_undecodable_one_is_a_dead_letter() -> None:
    make = build("delete_on_tombstone")
    tombstone = make(message(avro_key(CUSTOMER_KEY, {"region": "eu", "id": 3}, 1), None))
    assert tombstone.body is None and tombstone.id == {"region": "eu", "id": 3}
    assert tombstone.identity == make(message(avro_key(CUSTOMER_KEY, {"region": "eu", "id": 3}, 1))).identity
    with pytest.raises(BadRecordError) as caught:
        make(message(b"eu-3", None))
    assert caught.value.code == "bad_wire_format" and "the key" in str(caught.value)


def test_a_registry_that_cannot_be_asked_fails_the_task() -> None:
    down = key_decoder(FakeRegistryClient({}, ConnectionError("refused")))
    with pytest.raises(ConnectionProblem, match="could not be reached"):
        build(decoder=down)(message(avro_key("string", "k", 2)))


def test_json_schema_keys_may_be_primitives_and_are_validated() -> None:
    make = build(decoder=key_decoder(fmt=JsonSchemaValues))
    assert make(message(b"\x00\x00\x00\x00\x06" + b'"k-1"')).id == "k-1"
    with pytest.raises(BadRecordError) as caught:
        make(message(b"\x00\x00\x00\x00\x06" + b'""'))
    assert caught.value.code == "schema_mismatch" and "the key does not match" in str(caught.value)
    with pytest.raises(BadRecordError) as caught:
        make(message(b"\x00\x00\x00\x00\x06" + b"{nope"))
    assert caught.value.code == "not_json" and "key" in str(caught.value)


def test_key_processors_shape_the_decoded_key() -> None:
    make = build(processors=[{"type": "rename", "on": "key", "fields": {"id": "customer"}}])
    document = make(message(avro_key(CUSTOMER_KEY, {"region": "eu", "id": 4}, 1)))
    assert document.id == {"region": "eu", "customer": 4}
    primitive = build(processors=[{"type": "block", "on": "key", "fields": ["x"]}])
    with pytest.raises(BadRecordError) as caught:
        primitive(message(avro_key("string", "k", 2)))
    assert caught.value.code == "no_id" and "not a record" in str(caught.value)


def test_key_routes_read_the_decoded_key() -> None:
    decoder = key_decoder()
    by_field = routed(build(decoder=decoder), "key.region", "db", decoder)
    assert by_field(message(avro_key(CUSTOMER_KEY, {"region": "eu", "id": 1}, 1))).collection == "eu"
    # The id strategy need not read the key for a key route to decode it.
    builder, _ = record_path("replace", "coordinates", key_decoder=decoder)
    whole = routed(builder, "key", "db", decoder)
    assert whole(message(avro_key("string", "orders", 2))).collection == "orders"
    with pytest.raises(BadRecordError) as caught:
        whole(message(avro_key("long", 5, 3)))
    assert caught.value.code == "bad_route" and "int 5" in str(caught.value)
    with pytest.raises(BadRecordError) as caught:
        whole(message(b"orders"))
    assert caught.value.code == "bad_wire_format"


@given(st.one_of(st.integers(max_value=-(2**63) - 1), st.integers(min_value=2**63)))
def test_an_integer_beyond_int64_in_a_key_is_out_of_range(big: int) -> None:
    # Protobuf's uint64 decodes so; a tombstone's _id would only fail in the delete itself.
    id_for = decoded_key_ids(lambda _message: {"id": {"parts": [1, big]}}, Chain())
    with pytest.raises(BadRecordError) as caught:
        id_for(message(b"\x00"), {})
    assert caught.value.code == "number_out_of_range" and str(big) in str(caught.value)
    assert decoded_key_ids(lambda _message: 2**63 - 1, Chain())(message(b"\x00"), {}) == 2**63 - 1
