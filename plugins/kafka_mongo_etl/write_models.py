"""How a batch of documents is written: one small class per write model, picked by name.

Every model writes a batch in (at most) two unordered bulk writes, so writing the same batch
again changes nothing:

1. ``InsertOne`` for every document (``DeleteOne`` for a tombstone): on a first load almost
   every ``_id`` is new, and a plain insert is the cheapest write there is.
2. The documents the insert refused are written again with the model's own upsert, keyed by
   ``_id`` (``ReplaceOne``, ``UpdateOne`` ``$set``, ``UpdateOne`` ``$setOnInsert``). The server
   answers that second write for exactly the question that matters — is this ``_id`` stored? —
   with its own ``_id`` equality (``1`` and ``1.0`` are one key to it), so its verdict is final.

Why step 2 and not the insert's error: a duplicate-key error does not reliably say which key
collided. Older servers and DocumentDB send no ``keyPattern``; error messages differ between
servers; and SecantusDB reports a re-read ``{_id: a, email: x}`` as a duplicate on the ``email``
index when ``a`` is stored with ``email: x`` (the record collides with itself). Re-checking with a
query would need MongoDB's ``_id`` equality to map its answer back. The upsert needs neither.

Only errors about the document become dead letters (``DOCUMENT_ERRORS``); every other write
error raises ``WriteFailedError``: the batch is not committed and the task's retry writes it
again. So does a write concern the server reports it could not satisfy.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from confluent_kafka import Message
from pymongo import DeleteOne, InsertOne, ReplaceOne, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from kafka_mongo_etl.cdc import change_events
from kafka_mongo_etl.errors import WriteFailedError
from kafka_mongo_etl.ids import IdFunction
from kafka_mongo_etl.records import BadRecordError, Document, RecordBuilder, id_identity, where

# Write errors that are about the document itself — its content against the collection's
# rules — so the same document would be refused again on every retry: it becomes a dead letter
# and the rest of the batch loads. Names from MongoDB's src/mongo/base/error_codes.yml; the
# codes without a name there are the server's assertion ids (uassert) quoted in the comments.
# Any code NOT listed here (throttling 16500, Interrupted 11601, LockBusy 46, LockTimeout 24,
# StaleConfig 13388, NotWritablePrimary 10107, ... and every code we have never seen) fails the
# batch: nothing is committed and the task's retry writes it again.
DOCUMENT_ERRORS: dict[int, str] = {
    2: "BadValue (mongod's insert path: 'object to insert too large', an array _id)",
    15: "Overflow (nested deeper than the server allows)",
    52: "DollarPrefixedFieldName",
    53: "InvalidIdField",
    55: "InvalidDBRef",
    56: "EmptyFieldName",
    57: "DottedFieldName",
    66: "ImmutableField (the stored _id differs in type, e.g. 1 stored, 1.0 written)",
    121: "DocumentValidationFailure (the collection's validator)",
    10334: "BSONObjectTooLarge",
    11000: "DuplicateKey (a unique index; on _id only when another writer raced us)",
    16755: "a geo-indexed field that is not valid GeoJSON (uassert 16755, can't extract geo keys)",
    17419: "the document after the update is over 16 MiB (uassert 17419)",
    17420: "the document to upsert is over 16 MiB (uassert 17420)",
}
DUPLICATE_KEY = 11000
ID_INDEX = {"_id": 1}

# The update model's timestamps: set by the write, never taken from the record.
CREATED_AT = "_created_at"
UPDATED_AT = "_updated_at"
TIMESTAMPS = (CREATED_AT, UPDATED_AT)


@dataclass(frozen=True)
class WriteResult:
    written: int
    inserted: int
    # Existing documents written again (replaced, updated, or found and kept by ``insert``).
    replaced: int
    # Documents MongoDB refused, with why (the rest of the batch was written).
    rejected: list[tuple[Document, str]] = field(default_factory=list)
    deleted: int = 0


@dataclass
class Outcome:
    """What one unordered bulk write did: the server's counts and the requests it refused."""

    counts: dict[str, Any]
    # (request index, write error) of the requests refused for a reason about the document.
    refused: list[tuple[int, dict[str, Any]]]

    def count(self, name: str) -> int:
        return int(self.counts.get(name, 0))


def refusal(error: dict[str, Any]) -> str:
    return f"MongoDB refused the document (code {error.get('code')}): {error.get('errmsg')}"


def bulk_write(collection: Collection, requests: list[Any], step: str) -> Outcome:
    """One unordered bulk write; raises ``WriteFailedError`` unless every error is about a document."""
    if not requests:
        return Outcome({}, [])
    try:
        result = collection.bulk_write(requests, ordered=False)
    except BulkWriteError as err:
        details = err.details
        check_write_concern(details, collection, step)
        errors = details.get("writeErrors", [])
        other = [e for e in errors if e.get("code") not in DOCUMENT_ERRORS]
        if other:
            raise WriteFailedError(
                f"MongoDB did not write {len(other)} of {len(requests)} documents of a batch ({step}) "
                f"for a reason that is not about the documents: {_codes(other)}; first: "
                f"{other[0].get('errmsg')}. Nothing of this batch is committed: the task fails and "
                "its retry writes the batch again. If it keeps failing, check the server."
            ) from err
        return Outcome(details, [(e["index"], e) for e in errors])
    if not result.acknowledged:
        raise WriteFailedError(f"{step}: the write was not acknowledged (write concern w=0)")
    return Outcome(result.bulk_api_result, [])


def check_write_concern(details: dict[str, Any], collection: Collection, step: str) -> None:
    """Raise when the server says the write concern was not satisfied (never a dead letter)."""
    failures = details.get("writeConcernErrors") or []
    if failures:
        raise WriteFailedError(
            f"MongoDB applied the batch ({step}) but could not confirm the write concern "
            f"{collection.write_concern.document or '{}'}: {_codes(failures)}; "
            f"{failures[0].get('errmsg')}. Nothing of this batch is committed: the task fails and "
            "its retry writes the batch again. Check the connection's w/wtimeoutMS against the "
            "deployment (members, tags)."
        )


def _codes(errors: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for error in errors:
        name = f"code {error.get('code')}" + (f" {error['codeName']}" if error.get("codeName") else "")
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name} x{n}" for name, n in counts.items())


def now() -> dt.datetime:
    """The write's time, at BSON's millisecond precision."""
    moment = dt.datetime.now(dt.UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class WriteModel:
    """Insert the batch, then write again, with ``rewrite``, what the insert refused.

    Subclasses say how a document is inserted (``insert``), how it is written when its ``_id``
    may exist (``rewrite``), and which documents they cannot write at all (``unwritable``).

    After a batch in which most ``_id``s existed (a re-read, a re-sent batch) the next batch
    most likely holds existing ``_id``s too: it skips the insert step and goes straight to
    ``rewrite``, until a batch finds mostly new ``_id``s again. Both ways end in the same state.
    """

    name: ClassVar[str]
    # True when an insert refused as a duplicate on the _id index needs no second write.
    skip_existing: ClassVar[bool] = False

    def __init__(self) -> None:
        self.rewrite_next = False

    def insert(self, document: Document, at: dt.datetime) -> InsertOne | DeleteOne:
        return InsertOne(document.body)

    def rewrite(self, document: Document, at: dt.datetime) -> ReplaceOne | UpdateOne | DeleteOne:
        raise NotImplementedError

    def unwritable(self, document: Document) -> str | None:
        """Why this model cannot write ``document`` (it becomes a dead letter), or None."""
        return None

    def write(self, collection: Collection, documents: Sequence[Document]) -> WriteResult:
        at = now()
        rejected = [(doc, why) for doc in documents if (why := self.unwritable(doc)) is not None]
        unwritable = {id(doc) for doc, _ in rejected}
        batch = [doc for doc in documents if id(doc) not in unwritable]
        if self.rewrite_next:
            first, again, existing = Outcome({}, []), batch, 0
        else:
            first = bulk_write(collection, [self.insert(doc, at) for doc in batch], "insert")
            again, existing = self.sort_refused(batch, first.refused)
        second = self.write_again(collection, again, at)
        rejected += [(again[index], refusal(error)) for index, error in second.refused]
        self.rewrite_next = not self.skip_existing and 2 * second.count("nMatched") > len(batch)
        return WriteResult(
            written=len(documents),
            inserted=first.count("nInserted") + second.count("nUpserted"),
            replaced=existing + second.count("nMatched"),
            rejected=rejected,
            deleted=first.count("nRemoved") + second.count("nRemoved"),
        )

    def sort_refused(
        self, batch: list[Document], refused: list[tuple[int, dict[str, Any]]]
    ) -> tuple[list[Document], int]:
        """The documents the insert refused to write again, and how many are known to exist
        (``insert`` keeps those: a duplicate on the ``_id`` index, by the server's keyPattern)."""
        again: list[Document] = []
        existing = 0
        for index, error in refused:
            if self.skip_existing and is_id_duplicate(error):
                existing += 1
            else:
                again.append(batch[index])
        return again, existing

    def write_again(self, collection: Collection, again: list[Document], at: dt.datetime) -> Outcome:
        """Step 2: the model's upsert for what the insert refused; a duplicate on ``_id`` here
        means another writer inserted it meanwhile, so the batch fails and is retried."""
        outcome = bulk_write(collection, [self.rewrite(doc, at) for doc in again], "rewrite")
        raced = [error for _, error in outcome.refused if is_id_duplicate(error)]
        if raced:
            raise WriteFailedError(
                f"{len(raced)} documents were inserted by another writer while this batch was "
                f"written (duplicate key on _id: {raced[0].get('errmsg')}); nothing of this batch "
                "is committed and the task's retry writes it again"
            )
        return outcome


def is_id_duplicate(error: dict[str, Any]) -> bool:
    """A duplicate key on the ``_id`` index, by the server's own ``keyPattern`` (never assumed)."""
    return error.get("code") == DUPLICATE_KEY and error.get("keyPattern") == ID_INDEX


class ReplaceModel(WriteModel):
    """Insert, and replace what exists: a re-read or re-sent record overwrites its own
    document, so the latest version wins; a first load runs at insert speed."""

    name: ClassVar[str] = "replace"

    def rewrite(self, document: Document, at: dt.datetime) -> ReplaceOne:
        return ReplaceOne({"_id": document.id}, document.body, upsert=True)


class InsertModel(WriteModel):
    """Insert, and keep what exists: exactly once as well, but the first version wins — for
    records that never change."""

    name: ClassVar[str] = "insert"
    skip_existing: ClassVar[bool] = True

    def rewrite(self, document: Document, at: dt.datetime) -> UpdateOne:
        # Inserts only where the _id is absent; refused again only for another unique index.
        fields = _fields(document) or {"_id": document.id}  # $setOnInsert may not be empty
        return UpdateOne({"_id": document.id}, {"$setOnInsert": fields}, upsert=True)


class UpdateModel(WriteModel):
    """``$set`` the record's fields on its document: fields a later version lacks stay.

    ``_created_at`` is the time of the first write of the ``_id`` (``$setOnInsert``),
    ``_updated_at`` the time of the latest (``$set``), both from the writing task's clock; the
    record's own fields of those names are replaced. A re-read of a record whose content is equal
    changes nothing but ``_updated_at``.
    """

    name: ClassVar[str] = "update"

    def unwritable(self, document: Document) -> str | None:
        # $set takes "a.b" for the path a -> b, and refuses "": the stored document would not be
        # the record (an insert would keep them literally), so such records are dead letters.
        names = [name for name in document.body if "." in name or not name]
        if names:
            return (
                f"write_mode 'update' $sets fields by name and cannot set {names[:3]} (a name with "
                "'.' is a path to $set, an empty one is refused); load such records with 'replace'"
            )
        return None

    def insert(self, document: Document, at: dt.datetime) -> InsertOne:
        fields = _fields(document, TIMESTAMPS)
        return InsertOne({"_id": document.id, **fields, CREATED_AT: at, UPDATED_AT: at})

    def rewrite(self, document: Document, at: dt.datetime) -> UpdateOne:
        fields = _fields(document, TIMESTAMPS)
        update = {"$set": {**fields, UPDATED_AT: at}, "$setOnInsert": {CREATED_AT: at}}
        return UpdateOne({"_id": document.id}, update, upsert=True)


class DeleteOnTombstoneModel(ReplaceModel):
    """``replace``, and a tombstone (a record with a null value) deletes its key's document.

    Needs ``id_strategy='key'`` and the record builder from ``tombstones_delete``; a tombstone
    that is the latest record of its ``_id`` in a batch deletes, a later value writes it again.
    """

    name: ClassVar[str] = "delete_on_tombstone"

    def insert(self, document: Document, at: dt.datetime) -> InsertOne | DeleteOne:
        return DeleteOne({"_id": document.id}) if document.body is None else super().insert(document, at)

    def rewrite(self, document: Document, at: dt.datetime) -> ReplaceOne | DeleteOne:
        return DeleteOne({"_id": document.id}) if document.body is None else super().rewrite(document, at)


class CdcModel(DeleteOnTombstoneModel):
    """Mirror a table from Debezium change events (``kafka_mongo_etl.cdc``): an insert, snapshot
    read or update replaces the row's document with its ``after`` image, a delete and its tombstone
    delete it. The records come from ``cdc.change_events``, which makes the ``_id`` from the event
    key (the primary key); the writes are ``delete_on_tombstone``'s."""

    name: ClassVar[str] = "cdc"


def _fields(document: Document, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """The document's fields without ``_id`` (and ``leave_out``)."""
    return {k: v for k, v in document.body.items() if k != "_id" and k not in leave_out}


def tombstones_delete(builder: RecordBuilder, id_for: IdFunction) -> RecordBuilder:
    """``builder``, except that a record without a value becomes a tombstone ``Document``
    (``body=None``) with the ``_id`` its key gives, instead of a ``tombstone`` bad record."""

    def to_document(message: Message) -> Document:
        if message.value() is not None:
            return builder(message)
        try:
            _id = id_for(message, {})
        except (ValueError, UnicodeDecodeError) as err:
            raise BadRecordError("no_id", f"tombstone {where(message)}: {err}") from None
        return Document(id=_id, identity=id_identity(_id), body=None, message=message)

    return to_document


WRITE_MODELS: dict[str, type[WriteModel]] = {
    model.name: model for model in (ReplaceModel, InsertModel, UpdateModel, DeleteOnTombstoneModel, CdcModel)
}
# The modes that load JSON-object records (the write-model tests run each of them over such
# records); ``cdc`` loads Debezium change events, and its own tests feed it those.
WRITE_MODES = tuple(name for name in WRITE_MODELS if name != CdcModel.name)
# The modes that take a tombstone for "delete the key's document": they need its _id from the key.
TOMBSTONE_MODES = ("delete_on_tombstone", "cdc")


def write_model(mode: str) -> WriteModel:
    try:
        return WRITE_MODELS[mode]()
    except KeyError:
        raise ValueError(f"unknown write_mode {mode!r}; choose one of {', '.join(WRITE_MODELS)}") from None


def record_builder(
    mode: str, builder: RecordBuilder, id_for: IdFunction, id_strategy: str
) -> Callable[[Message], Document]:
    """The record builder ``mode`` needs: tombstones become deletes in ``delete_on_tombstone``;
    ``cdc`` reads Debezium change events (``cdc.change_events``) instead of ``builder``."""
    if mode not in TOMBSTONE_MODES:
        return builder
    if id_strategy != "key":
        raise ValueError(
            f"write_mode {mode!r} deletes the document of a tombstone's key, so it needs "
            f"id_strategy 'key' (not {id_strategy!r}): a tombstone has no value to take an _id from"
        )
    if mode == CdcModel.name:
        return change_events()
    return tombstones_delete(builder, id_for)


__all__ = [
    "DOCUMENT_ERRORS",
    "WRITE_MODES",
    "WriteFailedError",
    "WriteModel",
    "WriteResult",
    "record_builder",
    "write_model",
]
