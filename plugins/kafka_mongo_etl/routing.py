"""Route each record of a drain to a collection named by a field of its key or value
(``route_by``), and write a batch's documents collection by collection.

``route_by`` is ``"key"`` (the whole key, as UTF-8 text), ``"key.<path>"`` (a field of the key
read as a JSON object; with ``key_format`` a registry format, the whole key or a field of the
key as its schema decodes it) or ``"value.<path>"`` (a field of the document the record became; a path
may go into embedded documents: ``value.meta.kind``). The field's value names a collection of
the drain's database:

- a record without the field (or with ``null``; a key that is not a JSON object) goes to the
  drain's own collection, ``mongo_collection``, as the MongoDB Kafka sink connector's field
  namespace mappers do;
- a value that is not a string, or not a collection name MongoDB takes, makes the record a dead
  letter (``bad_route``) in ``<mongo_collection>_dlq``, which keeps every dead letter of the drain.

``RoutingSink`` writes each collection's documents with its own write model, one after the other,
and returns only when every one of them was acknowledged: the drain commits a batch's offsets
after that, so a crash between two collections' writes re-reads the batch, and the fence (keyed
by topic and partition, docs/fencing.md) makes the second write of the first collection a no-op.
docs/routing.md says more.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message
from pymongo.database import Database

from kafka_mongo_etl.mongo_sink import MongoSink
from kafka_mongo_etl.options import MAX_NAMESPACE_BYTES, MONGO_COLLECTION_PATTERN
from kafka_mongo_etl.processors import WriteHints
from kafka_mongo_etl.records import BadRecordError, Document, RecordBuilder, where
from kafka_mongo_etl.schema_formats import KeyDecoder
from kafka_mongo_etl.write_models import WriteResult


@dataclass(frozen=True)
class Route:
    """Where a record's collection name is: ``source`` ``"key"`` or ``"value"``, then ``path``."""

    source: str
    path: tuple[str, ...]

    @classmethod
    def parse(cls, route_by: str) -> Route:
        source, dot, rest = route_by.partition(".")
        path = tuple(rest.split(".")) if dot else ()
        if source not in ("key", "value") or (source == "value" and not path) or "" in path:
            raise ValueError(
                f"route_by {route_by!r} names no field: use 'key', 'key.<field>' or 'value.<field>' "
                "(a dotted path goes into embedded documents)"
            )
        return cls(source, path)

    def __str__(self) -> str:
        return ".".join((self.source, *self.path))

    def name_in(self, message: Message, document: Document, read_key: KeyDecoder | None = None) -> Any:
        """The routing field's value for this record, ``None`` when it has none. ``read_key``
        decodes a key in a registry format (``BadRecordError`` for one that does not decode)."""
        if self.source == "key" and read_key is not None:
            found: Any = read_key(message)
        elif self.source == "key":
            raw = message.key()
            if raw is None:
                return None
            if not self.path:
                return raw.decode("utf-8", "replace")
            try:
                found = json.loads(raw)
            except ValueError:
                return None
        else:
            found = document.body
        for name in self.path:
            if not hasattr(found, "get") or isinstance(found, str | bytes):
                return None
            found = found.get(name)
        return found


def collection_problem(database: str, name: Any) -> str | None:
    """Why ``name`` cannot be a collection of ``database`` the drain writes to, or ``None``."""
    if not isinstance(name, str):
        return f"its value is {type(name).__name__} {name!r}, not a string"
    if not re.search(MONGO_COLLECTION_PATTERN, name):
        return (
            f"{name!r} is not a collection name MongoDB takes (empty, over 200 characters, '$', NUL, "
            "or 'system.')"
        )
    if len(f"{database}.{name}".encode()) > MAX_NAMESPACE_BYTES:
        return f"{database}.{name} is over MongoDB's {MAX_NAMESPACE_BYTES} bytes for a namespace"
    return None


def routed(
    builder: RecordBuilder, route_by: str, database: str, read_key: KeyDecoder | None = None
) -> RecordBuilder:
    """``builder``, with each document's ``collection`` set from the record's ``route_by`` field
    (left ``None``, the drain's collection, when the record has none); a name MongoDB refuses
    raises ``BadRecordError`` (``bad_route``): the record becomes a dead letter. ``read_key``
    (``key_format``'s decoder) reads the key of a ``key`` route; a key that does not decode
    raises its ``BadRecordError``."""
    route = Route.parse(route_by)

    def to_document(message: Message) -> Document:
        document = builder(message)
        name = route.name_in(message, document, read_key)
        if name is None:
            return document
        problem = collection_problem(database, name)
        if problem is not None:
            raise BadRecordError(
                "bad_route",
                f"record {where(message)} is routed by {route} to a collection, but {problem}; fix the "
                "producer, or replay the dead letter once the field holds a collection name",
            )
        return dataclasses.replace(document, collection=name)

    return to_document


def combined(results: Sequence[WriteResult]) -> WriteResult:
    """One ``WriteResult`` for the writes of one batch to several collections."""
    return WriteResult(
        written=sum(result.written for result in results),
        inserted=sum(result.inserted for result in results),
        replaced=sum(result.replaced for result in results),
        rejected=[rejected for result in results for rejected in result.rejected],
        deleted=sum(result.deleted for result in results),
        superseded=sum(result.superseded for result in results),
        stale=sum(result.stale for result in results),
    )


class RoutingSink:
    """Writes a batch's documents to the collections they are routed to (``Document.collection``;
    ``None``: ``default``), each with its own ``MongoSink`` and write model, and returns only
    after every collection's write was acknowledged (a failure raises before the drain commits)."""

    def __init__(
        self, database: Database, default: str, mode: str = "replace", hints: WriteHints | None = None
    ) -> None:
        self.database = database
        self.default = default
        self.mode = mode
        self.hints = hints  # what the processors ask of the writes (kafka_mongo_etl.processors)
        self.sinks: dict[str, MongoSink] = {}

    def sink(self, name: str) -> MongoSink:
        if name not in self.sinks:
            self.sinks[name] = MongoSink(self.database[name], self.mode, self.hints)
        return self.sinks[name]

    def write(self, documents: Sequence[Document]) -> WriteResult:
        groups: dict[str, list[Document]] = {}
        for document in documents:
            groups.setdefault(document.collection or self.default, []).append(document)
        # Each collection's documents keep their read order: the write model folds versions by it.
        return combined([self.sink(name).write(group) for name, group in groups.items()])
