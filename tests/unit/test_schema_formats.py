"""schema_formats without a registry: the wire-format parser (Hypothesis), the Avro → BSON type
mapping, how a connection becomes the registry's URL, and the schema cache's answers (a small
stand-in client; the real registry is in tests/integration/test_schema_registry.py)."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import uuid
from typing import Any

import fastavro
import pytest
from bson import Binary, Decimal128
from confluent_kafka import Message
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fakes import FakeRegistryClient
from hypothesis import given
from hypothesis import strategies as st

from kafka_mongo_etl.errors import ConnectionProblem
from kafka_mongo_etl.options import VALUE_FORMATS, option_problems
from kafka_mongo_etl.records import BAD_RECORD_CODES, BadRecordError
from kafka_mongo_etl.schema_formats import (
    FORMATS,
    AvroValues,
    RegistrySettings,
    SchemaCache,
    WireFormatError,
    parse_message_indexes,
    parse_wire,
)


def message(value: bytes | None, key: bytes | None = b"k") -> Message:
    """A record as the consumer gives it, at t:0:7."""
    return Message(topic="t", partition=0, offset=7, key=key, value=value)


SETTINGS = RegistrySettings("schema_registry_default", "http://registry:8081")


def test_every_value_format_but_json_has_a_decoder_and_codes_are_declared() -> None:
    assert set(VALUE_FORMATS) == {"json", *FORMATS}
    assert {"bad_wire_format", "unknown_schema", "schema_mismatch"} <= set(BAD_RECORD_CODES)


@given(schema_id=st.integers(0, 2**32 - 1), payload=st.binary(max_size=64))
def test_parse_wire_reads_back_what_the_wire_format_frames(schema_id: int, payload: bytes) -> None:
    assert parse_wire(b"\x00" + schema_id.to_bytes(4, "big") + payload) == (schema_id, payload)


@given(raw=st.binary(max_size=4))
def test_parse_wire_refuses_values_shorter_than_the_header(raw: bytes) -> None:
    with pytest.raises(WireFormatError, match=f"the value is {len(raw)} bytes"):
        parse_wire(raw)


@given(first=st.integers(1, 255), rest=st.binary(min_size=4, max_size=32))
def test_parse_wire_refuses_any_other_magic_byte(first: int, rest: bytes) -> None:
    with pytest.raises(WireFormatError, match=f"starts with byte 0x{first:02x}"):
        parse_wire(bytes([first]) + rest)


def zigzag_varint(number: int) -> bytes:
    value = (number << 1) ^ (number >> 63)
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


@given(indexes=st.lists(st.integers(0, 2**31), min_size=1, max_size=5), body=st.binary(max_size=16))
def test_message_indexes_read_back_what_the_serializer_writes(indexes: list[int], body: bytes) -> None:
    framed = zigzag_varint(len(indexes)) + b"".join(zigzag_varint(i) for i in indexes) + body
    assert parse_message_indexes(framed) == (indexes, body)
    # The serializer's short form for the first message: a lone 0.
    assert parse_message_indexes(b"\x00" + body) == ([0], body)


@given(cut=st.binary(min_size=1, max_size=3).map(lambda b: bytes(x | 0x80 for x in b)))
def test_message_indexes_cut_short_are_refused(cut: bytes) -> None:
    with pytest.raises(WireFormatError, match="varint"):
        parse_message_indexes(b"\x04" + cut)


EVERY_TYPE = {
    "type": "record",
    "name": "Every",
    "fields": [
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 3}},
        {"name": "at_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "at_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "clock", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "raw", "type": "bytes"},
        {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 2}},
        {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "BLUE"]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "counts", "type": {"type": "map", "values": "long"}},
        {
            "name": "maybe",
            "type": ["null", {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "int"}]}],
        },
    ],
}
REF = uuid.UUID("12345678-1234-5678-1234-567812345678")
AT = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def avro_bytes(schema: dict[str, Any], value: dict[str, Any], schema_id: int = 3) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), value)
    return b"\x00" + schema_id.to_bytes(4, "big") + out.getvalue()


def test_avro_logical_types_become_the_bson_types_a_user_expects() -> None:
    every_type = FakeRegistryClient({3: Schema(json.dumps(EVERY_TYPE), "AVRO")})
    decode = AvroValues(SchemaCache(SETTINGS, every_type))
    value = {
        "price": decimal.Decimal("123456789.125"),
        "at_ms": AT,
        "at_us": AT,
        "day": dt.date(2026, 2, 28),
        "clock": dt.time(13, 14, 15, 16),
        "ref": REF,
        "raw": b"\x00\xff",
        "hash": b"ab",
        "colour": "BLUE",
        "tags": ["a"],
        "counts": {"n": 2**40},
        "maybe": {"x": 1},
    }
    decoded = decode(message(avro_bytes(EVERY_TYPE, value)))
    assert decoded == {
        "price": Decimal128("123456789.125"),
        "at_ms": AT.replace(microsecond=678000),
        "at_us": AT,  # BSON keeps milliseconds: the encoder cuts the rest when the document is written
        "day": dt.datetime(2026, 2, 28, tzinfo=dt.UTC),
        "clock": "13:14:15.000016",
        "ref": Binary.from_uuid(REF),
        "raw": b"\x00\xff",
        "hash": b"ab",
        "colour": "BLUE",
        "tags": ["a"],
        "counts": {"n": 2**40},
        "maybe": {"x": 1},
    }


def test_a_decimal_beyond_decimal128_is_a_dead_letter() -> None:
    wide = {
        "type": "record",
        "name": "Wide",
        "fields": [
            {"name": "d", "type": {"type": "bytes", "logicalType": "decimal", "precision": 60, "scale": 0}}
        ],
    }
    decode = AvroValues(SchemaCache(SETTINGS, FakeRegistryClient({3: Schema(json.dumps(wide), "AVRO")})))
    with pytest.raises(BadRecordError) as caught:
        decode(message(avro_bytes(wide, {"d": decimal.Decimal("1234567890" * 4)})))
    assert caught.value.code == "number_out_of_range" and "Decimal128" in str(caught.value)


def test_unknown_ids_are_asked_once_and_a_refusing_registry_fails_the_task() -> None:
    client = FakeRegistryClient({})
    decode = AvroValues(SchemaCache(SETTINGS, client))
    for _ in range(3):
        with pytest.raises(BadRecordError) as caught:
            decode(message(b"\x00\x00\x00\x00\x09abc"))
        assert caught.value.code == "unknown_schema" and "schema id 9" in str(caught.value)
    assert client.calls == 1

    failing = AvroValues(
        SchemaCache(SETTINGS, FakeRegistryClient({}, SchemaRegistryError(401, 40101, "Unauthorized")))
    )
    with pytest.raises(
        ConnectionProblem, match=r"'schema_registry_default' at http://registry:8081 answered HTTP 401"
    ):
        failing(message(b"\x00\x00\x00\x00\x09abc"))


def test_a_tombstone_stays_a_tombstone() -> None:
    decode = AvroValues(SchemaCache(SETTINGS, FakeRegistryClient({})))
    with pytest.raises(BadRecordError) as caught:
        decode(message(None))
    assert caught.value.code == "tombstone"


@pytest.mark.parametrize(
    ("conn", "url", "auth"),
    [
        ({"conn_type": "http", "host": "reg", "port": 8081}, "http://reg:8081", None),
        (
            {
                "conn_type": "https",
                "host": "reg",
                "port": 443,
                "schema": "apis/ccompat/v7",
                "login": "u",
                "password": "p",
            },
            "https://reg:443/apis/ccompat/v7",
            "u:p",
        ),
        ({"conn_type": "generic", "host": "http://reg/path/"}, "http://reg/path", None),
        (
            {"conn_type": "http", "extra": {"url": "https://sr.example/", "timeout": 5}},
            "https://sr.example",
            None,
        ),
    ],
)
def test_the_connection_gives_the_url_and_credentials(monkeypatch, conn, url, auth) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SR_TEST", json.dumps(conn))
    settings = RegistrySettings.from_connection("sr_test")
    assert settings.url == url and settings.client_config["url"] == url
    assert settings.client_config.get("basic.auth.user.info") == auth
    if "extra" in conn:
        assert settings.client_config["timeout"] == 5


def test_a_missing_connection_is_named() -> None:
    with pytest.raises(ConnectionProblem, match="'no_such_registry' could not be read"):
        RegistrySettings.from_connection("no_such_registry")


def test_options_refuse_unknown_formats_and_cdc_with_a_registry_format() -> None:
    assert any("unknown value_format 'xml'" in p for p in option_problems({"value_format": "xml"}))
    assert any(
        "write_mode 'cdc'" in p for p in option_problems({"value_format": "avro", "write_mode": "cdc"})
    )
    assert option_problems({"value_format": "avro"}) == []
