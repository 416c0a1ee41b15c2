"""Pure logic of the fenced writes: how a batch's versions of one _id fold into writes, and the
bound that keeps every write statement within mongod's per-statement limit (16 MiB + 16 KiB)."""

from __future__ import annotations

import datetime as dt
import json

import bson
import pytest
from confluent_kafka import Message

from kafka_mongo_etl.ids import id_function
from kafka_mongo_etl.records import (
    MAX_DOCUMENT_BYTES,
    MAX_STATEMENT_BYTES,
    STATEMENT_OVERHEAD_BYTES,
    BadRecordError,
    Document,
    json_document,
)
from kafka_mongo_etl.write_models import WRITE_MODES, Write, record_builder, write_model

AT = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)


def version(partition: int, offset: int, value: dict | None, key: bytes = b"a") -> Document:
    raw = None if value is None else json.dumps(value).encode()
    message = Message(topic="t", partition=partition, offset=offset, key=key, value=raw)
    id_for = id_function("key")
    return record_builder("delete_on_tombstone", json_document(id_for), id_for, "key")(message)


def positions(writes: list[Write]) -> list[tuple[int, int, list[int]]]:
    return [(w.partition, w.offset, [d.message.offset() for d in w.versions]) for w in writes]


def test_replace_folds_a_partition_s_consecutive_versions_into_the_last() -> None:
    versions = [
        version(0, 1, {"v": 1}),
        version(0, 2, {"v": 2}),
        version(1, 0, {"v": 3}),
        version(0, 3, None),
    ]
    writes = write_model("delete_on_tombstone").plan(versions)
    # Rounds in read order: partition 0 up to 2, then partition 1, then partition 0's tombstone.
    assert positions(writes) == [(0, 2, [1, 2]), (1, 0, [0]), (0, 3, [3])]
    assert bson.decode(writes[0].body.raw)["v"] == 2 and writes[2].body is None


def test_update_merges_one_partition_s_versions_in_offset_order() -> None:
    versions = [version(0, 1, {"a": 1, "b": 2}), version(0, 2, {"a": 3})]
    (write,) = write_model("update").plan(versions)
    assert (write.partition, write.offset) == (0, 2)
    merged = bson.decode(write.body.raw)
    assert merged == {
        "_id": "a",
        "a": 3,
        "b": 2,
        "_kafka": {"topic": "t", "partition": 0, "offset": 2, "applied": {"t:0": 2}},
    }


def test_update_writes_versions_from_several_partitions_one_by_one() -> None:
    versions = [version(0, 1, {"a": 1}), version(1, 0, {"b": 2}), version(0, 2, {"a": 3})]
    assert positions(write_model("update").plan(versions)) == [(0, 1, [1]), (1, 0, [0]), (0, 2, [2])]


def test_update_writes_one_by_one_when_the_merge_would_be_too_large() -> None:
    half = "x" * (MAX_DOCUMENT_BYTES // 2)
    versions = [version(0, 1, {"a": half}), version(0, 2, {"b": half})]
    assert len(write_model("update").plan(versions)) == 2


def test_insert_keeps_the_first_version() -> None:
    versions = [version(1, 5, {"v": 1}), version(0, 2, {"v": 2})]
    (write,) = write_model("insert").plan(versions)
    assert bson.decode(write.body.raw)["v"] == 1 and len(write.versions) == 2


def _statement_bytes(request) -> int:
    """An update statement as pymongo sends it in the write command."""
    statement = {"q": request._filter, "u": request._doc, "multi": False, "upsert": request._upsert}
    return len(bson.encode(statement))


def largest(key_bytes: int, spare: int = 0) -> Document:
    """The largest document the record path takes for a key of ``key_bytes`` (less ``spare``)."""
    key = b"k" * key_bytes
    to_document = json_document(id_function("key"))
    probe = Message(topic="t", partition=123, offset=10**12, key=key, value=b'{"blob": ""}')
    frame = len(to_document(probe).body.raw)
    id_bytes = len(bson.encode({"_id": key.decode()}))
    room = min(MAX_DOCUMENT_BYTES, MAX_STATEMENT_BYTES - STATEMENT_OVERHEAD_BYTES - id_bytes) - frame - spare
    value = json.dumps({"blob": "x" * room}).encode()
    return to_document(Message(topic="t", partition=123, offset=10**12, key=key, value=value))


@pytest.mark.parametrize("mode", WRITE_MODES)
@pytest.mark.parametrize("key_bytes", [10, 64 * 1024])
def test_every_statement_of_the_largest_accepted_record_fits_mongod_s_limit(mode, key_bytes) -> None:
    document = largest(key_bytes)
    model = write_model(mode)
    if mode == "update" and key_bytes == 10:
        # 16 MiB to the byte: the timestamps the update model adds would not fit.
        assert "over MongoDB's 16 MiB limit" in model.unwritable(document)
        document = largest(key_bytes, spare=42)
    assert model.unwritable(document) is None
    write = Write.single(document)
    assert _statement_bytes(model.rewrite(write, AT)) <= MAX_STATEMENT_BYTES
    assert len(bson.encode(model.insert(write, AT)._doc)) <= MAX_DOCUMENT_BYTES


def test_a_document_under_16_mib_with_a_large_id_is_too_large_for_its_statement() -> None:
    document = largest(64 * 1024)
    assert len(document.body.raw) < MAX_DOCUMENT_BYTES  # under the document limit
    value = json.dumps({"blob": "x" * (len(bson.decode(document.body.raw)["blob"]) + 1)}).encode()
    message = Message(topic="t", partition=123, offset=10**12, key=b"k" * 64 * 1024, value=value)
    with pytest.raises(BadRecordError) as err:
        json_document(id_function("key"))(message)
    assert err.value.code == "too_large"
    assert "statement" in str(err.value) and "shorten the _id" in str(err.value)
