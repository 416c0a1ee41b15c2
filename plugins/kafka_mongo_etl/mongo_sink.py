"""Idempotent bulk writes to one MongoDB collection."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pymongo import ReplaceOne
from pymongo.collection import Collection


@dataclass(frozen=True)
class WriteResult:
    written: int
    inserted: int
    replaced: int


class MongoSink:
    """Writes documents keyed by ``_id`` with unordered replace-upserts.

    Writing the same documents twice leaves the collection as after the first write, which is
    what makes a re-read of uncommitted Kafka offsets harmless. ``write`` returns only after
    MongoDB acknowledged every document, and raises otherwise (``BulkWriteError`` tells which).
    """

    def __init__(self, collection: Collection) -> None:
        self.collection = collection

    def write(self, documents: Mapping[Any, dict[str, Any]]) -> WriteResult:
        """Upsert ``{_id: document}``; one ``_id`` appears once (the caller keeps the latest)."""
        if not documents:
            return WriteResult(0, 0, 0)
        requests = [ReplaceOne({"_id": _id}, doc, upsert=True) for _id, doc in documents.items()]
        result = self.collection.bulk_write(requests, ordered=False)
        return WriteResult(
            written=len(requests), inserted=result.upserted_count, replaced=result.matched_count
        )
