"""How a batch of documents is written: one small class per write model, picked by name.

Each model writes a batch with unordered bulk writes so that writing the same batch again
changes nothing, and says which documents MongoDB refused *because of the document*. Every other
write error is raised: the batch is not committed and the task's retry writes it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pymongo import InsertOne, ReplaceOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from kafka_mongo_etl.records import Document

# Write errors that say "not now" rather than "not this document": the batch is not committed
# and the task's retry writes it again.
TRANSIENT_WRITE_ERRORS = frozenset(
    {6, 7, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 112, 251}
)


@dataclass(frozen=True)
class WriteResult:
    written: int
    inserted: int
    replaced: int
    # Documents MongoDB refused, with why (the rest of the batch was written).
    rejected: list[tuple[Document, str]] = field(default_factory=list)


def refusal(error: dict[str, Any]) -> str:
    return f"MongoDB refused the document (code {error.get('code')}): {error.get('errmsg')}"


def document_errors(err: BulkWriteError) -> list[dict[str, Any]]:
    """The write errors of ``err`` that are about single documents; raises ``err`` otherwise."""
    details = err.details
    errors = details.get("writeErrors", [])
    if details.get("writeConcernErrors") or any(e.get("code") in TRANSIENT_WRITE_ERRORS for e in errors):
        raise err
    return errors


def already_there(error: dict[str, Any]) -> bool:
    """An insert that failed only because a document with that ``_id`` exists."""
    return error.get("code") == 11000 and error.get("keyPattern", {"_id": 1}) == {"_id": 1}


class WriteModel(Protocol):
    name: ClassVar[str]

    def write(self, collection: Collection, documents: Sequence[Document]) -> WriteResult: ...


class ReplaceModel:
    """Upsert each document: a re-read or re-sent record overwrites its own document, and the
    latest version wins."""

    name: ClassVar[str] = "replace"

    def write(self, collection: Collection, documents: Sequence[Document]) -> WriteResult:
        requests = [ReplaceOne({"_id": doc.id}, doc.body, upsert=True) for doc in documents]
        try:
            result = collection.bulk_write(requests, ordered=False)
        except BulkWriteError as err:
            errors = document_errors(err)
            return WriteResult(
                written=len(requests),
                inserted=err.details.get("nUpserted", 0),
                replaced=err.details.get("nMatched", 0),
                rejected=[(documents[e["index"]], refusal(e)) for e in errors],
            )
        return WriteResult(
            written=len(requests), inserted=result.upserted_count, replaced=result.matched_count
        )


class InsertModel:
    """Insert, and skip ``_id``s that exist: exactly once as well, but the first version wins —
    for records that never change."""

    name: ClassVar[str] = "insert"

    def write(self, collection: Collection, documents: Sequence[Document]) -> WriteResult:
        requests = [InsertOne(doc.body) for doc in documents]
        try:
            result = collection.bulk_write(requests, ordered=False)
        except BulkWriteError as err:
            errors = [e for e in document_errors(err) if not already_there(e)]
            return WriteResult(
                written=len(requests),
                inserted=err.details.get("nInserted", 0),
                replaced=0,
                rejected=[(documents[e["index"]], refusal(e)) for e in errors],
            )
        return WriteResult(written=len(requests), inserted=result.inserted_count, replaced=0)


WRITE_MODELS: dict[str, type[WriteModel]] = {model.name: model for model in (ReplaceModel, InsertModel)}
WRITE_MODES = tuple(WRITE_MODELS)


def write_model(mode: str) -> WriteModel:
    try:
        return WRITE_MODELS[mode]()
    except KeyError:
        raise ValueError(f"unknown write_mode {mode!r}; choose one of {', '.join(WRITE_MODES)}") from None
