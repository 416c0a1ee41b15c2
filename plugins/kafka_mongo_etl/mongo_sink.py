"""Idempotent bulk writes to one MongoDB collection, and the dead-letter collection beside it."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import bson
from bson import Binary
from confluent_kafka import Message
from pymongo import ReplaceOne
from pymongo.collection import Collection

from kafka_mongo_etl.bulk import bulk_write, refusal
from kafka_mongo_etl.processors import WriteHints
from kafka_mongo_etl.records import DeadLetter, Document
from kafka_mongo_etl.write_models import WRITE_MODES, WriteFailedError, WriteResult, write_model

__all__ = ["WRITE_MODES", "MongoDeadLetterSink", "MongoSink", "WriteFailedError", "WriteResult"]

log = logging.getLogger(__name__)

# A dead letter keeps at most this much of the record's key and of its value (and says how long
# each was), so that a dead letter always fits in a document.
MAX_STORED_VALUE_BYTES = 1024 * 1024
# ... at most this many of the record's headers, with at most this many bytes of names and values
# (a record can carry hundreds of thousands: 600,000 empty headers are 1.7 MiB in Kafka, and
# would be 17.6 MiB of BSON), and counts them all.
MAX_STORED_HEADERS = 100
MAX_STORED_HEADER_BYTES = 64 * 1024
# ... and a reason (a server's error message can quote the document) cut to this many characters.
MAX_REASON_CHARS = 16 * 1024
MAX_CODE_CHARS = 100
# What a dead letter can weigh at most, with the bounds above (2 x 1 MiB, 64 KiB of headers and
# their 100 names' BSON overhead, 4 x 16 Ki characters of UTF-8, names of topic, run and group):
# checked before it is sent; MongoDB's own limit is 16 MiB.
MAX_DEAD_LETTER_BYTES = 4 * 1024 * 1024


class MongoSink:
    """Writes documents to one collection with the named write model (``write_models``).

    ``write`` returns only after MongoDB acknowledged every document it did not refuse, under
    the collection's write concern; it raises ``WriteFailedError`` on anything else.
    """

    def __init__(
        self, collection: Collection, mode: str = "replace", hints: WriteHints | None = None
    ) -> None:
        if not collection.write_concern.acknowledged:
            raise ValueError(
                f"the write concern of {collection.full_name} is {collection.write_concern.document} "
                "(unacknowledged): the drain commits offsets only after MongoDB acknowledged the "
                "write, so it cannot load with w=0; remove 'w' from the MongoDB connection's extra"
            )
        self.collection = collection
        self.mode = mode
        # hints: what the record path's processors ask of the writes (insert-only fields, _kafka).
        self.model = write_model(mode, hints)

    def write(self, documents: Sequence[Document]) -> WriteResult:
        """Write ``documents``: every record of a batch, in read order (versions of one ``_id``
        included; the write model folds them). Each write is fenced by its record's position:
        it never replaces what a newer record wrote (docs/fencing.md)."""
        if not documents:
            return WriteResult(0, 0, 0)
        return self.model.write(self.collection, documents)


class MongoDeadLetterSink:
    """Keeps records that could not be loaded in ``<collection>_dlq``, one document per record.

    The ``_id`` is ``topic:partition:offset``, so writing a batch's dead letters again after a
    crash replaces them instead of adding copies. A dead letter fits in a document whatever the
    record: it keeps at most ``MAX_STORED_VALUE_BYTES`` of the key and of the value,
    ``MAX_STORED_HEADERS`` headers with at most ``MAX_STORED_HEADER_BYTES`` of names and values
    (and counts all of them), a reason cut to ``MAX_REASON_CHARS``, and is checked against
    ``MAX_DEAD_LETTER_BYTES`` before it is sent. A dead letter MongoDB refuses is stored again
    in its minimal form (where the record is and why it was refused, nothing of its content);
    only a refused minimal one, a transient error or an unsatisfied write concern fail the batch.
    """

    def __init__(self, collection: Collection, run_id: str, group_id: str) -> None:
        self.collection = collection
        self.run_id = run_id
        self.group_id = group_id

    def write(self, dead_letters: list[DeadLetter]) -> None:
        now = dt.datetime.now(dt.UTC)
        letters = [self.document(letter, now) for letter in dead_letters]
        step = f"dead letters into {self.collection.full_name}"
        outcome = bulk_write(self.collection, [_upsert(letter) for letter in letters], step)
        if not outcome.refused:
            return
        minimal = [
            self.minimal(dead_letters[index], now, f"the full dead letter was refused: {refusal(error)}")
            for index, error in outcome.refused
        ]
        log.warning(
            "MongoDB refused %s of %s dead letters in %s (%s); storing them without the records' content",
            len(minimal),
            len(letters),
            self.collection.full_name,
            refusal(outcome.refused[0][1]),
        )
        again = bulk_write(self.collection, [_upsert(letter) for letter in minimal], step)
        if again.refused:
            error = again.refused[0][1]
            raise WriteFailedError(
                f"MongoDB did not keep {len(again.refused)} dead letters in {self.collection.full_name} "
                f"(code {error.get('code')}: {error.get('errmsg')}), not even without the records' "
                "content; nothing of this batch is committed and the task's retry writes it again. "
                "Check the dead-letter collection's validator and indexes."
            )

    def document(self, letter: DeadLetter, now: dt.datetime) -> dict[str, Any]:
        """The dead letter of ``letter``: the record's key, value and headers, bounded."""
        message = letter.message
        value, key = message.value(), message.key()
        document = {
            **self.minimal(letter, now),
            "key": Binary(key[:MAX_STORED_VALUE_BYTES]) if key is not None else None,
            "key_truncated": key is not None and len(key) > MAX_STORED_VALUE_BYTES,
            "value": Binary(value[:MAX_STORED_VALUE_BYTES]) if value is not None else None,
            "value_truncated": value is not None and len(value) > MAX_STORED_VALUE_BYTES,
            **stored_headers(message),
        }
        size = len(bson.encode(document))
        if size > MAX_DEAD_LETTER_BYTES:  # cannot happen with the bounds above: a guard for new fields
            return self.minimal(letter, now, f"the full dead letter would be {size} bytes")
        return document

    def minimal(
        self, letter: DeadLetter, now: dt.datetime, kept_minimal: str | None = None
    ) -> dict[str, Any]:
        """Where the record is, how big it is and why it is a dead letter; none of its content."""
        message = letter.message
        value, key = message.value(), message.key()
        _kind, timestamp_ms = message.timestamp()
        document: dict[str, Any] = {
            "_id": f"{message.topic()}:{message.partition()}:{message.offset()}",
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "timestamp": (
                dt.datetime.fromtimestamp(timestamp_ms / 1000, dt.UTC)
                if timestamp_ms and timestamp_ms > 0
                else None
            ),
            "key_size": len(key) if key is not None else None,
            "value_size": len(value) if value is not None else None,
            "code": letter.code[:MAX_CODE_CHARS],
            "reason": _cut(letter.reason, MAX_REASON_CHARS),
            "stage": letter.stage,
            "run_id": self.run_id,
            "group_id": self.group_id,
            "failed_at": now,
        }
        if kept_minimal is not None:
            document["kept_minimal"] = _cut(kept_minimal, MAX_REASON_CHARS)
        return document


def stored_headers(message: Message) -> dict[str, Any]:
    """The record's first headers, bounded, and a summary of all of them.

    ``headers`` keeps the first ``MAX_STORED_HEADERS`` headers while their names and values
    together stay within ``MAX_STORED_HEADER_BYTES``; ``headers_count`` and ``headers_size``
    (bytes of names and values) count every header, ``headers_truncated`` says some were left
    out. A record whose headers confluent-kafka cannot decode (a header name that is not UTF-8)
    keeps none and says why in ``headers_error``.
    """
    try:
        headers = message.headers() or []
    except ValueError as err:  # UnicodeDecodeError: a header name that is not UTF-8
        return {
            "headers": [],
            "headers_count": None,
            "headers_size": None,
            "headers_truncated": True,
            "headers_error": _cut(
                f"the record's headers cannot be read ({type(err).__name__}: {err}); a header name "
                "that is not UTF-8 (Kafka does not check them) makes confluent-kafka refuse them all",
                MAX_REASON_CHARS,
            ),
        }
    kept: list[dict[str, Any]] = []
    size = kept_size = 0
    full = False
    for name, raw in headers:
        length = len(name.encode("utf-8", "surrogatepass")) + (len(raw) if raw is not None else 0)
        size += length
        full = full or len(kept) == MAX_STORED_HEADERS or kept_size + length > MAX_STORED_HEADER_BYTES
        if not full:
            kept.append({"key": name, "value": Binary(raw) if raw is not None else None})
            kept_size += length
    return {
        "headers": kept,
        "headers_count": len(headers),
        "headers_size": size,
        "headers_truncated": len(kept) < len(headers),
    }


def _upsert(letter: dict[str, Any]) -> ReplaceOne:
    body = {name: value for name, value in letter.items() if name != "_id"}
    return ReplaceOne({"_id": letter["_id"]}, body, upsert=True)


def _cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, encodable whatever it holds (a lone surrogate, which
    BSON's UTF-8 cannot encode, is escaped)."""
    cut = text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")
