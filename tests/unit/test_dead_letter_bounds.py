"""A dead letter fits in a document whatever the record (``MongoDeadLetterSink``).

The collection is a stand-in that refuses, per document and with MongoDB's code, what MongoDB
would refuse for its size (a BSON document over 16 MiB): the sink's own bounds are what is tested;
``tests/integration/test_poison_batches.py`` runs the same records through the real broker and
server.
"""

from __future__ import annotations

from typing import Any

import bson
import pytest
from bson import Binary
from confluent_kafka import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo import ReplaceOne
from pymongo.errors import BulkWriteError
from pymongo.write_concern import WriteConcern

from kafka_mongo_etl.errors import WriteFailedError
from kafka_mongo_etl.mongo_sink import (
    MAX_DEAD_LETTER_BYTES,
    MAX_STORED_HEADER_BYTES,
    MAX_STORED_HEADERS,
    MAX_STORED_VALUE_BYTES,
    MongoDeadLetterSink,
    stored_headers,
)
from kafka_mongo_etl.records import DeadLetter

MONGODB_MAX_DOCUMENT = 16 * 1024 * 1024


class BulkResult:
    acknowledged = True

    def __init__(self, upserted: int) -> None:
        self.bulk_api_result = {
            "nUpserted": upserted,
            "nMatched": 0,
            "writeErrors": [],
            "writeConcernErrors": [],
        }


class DeadLetterCollection:
    """Stores upserted dead letters as the server returns them (BSON decoded); refuses, like
    MongoDB, a document over 16 MiB (code 10334), and whatever ``refuse(document)`` names (a
    validator: code 121)."""

    full_name = "db.testnum_dlq"
    write_concern = WriteConcern()

    def __init__(self, refuse: Any = None) -> None:
        self.stored: dict[str, dict[str, Any]] = {}
        self.refuse = refuse or (lambda document: False)
        self.calls = 0

    def bulk_write(self, requests: list[ReplaceOne], ordered: bool = True) -> BulkResult:
        assert ordered is False
        self.calls += 1
        errors = []
        for index, request in enumerate(requests):
            encoded = bson.encode({"_id": request._filter["_id"], **request._doc})
            document, size = bson.decode(encoded), len(encoded)
            if size > MONGODB_MAX_DOCUMENT:
                errors.append({"index": index, "code": 10334, "errmsg": f"object too large: {size} bytes"})
            elif self.refuse(document):
                errors.append({"index": index, "code": 121, "errmsg": "Document failed validation"})
            else:
                self.stored[document["_id"]] = document
        if errors:
            raise BulkWriteError({"nUpserted": len(requests) - len(errors), "writeErrors": errors})
        return BulkResult(len(requests))


class UndecodableHeaders:
    """A record whose header name is not UTF-8: confluent-kafka's ``headers()`` raises."""

    def __init__(self, offset: int) -> None:
        self._offset = offset

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"not json"

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def headers(self) -> list[tuple[str, bytes | None]]:
        raise UnicodeDecodeError("utf-8", b"\xff\xfe", 0, 1, "invalid start byte")


def record(
    offset: int, headers: list[tuple[str, bytes | None]] | None, value: bytes = b"not json"
) -> Message:
    return Message(
        topic="t",
        partition=0,
        offset=offset,
        key=b"k",
        value=value,
        headers=headers,
        timestamp=(1, 1_700_000_000_000),
    )


def dead(message: Any, reason: str = "the value is not JSON") -> DeadLetter:
    return DeadLetter(message, "not_json", reason, "decode")


def test_600000_empty_headers_make_a_small_dead_letter_that_counts_them() -> None:
    collection = DeadLetterCollection()
    many = record(7, [("", None)] * 600_000)
    # The record's headers copied whole would be over MongoDB's limit: what wedged the partition.
    whole = [{"key": "", "value": None}] * 600_000
    assert len(bson.encode({"headers": whole})) > MONGODB_MAX_DOCUMENT

    MongoDeadLetterSink(collection, "run-1", "g").write([dead(many)])

    letter = collection.stored["t:0:7"]
    assert letter["headers"] == [{"key": "", "value": None}] * MAX_STORED_HEADERS
    assert (letter["headers_count"], letter["headers_size"], letter["headers_truncated"]) == (
        600_000,
        0,
        True,
    )
    assert letter["value"] == b"not json" and letter["code"] == "not_json"
    assert "kept_minimal" not in letter and "headers_error" not in letter
    assert len(bson.encode(letter)) < 64 * 1024


def test_header_bytes_are_bounded_and_the_first_headers_kept() -> None:
    headers = [(f"h{n}", bytes([n]) * 10_000) for n in range(20)]
    summary = stored_headers(record(0, headers))
    kept = summary["headers"]
    # Whole headers only, in order, while names and values stay within the byte budget:
    # 6 x 10,002 bytes fit in 64 KiB, a seventh does not.
    assert MAX_STORED_HEADER_BYTES == 65_536 and len(kept) == 6
    assert [h["key"] for h in kept] == [f"h{n}" for n in range(len(kept))]
    assert all(bytes(h["value"]) == bytes([n]) * 10_000 for n, h in enumerate(kept))
    assert summary["headers_count"] == 20 and summary["headers_truncated"] is True
    assert summary["headers_size"] == sum(len(k) + len(v) for k, v in headers)


def test_few_small_headers_are_kept_whole() -> None:
    headers = [("trace", b"abc"), ("empty", None), ("ünï", b"")]
    summary = stored_headers(record(0, headers))
    assert summary == {
        "headers": [
            {"key": "trace", "value": Binary(b"abc")},
            {"key": "empty", "value": None},
            {"key": "ünï", "value": Binary(b"")},
        ],
        "headers_count": 3,
        "headers_size": 5 + 3 + 5 + 0 + len("ünï".encode()),
        "headers_truncated": False,
    }
    assert stored_headers(record(0, None))["headers_count"] == 0


def test_headers_that_cannot_be_decoded_are_named_and_the_dead_letter_kept() -> None:
    collection = DeadLetterCollection()
    MongoDeadLetterSink(collection, "run-1", "g").write([dead(UndecodableHeaders(3)), dead(record(4, None))])

    letter = collection.stored["t:0:3"]
    assert letter["headers"] == [] and letter["headers_count"] is None and letter["headers_truncated"] is True
    assert "UnicodeDecodeError" in letter["headers_error"] and "not UTF-8" in letter["headers_error"]
    assert letter["value"] == b"not json" and letter["reason"] == "the value is not JSON"
    assert set(collection.stored) == {"t:0:3", "t:0:4"}


def test_a_long_reason_is_cut() -> None:
    collection = DeadLetterCollection()
    MongoDeadLetterSink(collection, "run-1", "g").write([dead(record(0, None), "x" * 10_000_000)])
    reason = collection.stored["t:0:0"]["reason"]
    assert len(reason) < 17_000 and reason.endswith("(10000000 characters)")


def test_a_reason_bson_cannot_encode_is_escaped() -> None:
    collection = DeadLetterCollection()
    MongoDeadLetterSink(collection, "run-1", "g").write([dead(record(0, None), "bad \ud800 name")])
    assert collection.stored["t:0:0"]["reason"] == "bad \\ud800 name"


def test_a_refused_dead_letter_is_stored_minimal_and_the_others_whole() -> None:
    # A validator that refuses dead letters carrying a value: the minimal form has none.
    collection = DeadLetterCollection(refuse=lambda document: document.get("value") == b"refuse me")
    letters = [dead(record(0, [("a", b"1")], b"refuse me")), dead(record(1, None, b"fine"))]
    MongoDeadLetterSink(collection, "run-1", "g").write(letters)

    minimal = collection.stored["t:0:0"]
    assert "value" not in minimal and "headers" not in minimal
    assert "(code 121): Document failed validation" in minimal["kept_minimal"]
    assert (minimal["value_size"], minimal["reason"], minimal["stage"]) == (
        9,
        "the value is not JSON",
        "decode",
    )
    assert collection.stored["t:0:1"]["value"] == b"fine"


def test_a_refused_minimal_dead_letter_fails_the_batch() -> None:
    collection = DeadLetterCollection(refuse=lambda document: True)
    with pytest.raises(
        WriteFailedError, match=r"did not keep 1 dead letters in db.testnum_dlq \(code 121.*validator"
    ):
        MongoDeadLetterSink(collection, "run-1", "g").write([dead(record(0, None))])
    assert collection.stored == {}


@settings(max_examples=30, deadline=None)
@given(
    key_size=st.sampled_from([0, 1, MAX_STORED_VALUE_BYTES, 3 * MAX_STORED_VALUE_BYTES]),
    value_size=st.sampled_from([0, 1, MAX_STORED_VALUE_BYTES + 1, 5 * MAX_STORED_VALUE_BYTES]),
    header_count=st.sampled_from([0, 1, 99, 100, 101, 5_000]),
    header_value=st.sampled_from([0, 1, 100, 70_000]),
    name_size=st.sampled_from([0, 3, 300]),
    reason_size=st.sampled_from([0, 100, 1_000_000]),
)
def test_every_dead_letter_fits(
    key_size: int, value_size: int, header_count: int, header_value: int, name_size: int, reason_size: int
) -> None:
    headers = [("é" * name_size, b"v" * header_value)] * header_count
    message = Message(
        topic="t" * 249,
        partition=0,
        offset=0,
        key=b"k" * key_size,
        value=b"v" * value_size,
        headers=headers,
        timestamp=(1, 1),
    )
    collection = DeadLetterCollection()
    MongoDeadLetterSink(collection, "r" * 250, "g" * 250).write([dead(message, "\U0001f600" * reason_size)])
    (letter,) = collection.stored.values()
    assert "kept_minimal" not in letter
    assert len(bson.encode(letter)) <= MAX_DEAD_LETTER_BYTES
    assert (letter["key_size"], letter["value_size"], letter["headers_count"]) == (
        key_size,
        value_size,
        header_count,
    )
    assert letter["headers_truncated"] == (len(letter["headers"]) < header_count)
