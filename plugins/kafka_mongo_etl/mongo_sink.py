"""Idempotent bulk writes to one MongoDB collection, and the dead-letter collection beside it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bson import Binary
from pymongo import InsertOne, ReplaceOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

if TYPE_CHECKING:
    from kafka_mongo_etl.drain import DeadLetter

# Write errors that say "not now" rather than "not this document": the batch is not committed
# and the task's retry writes it again.
TRANSIENT_WRITE_ERRORS = frozenset(
    {6, 7, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 112, 251}
)
# A dead letter keeps at most this much of the record's value (and says how long it was).
MAX_STORED_VALUE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class WriteResult:
    written: int
    inserted: int
    replaced: int
    # _id -> why MongoDB refused that document (the rest of the batch was written).
    rejected: dict[Any, str] = field(default_factory=dict)


WRITE_MODES = ("replace", "insert")


def _already_there(error: dict[str, Any]) -> bool:
    """An insert that failed only because a document with that ``_id`` exists."""
    return error.get("code") == 11000 and error.get("keyPattern", {"_id": 1}) == {"_id": 1}


class MongoSink:
    """Writes documents keyed by ``_id``, unordered, so that writing them twice changes nothing.

    ``replace`` (the default) upserts each document: a re-read or re-sent record overwrites its
    own document, and the latest version wins. ``insert`` inserts and skips ``_id``s that exist:
    3-4 times faster on the MongoDB-wire server, exactly once as well, but the first version
    wins — for records that never change. ``write`` returns only after MongoDB acknowledged
    every document it did not refuse; it raises on anything else.
    """

    def __init__(self, collection: Collection, mode: str = "replace") -> None:
        if mode not in WRITE_MODES:
            raise ValueError(f"unknown write_mode {mode!r}; choose one of {', '.join(WRITE_MODES)}")
        self.collection = collection
        self.mode = mode

    def write(self, documents: Mapping[Any, dict[str, Any]]) -> WriteResult:
        """Write ``{_id: document}``; one ``_id`` appears once (the caller keeps the latest)."""
        if not documents:
            return WriteResult(0, 0, 0)
        ids = list(documents)
        if self.mode == "insert":
            requests = [InsertOne({"_id": _id, **documents[_id]}) for _id in ids]
        else:
            requests = [ReplaceOne({"_id": _id}, documents[_id], upsert=True) for _id in ids]
        try:
            result = self.collection.bulk_write(requests, ordered=False)
        except BulkWriteError as err:
            details = err.details
            errors = details.get("writeErrors", [])
            if details.get("writeConcernErrors") or any(
                e.get("code") in TRANSIENT_WRITE_ERRORS for e in errors
            ):
                raise
            if self.mode == "insert":
                errors = [e for e in errors if not _already_there(e)]
            rejected = {
                ids[e["index"]]: f"MongoDB refused the document (code {e.get('code')}): {e.get('errmsg')}"
                for e in errors
            }
            if self.mode == "insert":
                return WriteResult(
                    written=len(requests), inserted=details.get("nInserted", 0), replaced=0, rejected=rejected
                )
            return WriteResult(
                written=len(requests),
                inserted=details.get("nUpserted", 0),
                replaced=details.get("nMatched", 0),
                rejected=rejected,
            )
        if self.mode == "insert":
            return WriteResult(written=len(requests), inserted=result.inserted_count, replaced=0)
        return WriteResult(
            written=len(requests), inserted=result.upserted_count, replaced=result.matched_count
        )


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
            value = message.value()
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
                "key": Binary(message.key()) if message.key() is not None else None,
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
        self.collection.bulk_write(requests, ordered=False)
