"""Idempotent bulk writes to one MongoDB collection, and the dead-letter collection beside it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from bson import Binary
from pymongo import ReplaceOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from kafka_mongo_etl.records import DeadLetter, Document
from kafka_mongo_etl.write_models import WRITE_MODES, WriteFailedError, WriteResult, write_model

__all__ = ["WRITE_MODES", "MongoDeadLetterSink", "MongoSink", "WriteFailedError", "WriteResult"]

# A dead letter keeps at most this much of the record's key and of its value (and says how long
# each was), so that a dead letter always fits in a document.
MAX_STORED_VALUE_BYTES = 1024 * 1024


class MongoSink:
    """Writes documents to one collection with the named write model (``write_models``).

    ``write`` returns only after MongoDB acknowledged every document it did not refuse, under
    the collection's write concern; it raises ``WriteFailedError`` on anything else.
    """

    def __init__(self, collection: Collection, mode: str = "replace") -> None:
        if not collection.write_concern.acknowledged:
            raise ValueError(
                f"the write concern of {collection.full_name} is {collection.write_concern.document} "
                "(unacknowledged): the drain commits offsets only after MongoDB acknowledged the "
                "write, so it cannot load with w=0; remove 'w' from the MongoDB connection's extra"
            )
        self.collection = collection
        self.mode = mode
        self.model = write_model(mode)

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
    crash replaces them instead of adding copies.
    """

    def __init__(self, collection: Collection, run_id: str, group_id: str) -> None:
        self.collection = collection
        self.run_id = run_id
        self.group_id = group_id

    def write(self, dead_letters: list[DeadLetter]) -> None:
        now = dt.datetime.now(dt.UTC)
        requests = []
        for letter in dead_letters:
            message = letter.message
            value, key = message.value(), message.key()
            _kind, timestamp_ms = message.timestamp()
            document = {
                "topic": message.topic(),
                "partition": message.partition(),
                "offset": message.offset(),
                "timestamp": (
                    dt.datetime.fromtimestamp(timestamp_ms / 1000, dt.UTC)
                    if timestamp_ms and timestamp_ms > 0
                    else None
                ),
                "key": Binary(key[:MAX_STORED_VALUE_BYTES]) if key is not None else None,
                "key_size": len(key) if key is not None else None,
                "key_truncated": key is not None and len(key) > MAX_STORED_VALUE_BYTES,
                "value": Binary(value[:MAX_STORED_VALUE_BYTES]) if value is not None else None,
                "value_size": len(value) if value is not None else None,
                "value_truncated": value is not None and len(value) > MAX_STORED_VALUE_BYTES,
                "headers": [
                    {"key": key, "value": Binary(raw) if raw is not None else None}
                    for key, raw in (message.headers() or [])
                ],
                "code": letter.code,
                "reason": letter.reason,
                "stage": letter.stage,
                "run_id": self.run_id,
                "group_id": self.group_id,
                "failed_at": now,
            }
            _id = f"{message.topic()}:{message.partition()}:{message.offset()}"
            requests.append(ReplaceOne({"_id": _id}, document, upsert=True))
        try:
            self.collection.bulk_write(requests, ordered=False)
        except BulkWriteError as err:
            # A dead letter the server refuses (or cannot confirm) is not kept: nothing may be committed.
            errors = err.details.get("writeErrors", []) + err.details.get("writeConcernErrors", [])
            raise WriteFailedError(
                f"MongoDB did not keep {len(dead_letters)} dead letters in {self.collection.full_name} "
                f"(code {errors[0].get('code') if errors else '?'}: "
                f"{errors[0].get('errmsg') if errors else err}); nothing of this batch is committed "
                "and the task's retry writes it again"
            ) from err
