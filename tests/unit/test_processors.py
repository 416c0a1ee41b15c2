"""Each post-processor alone, the chain's order, its option checks, and what it asks of the writes
(``kafka_mongo_etl.processors``; the chain over generated records: test_processor_properties.py)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import bson
import pytest
from bson.raw_bson import RawBSONDocument
from confluent_kafka import Message

from kafka_mongo_etl.cdc import CdcSettings
from kafka_mongo_etl.errors import ParamsRefusedError
from kafka_mongo_etl.options import check_options, option_problems
from kafka_mongo_etl.processors import (
    PROCESSORS,
    WriteHints,
    build_chain,
    import_function,
)
from kafka_mongo_etl.records import BAD_RECORD_CODES, BadRecordError
from kafka_mongo_etl.write_models import ReplaceModel, UpdateModel, Write, record_path

ORDER = {
    "id": 7,
    "customer": {"name": "Ada", "email": "ada@example.com", "card": {"number": "4111", "expiry": "12/29"}},
    "lines": [{"sku": "a", "qty": 1, "price": None}, {"sku": "b", "qty": 2, "price": 9.5}, 3],
    "note": None,
    "password": "hunter2",
}


def message(value: Any = ORDER, key: bytes | None = b"order-7", **extra: Any) -> Message:
    raw = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
    return Message(topic="orders", partition=1, offset=42, key=key, value=raw, **extra)


def load(specs: list[dict[str, Any]], record: Message | None = None, **options: Any) -> dict[str, Any]:
    """The document the record path makes of ``record`` with ``specs`` (decoded from its BSON)."""
    to_document, _ = record_path(options.pop("write_mode", "replace"), processors=specs, **options)
    document = to_document(record or message())
    return bson.decode(document.body.raw)


def refused(specs: list[dict[str, Any]], record: Message | None = None, **options: Any) -> BadRecordError:
    with pytest.raises(BadRecordError) as caught:
        load(specs, record, **options)
    assert caught.value.code in BAD_RECORD_CODES
    return caught.value


# User functions for the "function" processor, by their dotted path in this module.
def add_total(value: dict[str, Any], message: Any, currency: str = "EUR") -> dict[str, Any]:
    value["total"] = sum(
        (line.get("price") or 0) * line["qty"] for line in value["lines"] if isinstance(line, dict)
    )
    value["currency"] = currency
    value["from"] = message.topic()
    return value


def explode(value: dict[str, Any], message: Any) -> dict[str, Any]:
    raise KeyError("no such column")


def returns_list(value: dict[str, Any], message: Any) -> Any:
    return [value]


def returns_dollar_name(value: dict[str, Any], message: Any) -> dict[str, Any]:
    return {"$set": 1}


def returns_unencodable(value: dict[str, Any], message: Any) -> dict[str, Any]:
    return {"when": object()}


def returns_big_integer(value: dict[str, Any], message: Any) -> dict[str, Any]:
    return {"n": 2**64}


HERE = __name__


def test_without_processors_the_document_is_the_one_it_always_was() -> None:
    assert load([]) == {
        "_id": "order-7",
        **ORDER,
        "_kafka": {"topic": "orders", "partition": 1, "offset": 42, "applied": {"orders:1": 42}},
    }


def test_allow_keeps_paths_through_documents_and_arrays() -> None:
    document = load([{"type": "allow", "fields": ["id", "customer.name", "lines.sku"]}])
    assert document == {
        "_id": "order-7",
        "id": 7,
        "customer": {"name": "Ada"},
        # A path goes into each document of an array; other elements have no such field.
        "lines": [{"sku": "a"}, {"sku": "b"}],
        "_kafka": {"topic": "orders", "partition": 1, "offset": 42, "applied": {"orders:1": 42}},
    }


def test_allow_and_block_take_wildcards() -> None:
    assert load([{"type": "allow", "fields": ["customer.*"]}])["customer"] == ORDER["customer"]
    blocked = load([{"type": "block", "fields": ["*.card", "pass*", "lines.pri?e"]}])
    assert blocked["customer"] == {"name": "Ada", "email": "ada@example.com"}
    assert "password" not in blocked
    assert blocked["lines"] == [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}, 3]


def test_overlapping_wildcard_paths_merge_without_losing_where_a_path_ends() -> None:
    # "id.id" and "*.id" both reach id.id (found by the property test): the field is kept once.
    record = message({"a": None, "id": {"a": None, "id": None}})
    assert load([{"type": "allow", "fields": ["id.id", "*.id"]}], record)["id"] == {"id": None}
    assert load([{"type": "block", "fields": ["id.id", "*.id"]}], record)["id"] == {"a": None}


def test_block_removes_nested_paths_and_keeps_the_rest() -> None:
    document = load([{"type": "block", "fields": ["password", "customer.card.number"]}])
    assert document["customer"] == {"name": "Ada", "email": "ada@example.com", "card": {"expiry": "12/29"}}
    assert set(document) == {"_id", "id", "customer", "lines", "note", "_kafka"}


def test_rename_by_map_renames_in_place_at_any_depth() -> None:
    document = load(
        [{"type": "rename", "fields": {"customer.email": "mail", "lines.qty": "quantity", "id": "number"}}]
    )
    assert list(document) == ["_id", "number", "customer", "lines", "note", "password", "_kafka"]
    assert document["customer"]["mail"] == "ada@example.com" and "email" not in document["customer"]
    assert document["lines"][1] == {"sku": "b", "quantity": 2, "price": 9.5}


def test_rename_by_regex_with_a_path_filter() -> None:
    record = message({"first-name": "Ada", "address": {"post-code": "1", "street-name": "x"}})
    assert load([{"type": "rename_regex", "pattern": "-", "replace": "_"}], record)["address"] == {
        "post_code": "1",
        "street_name": "x",
    }
    only_top = load([{"type": "rename_regex", "pattern": "-", "replace": "_", "paths": r"[^.]*"}], record)
    assert "first_name" in only_top and only_top["address"] == {"post-code": "1", "street-name": "x"}


def test_a_rename_onto_an_existing_field_is_a_dead_letter_not_an_overwrite() -> None:
    error = refused([{"type": "rename", "fields": {"note": "password"}}])
    assert error.code == "rename_conflict" and "orders[1]@42" in str(error) and "'password'" in str(error)


def test_a_rename_to_a_dollar_name_meets_mongodbs_rules() -> None:
    with pytest.raises(ValueError, match="must be a field name"):  # a map's names are checked at once
        build_chain([{"type": "rename", "fields": {"note": "$note"}}])
    # A regex's only per record: MongoDB's rules refuse the document it makes.
    assert (
        refused([{"type": "rename_regex", "pattern": "^note$", "replace": "$note"}]).code == "invalid_field"
    )


def test_remove_nulls_at_every_level_or_the_top_only() -> None:
    everywhere = load([{"type": "remove_nulls"}])
    assert "note" not in everywhere and everywhere["lines"][0] == {"sku": "a", "qty": 1}
    top = load([{"type": "remove_nulls", "nested": False}])
    assert "note" not in top and top["lines"][0] == {"sku": "a", "qty": 1, "price": None}
    # Array elements are not fields: a null in an array stays.
    assert load([{"type": "remove_nulls"}], message({"a": [None, 1]}))["a"] == [None, 1]


def test_kafka_metadata_shows_what_it_is_asked_and_always_keeps_the_fence() -> None:
    record = message(
        headers=[("trace", b"abc"), ("raw", b"\xff"), ("trace", b"def")], timestamp=(1, 1_700_000_000_123)
    )
    shown = load([{"type": "kafka_metadata", "fields": ["topic", "timestamp", "key", "headers"]}], record)[
        "_kafka"
    ]
    assert shown == {
        "topic": "orders",
        "timestamp": dt.datetime(2023, 11, 14, 22, 13, 20, 123000),
        "key": "order-7",
        "headers": [
            {"key": "trace", "value": "abc"},
            {"key": "raw", "value": b"\xff"},
            {"key": "trace", "value": "def"},
        ],
        "applied": {"orders:1": 42},
    }
    # "Off": nothing but the fence, which the write model needs (docs/fencing.md).
    assert load([{"type": "kafka_metadata", "fields": []}])["_kafka"] == {"applied": {"orders:1": 42}}


def test_timestamps_are_set_and_the_insert_one_is_kept_by_rewrites() -> None:
    document = load([{"type": "insert_timestamp"}, {"type": "modify_timestamp", "field": "changed"}])
    assert isinstance(document["_inserted_at"], dt.datetime) and isinstance(document["changed"], dt.datetime)
    _, hints = record_path("replace", processors=[{"type": "insert_timestamp"}])
    assert hints == WriteHints(insert_only=("_inserted_at",))


def test_a_function_by_dotted_path_with_kwargs() -> None:
    spec = {"type": "function", "function": f"{HERE}.add_total", "kwargs": {"currency": "SEK"}}
    document = load([spec])
    assert (document["total"], document["currency"], document["from"]) == (19.0, "SEK", "orders")


@pytest.mark.parametrize(
    ("function", "code", "words"),
    [
        ("explode", "function_failed", "raised KeyError: 'no such column'"),
        ("returns_list", "function_result", "returned list, not a document"),
        ("returns_dollar_name", "function_result", "top-level field name starting with $"),
        ("returns_unencodable", "function_result", "cannot be encoded"),
        ("returns_big_integer", "function_result", "beyond int64"),
    ],
)
def test_a_function_that_fails_or_breaks_mongodbs_rules_makes_a_dead_letter(
    function: str, code: str, words: str
) -> None:
    error = refused([{"type": "function", "function": f"{HERE}.{function}"}])
    assert error.code == code and words in str(error) and "orders[1]@42" in str(error)


def test_the_chain_applies_in_the_order_given() -> None:
    rename_then_block = [
        {"type": "rename", "fields": {"password": "secret"}},
        {"type": "block", "fields": ["password"]},
    ]
    block_then_rename = list(reversed(rename_then_block))
    assert load(rename_then_block)["secret"] == "hunter2"
    assert "secret" not in load(block_then_rename) and "password" not in load(block_then_rename)
    stamped_then_allowed = [{"type": "modify_timestamp"}, {"type": "allow", "fields": ["id"]}]
    assert set(load(stamped_then_allowed)) == {"_id", "id", "_kafka"}


def test_the_id_comes_from_the_record_as_it_arrived() -> None:
    specs = [{"type": "rename", "fields": {"id": "number"}}, {"type": "block", "fields": ["number"]}]
    document = load(specs, id_strategy="field", id_field="id")
    assert document["_id"] == 7 and "number" not in document and "id" not in document


def test_a_processor_cannot_replace_the_id_or_the_fence() -> None:
    document = load([{"type": "rename", "fields": {"note": "_id"}}])
    assert document["_id"] == "order-7"
    # _kafka is made after the chain: a value's own is replaced, whatever the processors did.
    renamed = load([{"type": "rename", "fields": {"note": "_kafka"}}])
    assert renamed["_kafka"] == {"topic": "orders", "partition": 1, "offset": 42, "applied": {"orders:1": 42}}
    with pytest.raises(ValueError, match="must be a field name"):
        build_chain([{"type": "insert_timestamp", "field": "_kafka"}])


def test_key_processors_shape_the_id_made_from_a_json_key() -> None:
    key = json.dumps({"tenant": "t1", "order": 7, "trace": "x"}).encode()
    specs = [
        {"type": "block", "on": "key", "fields": ["trace"]},
        {"type": "rename", "on": "key", "fields": {"order": "id"}},
    ]
    assert load(specs, message(key=key))["_id"] == {"tenant": "t1", "id": 7}
    # A tombstone gets the same _id, so delete_on_tombstone deletes the right document.
    to_document, _ = record_path("delete_on_tombstone", processors=specs)
    assert to_document(message(None, key=key)).id == {"tenant": "t1", "id": 7}
    for bad_key, words in ((b"plain", "not JSON"), (b"[1]", "not an object"), (b'{"trace": 1}', "no field")):
        error = refused(specs, message(key=bad_key))
        assert error.code == "no_id" and words in str(error)


def test_every_processor_code_is_a_dead_letter_code() -> None:
    from kafka_mongo_etl import processors

    codes = {processors.FUNCTION_FAILED, processors.FUNCTION_RESULT, processors.RENAME_CONFLICT}
    assert codes <= set(BAD_RECORD_CODES)


@pytest.mark.parametrize(
    ("specs", "words"),
    [
        ({"type": "block"}, "processors must be a list of objects"),
        (["block"], 'processors[0] must be an object with a "type" of allow, block'),
        ([{"type": "drop"}], "not 'drop'"),
        ([{"type": "block"}], "processors[0] (block): missing fields"),
        ([{"type": "block", "fields": "a"}], "must be a non-empty list of dotted paths"),
        ([{"type": "block", "fields": ["a..b"]}], "'a..b' is not a dotted path"),
        ([{"type": "allow", "fields": ["a"], "feilds": 1}], "unknown settings ['feilds']"),
        ([{"type": "rename", "fields": {"a": "b.c"}}], "the new name of 'a' must be a field name"),
        ([{"type": "rename_regex", "pattern": "(", "replace": ""}], "is not a regular expression"),
        ([{"type": "kafka_metadata", "fields": ["partition", "lag"]}], "unknown fields ['lag']"),
        (
            [{"type": "remove_nulls", "on": "key"}],
            'only allow, block, rename and rename_regex act "on": "key"',
        ),
        ([{"type": "function", "function": "nope"}], 'must be a dotted path "package.module.function"'),
        ([{"type": "function", "function": "no_such_module_here.f"}], "cannot import 'no_such_module_here'"),
        ([{"type": "function", "function": f"{HERE}.missing"}], "has no function 'missing'"),
        ('[{"type": ', "processors is not JSON"),
    ],
    ids=str,
)
def test_a_spec_that_cannot_work_is_refused_before_anything_runs_naming_the_entry(
    specs: Any, words: str
) -> None:
    problems = option_problems({"processors": specs})
    assert len(problems) == 1 and words in problems[0], problems
    with pytest.raises(ParamsRefusedError, match="Nothing was loaded"):
        check_options({"processors": specs}, done="Nothing was loaded")


def test_every_bad_entry_is_named_at_once() -> None:
    (problem,) = option_problems(
        {"processors": [{"type": "block"}, {"type": "allow", "fields": ["a"]}, {"type": "x"}]}
    )
    assert (
        "processors[0] (block)" in problem and "processors[2]" in problem and "processors[1]" not in problem
    )


def test_key_processors_need_key_ids_and_no_cdc() -> None:
    specs = [{"type": "block", "on": "key", "fields": ["trace"]}]
    assert "need id_strategy" in option_problems({"processors": specs, "id_strategy": "coordinates"})[0]
    assert "other than cdc" in option_problems({"processors": specs, "write_mode": "cdc"})[0]
    assert option_problems({"processors": specs}) == []


def test_json_text_is_read_as_the_list() -> None:
    assert option_problems({"processors": json.dumps([{"type": "remove_nulls"}])}) == []
    assert list(PROCESSORS) == [
        "allow",
        "block",
        "rename",
        "rename_regex",
        "remove_nulls",
        "kafka_metadata",
        "insert_timestamp",
        "modify_timestamp",
        "function",
    ]
    assert import_function(f"{HERE}.add_total") is add_total


def test_cdc_time_modes_match_the_option_choices() -> None:
    from kafka_mongo_etl.cdc import TIME_MODES
    from kafka_mongo_etl.options import option

    assert tuple(option("cdc_times").choices) == TIME_MODES
    assert option_problems({"cdc_times": "nanos"}) == ["unknown cdc_times 'nanos'; choose one of exact, date"]


def _write(body: dict[str, Any]) -> Write:
    raw = bson.decode(bson.encode(body))
    return Write(
        id=body["_id"],
        body=RawBSONDocument(bson.encode(raw)),
        versions=[],
        partition=1,
        offset=42,
        topic="orders",
    )


def test_rewrites_keep_the_stored_insert_timestamp_and_the_records_own_kafka_display() -> None:
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    body = {
        "_id": "a",
        "x": 1,
        "_inserted_at": at,
        "_kafka": {"topic": "orders", "applied": {"orders:1": 42}},
    }
    hints = WriteHints(insert_only=("_inserted_at",), own_kafka=True)
    for model in (ReplaceModel(hints), UpdateModel(hints)):
        pipeline = json.dumps(model.rewrite(_write(body), at)._doc, default=str)
        assert '{"$ifNull": ["$_inserted_at", {"$literal": "2026-01-01 00:00:00"}]}' in pipeline
        assert '"topic": {"$literal": "orders"}' in pipeline and '"partition": 1' not in pipeline
    # Without hints, the rewrite is the one it always was.
    plain = json.dumps(ReplaceModel().rewrite(_write(body), at)._doc, default=str)
    assert '$ifNull": ["$_inserted_at' not in plain and '"partition": 1' in plain


def test_change_events_are_shaped_by_the_chain_and_by_the_cdc_options() -> None:
    envelope = {
        "before": None,
        "after": {"id": 1, "name": "Ada", "secret": "s", "born": None},
        "source": {"lsn": 10, "txId": 5, "ts_ms": 1_700_000_000_000, "schema": "public", "table": "people"},
        "op": "c",
        "ts_ms": 1_700_000_000_100,
    }
    record = message(envelope, key=b'{"id": 1}')
    specs = [{"type": "block", "fields": ["secret"]}, {"type": "remove_nulls"}, {"type": "insert_timestamp"}]
    document = load(specs, record, write_mode="cdc")
    created = document.pop("_inserted_at")
    assert isinstance(created, dt.datetime)
    assert document == {
        "_id": 1,
        "id": 1,
        "name": "Ada",
        "_cdc": document["_cdc"],
        "_kafka": {"topic": "orders", "partition": 1, "offset": 42, "applied": {"orders:1": 42}},
    }
    assert set(document["_cdc"]) >= {"op", "lsn", "txId"}
    # cdc_keep_source: false leaves _cdc out.
    assert "_cdc" not in load([], record, write_mode="cdc", cdc=CdcSettings(keep_source=False))
    # Without processors, a change event's document carries the fence from its first insert too.
    assert load([], record, write_mode="cdc")["_kafka"]["applied"] == {"orders:1": 42}
