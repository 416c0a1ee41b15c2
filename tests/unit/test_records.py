"""Pure logic: ids, record decoding, the dead-letter policy."""

from __future__ import annotations

import json

import bson
import pytest
from confluent_kafka import Message

from kafka_mongo_etl.ids import batch_id, id_function, record_key
from kafka_mongo_etl.records import BadRecordError, json_document
from kafka_mongo_etl.tasks import DeadLetterPolicy, default_group_id


def message(value: bytes | None, key: bytes | None = b"k", offset: int = 7) -> Message:
    return Message(topic="t", partition=2, offset=offset, key=key, value=value)


def test_keys_are_stable_per_run_and_number() -> None:
    batch = batch_id("kafka_to_mongo", "backfill__2026-01-01T00:00:00+00:00")
    assert record_key(batch, 3) == "kafka_to_mongo/backfill__2026-01-01T00:00:00+00:00/3"
    assert record_key(batch, 3) != record_key(batch_id("kafka_to_mongo", "manual__x"), 3)


def test_id_strategies() -> None:
    value = {"num": 5, "order": "A-1"}
    assert id_function("key")(message(b"{}"), value) == "k"
    assert id_function("coordinates")(message(b"{}"), value) == "t:2:7"
    assert id_function("field", "order")(message(b"{}"), value) == "A-1"
    with pytest.raises(ValueError, match="id_field"):
        id_function("field")
    with pytest.raises(ValueError, match="unknown id_strategy 'uuid'"):
        id_function("uuid")


def test_json_document_keeps_the_value_and_where_it_came_from() -> None:
    to_document = json_document(id_function("key"))
    document = to_document(message(b'{"num": 1, "_id": "ignored"}'))
    assert document.id == "k"
    assert bson.decode(document.body.raw) == {"_id": "k", "num": 1, "_kafka": {"partition": 2, "offset": 7}}


@pytest.mark.parametrize(
    ("value", "key", "code"),
    [
        (None, b"k", "tombstone"),
        (b"\xff\xfe", b"k", "not_utf8"),
        (b"{oops", b"k", "not_json"),
        (b"42", b"k", "not_object"),
        (b'{"$inc": {"num": 1}}', b"k", "invalid_field"),
        (b'{"num": 1}', None, "no_id"),
    ],
)
def test_json_document_refuses_what_cannot_be_a_document(value, key, code) -> None:
    with pytest.raises(BadRecordError, match=r"t\[2\]@7|record") as err:
        json_document(id_function("key"))(message(value, key=key))
    assert err.value.code == code


def test_over_16_mib_is_refused_and_under_is_not() -> None:
    to_document = json_document(id_function("key"))
    just_under = json.dumps({"blob": "x" * (16 * 1024 * 1024 - 64 * 1024)}).encode()
    assert to_document(message(just_under)).id == "k"
    over = json.dumps({"blob": "x" * (16 * 1024 * 1024)}).encode()
    with pytest.raises(BadRecordError) as err:
        to_document(message(over))
    assert err.value.code == "too_large"


def test_dead_letter_policy() -> None:
    assert DeadLetterPolicy().breach(0, 100) is None
    assert DeadLetterPolicy().breach(1, 100) == "1 dead letters, more than the limit of 0"
    assert DeadLetterPolicy(max_count=5).breach(5, 10) is None
    assert DeadLetterPolicy(max_count=None, max_ratio=0.1).breach(10, 100) is None
    assert "11.0%" in DeadLetterPolicy(max_count=None, max_ratio=0.1).breach(11, 100)
    assert DeadLetterPolicy(max_count=None, max_ratio=None).breach(10**6, 10**6) is None


def test_default_group_names_the_target() -> None:
    assert default_group_id("testnum", "testnum") == "kafka_to_mongo.testnum.testnum"


def test_utf16_json_is_not_taken_for_utf8() -> None:
    utf16 = '{"num": 1}'.encode("utf-16")
    with pytest.raises(BadRecordError) as err:
        json_document(id_function("key"))(message(utf16))
    assert err.value.code == "not_utf8"
