"""Debezium change events to documents (write_mode ``cdc``), on events captured from a real
Debezium PostgreSQL connector (tests/unit/data/debezium_postgres_events.json says how): the row's
types, the ``_id`` from the primary key, deletes and tombstones, truncate and malformed events as
dead letters, and a mirror that any batching and any re-read from a committed offset leaves equal
to the table."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import decimal
import json
from pathlib import Path
from typing import Any

import bson
import hypothesis.strategies as st
import pytest
from bson import Decimal128
from confluent_kafka import Message
from hypothesis import given, settings

from kafka_mongo_etl import cdc as cdc_module
from kafka_mongo_etl.cdc import CdcSettings, change_events
from kafka_mongo_etl.ids import id_function
from kafka_mongo_etl.records import BAD_RECORD_CODES, BadRecordError, json_document
from kafka_mongo_etl.write_models import WRITE_MODELS, DeleteOnTombstoneModel, record_builder

CAPTURED = json.loads((Path(__file__).parent / "data" / "debezium_postgres_events.json").read_text())
SCHEMA, PLAIN = "cap_json_schema", "cap_json_plain"


def events(connector: str, table: str) -> list[Message]:
    """The captured records of one topic, as the consumer hands them over."""
    topic = f"{connector}:{table}"
    return [
        Message(
            topic=topic,
            partition=0,
            offset=record["offset"],
            key=None if record["key"] is None else record["key"].encode(),
            value=None if record["value"] is None else record["value"].encode(),
            headers=[(k, None if v is None else v.encode()) for k, v in record["headers"]],
        )
        for record in CAPTURED["topics"][topic]
    ]


def apply(collection: dict[Any, dict], messages: list[Message], cdc: CdcSettings | None = None) -> None:
    """What the write model does with one batch: the latest document per ``_id`` is written
    (replaced) or, without a body, deleted."""
    build = change_events(cdc)
    latest = {}
    for message in messages:
        document = build(message)
        latest[document.identity] = document
    for document in latest.values():
        if document.body is None:
            collection.pop(document.identity, None)
        else:
            collection[document.identity] = bson.decode(document.body.raw)


def rows(collection: dict[Any, dict]) -> dict[Any, dict]:
    """The documents without the Kafka and CDC metadata, by ``_id``."""
    return {
        repr(doc["_id"]): {k: v for k, v in doc.items() if k not in ("_kafka", "_cdc")}
        for doc in collection.values()
    }


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


# The table `items` after every statement, as the cdc mode stores it with schemas.enable=true.
ITEM_10 = {
    "_id": 10,
    "id": 10,
    "name": "uno",
    "price": Decimal128("99999999.99"),
    "updated_at": "2026-12-06T10:00:00.123456Z",
    "active": True,
    "note": "n",
    "born": utc(2026, 1, 2),
    "seen": 1767323045678901,
    "ratio": Decimal128("3.14159"),
    "big": 9007199254740993,
    "score": 1.5,
    "seen3": utc(2026, 1, 2, 3, 4, 5, 678000),
}


def decoded(collection: dict) -> dict:
    # bson.decode gives naive UTC datetimes; compare them as UTC.
    return {
        key: {k: v.replace(tzinfo=dt.UTC) if isinstance(v, dt.datetime) else v for k, v in doc.items()}
        for key, doc in rows(collection).items()
    }


def test_the_schema_events_of_a_table_leave_its_rows_with_their_types() -> None:
    collection: dict = {}
    apply(collection, events(SCHEMA, "public.items"))
    assert decoded(collection) == {"10": ITEM_10}
    document = next(iter(collection.values()))
    # Types, not only values: Decimal128 and not a string, an int64 beyond double's integers.
    assert type(document["price"]) is Decimal128 and isinstance(document["big"], int)
    assert list(document) == ["_id", *[k for k in ITEM_10 if k != "_id"], "_cdc", "_kafka"]
    topic = f"{SCHEMA}:public.items"
    assert document["_kafka"] == {"topic": topic, "partition": 0, "offset": 7, "applied": {f"{topic}:0": 7}}
    cdc = document["_cdc"]
    assert cdc["op"] == "c" and isinstance(cdc["lsn"], int) and isinstance(cdc["txId"], int)
    assert cdc["ts"] == utc(2026, 12, 6, 22, 32, 10, 531000).replace(tzinfo=None)


def test_every_event_of_the_captured_run_in_turn() -> None:
    build = change_events()
    items = [build(m) for m in events(SCHEMA, "public.items")]
    # r 1, c 2, u 1, d 2, tombstone 2, d 1 (key change), tombstone 1, c 10.
    assert [d.id for d in items] == [1, 2, 1, 2, 2, 1, 1, 10]
    assert [d.body is None for d in items] == [False, False, False, True, True, True, True, False]
    ops = [bson.decode(d.body.raw)["_cdc"]["op"] for d in items if d.body is not None]
    assert ops == ["r", "c", "u", "c"]
    inserted = bson.decode(items[1].body.raw)
    assert inserted["price"] == Decimal128("-0.01") and inserted["seen3"] is None
    assert inserted["born"] == dt.datetime(1969, 12, 31) and inserted["seen"] == -1
    assert inserted["ratio"] == Decimal128("0") and inserted["score"] == -2.5e10


def test_sub_millisecond_times_become_dates_cut_to_the_millisecond_when_asked() -> None:
    collection: dict = {}
    apply(collection, events(SCHEMA, "public.items"), CdcSettings(times="date"))
    row = decoded(collection)["10"]
    assert row["updated_at"] == utc(2026, 12, 6, 10, 0, 0, 123000)
    assert row["seen"] == utc(2026, 1, 2, 3, 4, 5, 678000)
    assert row == {**ITEM_10, "updated_at": row["updated_at"], "seen": row["seen"]}


def test_without_schemas_values_stay_as_the_json_has_them() -> None:
    collection: dict = {}
    apply(collection, events(PLAIN, "public.items"))
    assert decoded(collection) == {
        "10": {
            **ITEM_10,
            "price": "AlQL4/8=",  # the unscaled integer's bytes: nothing says it is a decimal
            "born": 20455,
            "ratio": {"scale": 5, "value": "BMsv"},
            "seen3": 1767323045678,
        }
    }


@pytest.mark.parametrize("connector", [SCHEMA, PLAIN])
def test_a_composite_primary_key_is_an_embedded_id_in_key_order(connector) -> None:
    build = change_events()
    messages = events(connector, "public.pairs")
    documents = [build(m) for m in messages[:3]]
    assert [d.id for d in documents] == [
        {"region": "eu", "n": 1},
        {"region": "us", "n": 2},
        {"region": "eu", "n": 1},
    ]
    assert list(documents[0].id) == ["region", "n"]
    collection: dict = {}
    apply(collection, messages[:3])
    assert sorted(rows(collection).values(), key=repr) == [
        {"_id": {"region": "eu", "n": 1}, "region": "eu", "n": 1, "qty": 11},
        {"_id": {"region": "us", "n": 2}, "region": "us", "n": 2, "qty": 5},
    ]


@pytest.mark.parametrize("connector", [SCHEMA, PLAIN])
def test_a_truncate_is_a_dead_letter_that_says_what_to_do(connector) -> None:
    truncate = events(connector, "public.pairs")[3]
    with pytest.raises(BadRecordError) as raised:
        change_events()(truncate)
    assert raised.value.code == "truncate"
    assert "public.pairs" in str(raised.value) and "re-snapshot" in str(raised.value)


def with_value(message: Message, value: Any, key: Any = "same") -> Message:
    raw = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
    return Message(
        topic=message.topic(),
        partition=0,
        offset=message.offset(),
        key=message.key() if key == "same" else key,
        value=raw,
    )


def test_a_resnapshot_after_an_update_writes_the_same_document() -> None:
    messages = events(SCHEMA, "public.items")
    update = messages[2]
    envelope = json.loads(update.value())
    envelope["payload"]["op"] = "r"
    resnapshot = with_value(update, envelope)
    once: dict = {}
    apply(once, messages[:3])
    again: dict = copy.deepcopy(once)
    apply(again, [resnapshot])
    assert rows(again) == rows(once)
    assert next(iter(again.values()))["_cdc"]["op"] == "r"


BATCHES = st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=8)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(sizes=BATCHES, crash_after=st.integers(0, 8), committed=st.integers(0, 8))
def test_any_batching_and_any_reread_from_a_committed_offset_leaves_the_table(
    sizes, crash_after, committed
) -> None:
    """Batches of any size; a crash after some batch was written but only an earlier offset
    committed; the retry reads from that offset to the end: the collection is the table."""
    messages = events(SCHEMA, "public.items")
    collection: dict = {}
    start, boundaries = 0, []
    for size in sizes:
        if start >= len(messages):
            break
        boundaries.append((start, min(start + size, len(messages))))
        start += size
    if start < len(messages):
        boundaries.append((start, len(messages)))
    written = boundaries[: crash_after + 1]
    for begin, end in written:
        apply(collection, messages[begin:end])
    restart = min(committed, written[-1][1])  # never past what was written
    apply(collection, messages[restart:])
    assert decoded(collection) == {"10": ITEM_10}


@pytest.mark.parametrize(
    ("value", "key", "code", "says"),
    [
        (b"not json", b'{"id": 1}', "not_json", "not JSON"),
        ([1, 2], b'{"id": 1}', "not_object", "not an object"),
        ({"after": {"id": 1}}, b'{"id": 1}', "not_change_event", "no 'op'"),
        ({"op": "x", "after": {"id": 1}}, b'{"id": 1}', "not_change_event", "unknown op 'x'"),
        ({"op": "u", "after": None}, b'{"id": 1}', "not_change_event", "without an 'after'"),
        ({"op": "c", "after": {"id": 1}}, None, "no_id", "no primary key"),
        ({"op": "c", "after": {"id": 1}}, b"1", "no_id", "not an object"),
        ({"op": "c", "after": {"id": 1}}, b'{"id": ', "no_id", "not JSON"),
        ({"op": "c", "after": {"id": 1}}, b'{"id": null}', "no_id", "null"),
        ({"op": "c", "after": {"id": 1}}, b'{"id": [1]}', "invalid_id", "array"),
        (None, b'{"id": 9223372036854775808}', "number_out_of_range", "int64"),
        ({"op": "c", "after": {"$id": 1}}, b'{"id": 1}', "invalid_field", "$"),
    ],
)
def test_events_that_are_not_change_events_are_dead_letters(value, key, code, says) -> None:
    message = with_value(events(PLAIN, "public.items")[0], value, key)
    with pytest.raises(BadRecordError) as raised:
        change_events()(message)
    assert raised.value.code == code and code in BAD_RECORD_CODES
    assert says in str(raised.value)


def schema_event(field_schema: dict, value: Any) -> Message:
    envelope = {
        "schema": {"type": "struct", "fields": [{**field_schema, "field": "after"}]},
        "payload": {"op": "c", "after": {"x": value}},
    }
    return with_value(events(PLAIN, "public.items")[0], envelope)


DECIMAL = {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "0"}}


@pytest.mark.parametrize(
    ("column", "value", "code"),
    [
        (DECIMAL, "not base64!", "not_change_event"),
        (DECIMAL, "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", "number_out_of_range"),  # 2**168: 51 digits
        ({"type": "int32", "name": "io.debezium.time.Date"}, 10**8, "number_out_of_range"),
    ],
)
def test_values_that_do_not_fit_their_schema_are_dead_letters(column, value, code) -> None:
    struct = {"type": "struct", "fields": [{**column, "field": "x"}]}
    with pytest.raises(BadRecordError) as raised:
        change_events()(schema_event(struct, value))
    assert raised.value.code == code, raised.value


def test_bytes_columns_become_binary() -> None:
    struct = {"type": "struct", "fields": [{"type": "bytes", "field": "x"}]}
    document = change_events()(schema_event(struct, "AAEC"))
    assert bson.decode(document.body.raw)["x"] == b"\x00\x01\x02"


def test_keep_source_off_leaves_no_cdc_field() -> None:
    document = change_events(CdcSettings(keep_source=False))(events(SCHEMA, "public.items")[0])
    assert "_cdc" not in bson.decode(document.body.raw)
    with pytest.raises(ValueError, match="unknown cdc times"):
        CdcSettings(times="nanos")


def test_the_cdc_mode_takes_its_id_from_the_key_and_writes_like_delete_on_tombstone() -> None:
    assert issubclass(WRITE_MODELS["cdc"], DeleteOnTombstoneModel)
    id_for = id_function("key")
    build = record_builder("cdc", json_document(id_for), id_for, "key")
    assert build(events(SCHEMA, "public.items")[0]).id == 1
    with pytest.raises(ValueError, match="needs id_strategy 'key'"):
        record_builder("cdc", json_document(id_for), id_for, "coordinates")


def unscaled_bytes(number: int) -> str:
    """Connect's Decimal encoding: the unscaled integer, big-endian two's complement, base64."""
    size = max(1, (number + (number < 0)).bit_length() // 8 + 1)
    return base64.b64encode(number.to_bytes(size, "big", signed=True)).decode()


@settings(max_examples=300, derandomize=True, deadline=None)
@given(unscaled=st.integers(-(10**34) + 1, 10**34 - 1), scale=st.integers(0, 30))
def test_every_decimal_that_decimal128_holds_arrives_exactly_with_its_scale(unscaled, scale) -> None:
    column = {**DECIMAL, "parameters": {"scale": str(scale)}}
    struct = {"type": "struct", "fields": [{**column, "field": "x"}]}
    document = change_events()(schema_event(struct, unscaled_bytes(unscaled)))
    stored = bson.decode(document.body.raw)["x"]
    assert stored == Decimal128(decimal.Decimal(unscaled).scaleb(-scale, decimal.Context(prec=40)))
    assert stored.to_decimal().as_tuple().exponent == -scale


@pytest.mark.parametrize(
    "placeholder",
    # As Debezium 3.6.1 sent them for an unchanged TOASTed text and bytea column (seen in a capture).
    [
        "__debezium_unavailable_value",
        "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==",
        ["__debezium_unavailable_value"],
    ],
)
def test_an_update_without_an_unchanged_toasted_value_is_a_dead_letter_not_a_placeholder(placeholder) -> None:
    update = events(PLAIN, "public.items")[2]
    envelope = json.loads(update.value())
    envelope["after"]["note"] = placeholder
    with pytest.raises(BadRecordError) as raised:
        change_events()(with_value(update, envelope))
    assert raised.value.code == "unavailable_value" and "['note']" in str(raised.value)
    assert "REPLICA IDENTITY FULL" in str(raised.value)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
ENVELOPE_PARTS = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from(["c", "r", "u", "d", "t", "x"]) | JSON,
        "after": st.dictionaries(st.text(max_size=6), JSON, max_size=4) | JSON,
        "source": JSON,
    },
)
SCHEMAS = st.none() | st.fixed_dictionaries(
    {"type": st.just("struct")},
    optional={
        "fields": st.lists(
            st.fixed_dictionaries(
                {
                    "field": st.sampled_from(["after", "x", "y"]),
                    "type": st.sampled_from(["struct", "bytes", "array"]),
                },
                optional={
                    "name": st.sampled_from(sorted(cdc_module._LOGICAL)),
                    "fields": JSON,
                    "parameters": JSON,
                },
            ),
            max_size=3,
        )
        | JSON
    },
)


KEYS = JSON | st.fixed_dictionaries({"schema": SCHEMAS.filter(bool), "payload": JSON})


@settings(max_examples=500, derandomize=True, deadline=None)
@given(envelope=ENVELOPE_PARTS, schema=SCHEMAS, key=KEYS, tombstone=st.booleans())
def test_any_value_becomes_a_document_or_a_bad_record_never_another_error(
    envelope, schema, key, tombstone
) -> None:
    value = None if tombstone else {"schema": schema, "payload": envelope} if schema else envelope
    message = with_value(events(PLAIN, "public.items")[0], value, json.dumps(key).encode())
    try:
        document = change_events()(message)
    except BadRecordError as err:
        assert err.code in BAD_RECORD_CODES
        return
    assert document.body is None or bson.decode(document.body.raw)["_id"] == document.id
