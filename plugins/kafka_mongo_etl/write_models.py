"""How a batch of documents is written: one small class per write model, picked by name.

**The fence.** Every stored document carries what was applied to it:
``_kafka: {topic, partition, offset, applied: {"<topic>:<partition>": <highest offset applied>}}``.
A write of the record at (topic t, partition p, offset o) changes the document only if
``applied["t:p"]`` is missing or below o, in one server-side statement (an update pipeline:
``$replaceWith`` of ``$cond``), so a late writer — a try paused past its lease, a request the
network delivered late, a re-read of one partition after a crash — can never replace, update or
delete content newer than its own record, whenever it arrives. A tombstone
(``delete_on_tombstone``) obeys the same rule: it replaces the document with a small marker
(``_deleted_at``, ``_kafka``) that a TTL index purges after ``MARKER_RETENTION``.
docs/fencing.md says what this protects, what it costs and its limits.

**A batch** is written in (usually) two unordered bulk writes, so writing it again changes nothing:

1. ``InsertOne`` for every document: on a first load almost every ``_id`` is new, and a plain
   insert is the cheapest write there is (and safe: it only succeeds where the ``_id`` is absent).
2. The documents the insert refused are written again with the model's fenced upsert, keyed by
   ``_id``. The server answers that second write for exactly the question that matters — is
   this ``_id`` stored, and is this record newer than what it applied? — with its own ``_id``
   equality (``1`` and ``1.0`` are one key to it), so its verdict is final.

Why step 2 and not the insert's error: a duplicate-key error does not reliably say which key
collided. Older servers and DocumentDB send no ``keyPattern``; error messages differ between
servers; and SecantusDB reports a re-read ``{_id: a, email: x}`` as a duplicate on the ``email``
index when ``a`` is stored with ``email: x`` (the record collides with itself).

**Versions of one _id in a batch** give the result writing them one by one would give: the model
folds a partition's consecutive versions into one write (``replace``: the last; ``update``: the
fields merged in offset order; ``insert``: the first). Versions from several partitions (or topics) are
written in rounds, one bulk write per round, in read order; and when the server refuses a folded
write, that ``_id``'s versions are written again one by one, so only the refused record becomes a
dead letter.

Every write goes through ``bulk.bulk_write``: a write error becomes a dead letter unless its
code says the server could not write *now* (``TRANSIENT_ERRORS``), which raises
``WriteFailedError`` (the batch is not committed and the task's retry writes it again), as does
a write concern the server could not satisfy; a command refused as a whole is narrowed down to
the requests that cause it (docs/poison-records.md).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import bson
from bson.raw_bson import RawBSONDocument
from confluent_kafka import Message
from pymongo import InsertOne, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from kafka_mongo_etl.bulk import (  # noqa: F401 - importable from here too
    DOCUMENT_ERRORS,
    TRANSIENT_ERRORS,
    Outcome,
    _codes,
    bulk_write,
    check_write_concern,
    refusal,
)
from kafka_mongo_etl.cdc import CdcSettings, change_events
from kafka_mongo_etl.errors import WriteFailedError
from kafka_mongo_etl.ids import IdFunction, id_function
from kafka_mongo_etl.options import WRITE_MODES as WRITE_MODE_NAMES
from kafka_mongo_etl.options import cdc_format_problem, key_ids_problem
from kafka_mongo_etl.processors import Chain, WriteHints, build_chain
from kafka_mongo_etl.records import (
    MAX_DOCUMENT_BYTES,
    MAX_STATEMENT_BYTES,
    STATEMENT_OVERHEAD_BYTES,
    BadRecordError,
    Document,
    RecordBuilder,
    fence_key,
    id_identity,
    json_document,
    processed_document,
    where,
)
from kafka_mongo_etl.schema_formats import KeyDecoder, ValueDecoder, decoded_key_ids

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000
ID_INDEX = {"_id": 1}

# The update model's timestamps: set by the write, never taken from the record.
CREATED_AT = "_created_at"
UPDATED_AT = "_updated_at"
TIMESTAMPS = (CREATED_AT, UPDATED_AT)
# What the two timestamps add to a document (two BSON dates with their names).
_TIMESTAMP_BYTES = sum(1 + len(name) + 1 + 8 for name in TIMESTAMPS)


# A tombstone's marker: the time of the delete, purged by a TTL index after MARKER_RETENTION.
# A write delayed longer than that (or a re-read of records older than it) finds no marker and
# can bring the deleted version back: keep it above the longest delay a write can see (the
# lease, the task's retries) and the longest a partition can be re-read from behind.
DELETED_AT = "_deleted_at"
MARKER_RETENTION = dt.timedelta(days=7)
MARKER_INDEX = "_deleted_at_ttl"
# IndexOptionsConflict, IndexKeySpecsConflict: an index on _deleted_at exists with other options.
INDEX_CONFLICTS = (85, 86)


@dataclass(frozen=True)
class WriteResult:
    """What a batch's write did. ``written`` counts the records given (every version); each is
    then ``rejected`` (a dead letter), ``superseded`` (folded into another version of its ``_id``
    in the batch), or the one record of a write the server acknowledged."""

    written: int
    inserted: int
    # Existing documents written again (replaced, updated, or found and kept by ``insert``).
    replaced: int
    # Documents MongoDB refused, with why (the rest of the batch was written).
    rejected: list[tuple[Document, str]] = field(default_factory=list)
    # Tombstones that replaced a stored document (a value, or an older marker) with their marker.
    deleted: int = 0
    superseded: int = 0
    # Fenced writes that changed nothing because the document had already applied their
    # partition up to or past their offset: an older record delivered late, or a re-read.
    stale: int = 0

    @property
    def loaded(self) -> int:
        return self.written - self.superseded - len(self.rejected)


def now() -> dt.datetime:
    """The write's time, at BSON's millisecond precision."""
    moment = dt.datetime.now(dt.UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@dataclass
class Write:
    """What one statement writes for one ``_id``: ``versions`` (records of one topic's partition,
    in offset order) folded into ``body`` (``None`` for a tombstone). The fence checks the record
    at (``topic``, ``partition``, ``offset``), the latest of the versions."""

    id: Any
    body: Any
    versions: list[Document]
    partition: int
    offset: int
    topic: str

    @classmethod
    def of(cls, versions: list[Document], body: Any, _id: Any) -> Write:
        last = versions[-1].message
        return cls(_id, body, versions, last.partition(), last.offset(), last.topic())

    @property
    def fence_key(self) -> str:
        return fence_key(self.topic, self.partition)

    @classmethod
    def single(cls, document: Document) -> Write:
        return cls.of([document], document.body, document.id)


# The stored document's applied map, or an empty one when it has none (stored before the fence,
# or by another program): such a document takes any record as newer. Guarded by type, because
# $objectToArray of a non-document fails the whole command, not the one statement.
_STORED_APPLIED = {"$cond": [{"$eq": [{"$type": "$_kafka.applied"}, "object"]}, "$_kafka.applied", {}]}


def stored_applied(topic: str) -> dict[str, Any]:
    """The stored document's applied map as the fence reads it for a write from ``topic``.

    Keys written before the fence was keyed by topic are partition numbers alone (``"0"``; no
    ':'): they were written when a collection could be loaded from one topic only, so they are
    read as the writing topic's (``"0"`` becomes ``"<topic>:0"``), and the write stores them
    under that name: the first write after an upgrade keeps the old fence instead of losing it
    (docs/fencing.md, "Documents written before the topic key").
    """
    entry_key = {
        "$cond": [
            {"$lt": [{"$indexOfBytes": ["$$entry.k", ":"]}, 0]},
            {"$concat": [{"$literal": topic}, ":", "$$entry.k"]},
            "$$entry.k",
        ]
    }
    entries = {"$objectToArray": _STORED_APPLIED}
    return {
        "$arrayToObject": {
            "$map": {"input": entries, "as": "entry", "in": {"k": entry_key, "v": "$$entry.v"}}
        }
    }


def _seen(write: Write) -> dict[str, Any]:
    """The highest offset of ``write``'s topic and partition the stored document applied, -1 for
    none (spelled out: SecantusDB's ``$max`` of a missing value is missing)."""
    return {"$ifNull": [{"$getField": {"field": write.fence_key, "input": "$$applied"}}, -1]}


def kafka_field(write: Write, own: bool = False) -> dict[str, Any]:
    """The expression of the ``_kafka`` a fenced write stores: its record, and the applied map
    with its topic's partition moved up to its offset. ``own``: the record's document says what
    ``_kafka`` shows besides the fence (the ``kafka_metadata`` processor), kept as it is."""
    applied = {
        "$setField": {
            "field": write.fence_key,
            "input": "$$applied",
            "value": {"$max": [write.offset, _seen(write)]},
        }
    }
    if own and write.body is not None:
        shown = write.body.get("_kafka") or {}
        display = {name: {"$literal": value} for name, value in shown.items() if name != "applied"}
        return {**display, "applied": applied}
    return {"topic": write.topic, "partition": write.partition, "offset": write.offset, "applied": applied}


def fenced(write: Write, new: Any) -> UpdateOne:
    """An upsert that stores ``new`` (an expression) only if ``write``'s record is newer than
    what the stored document applied of its topic's partition; otherwise the document stays as
    it is (the server reports it matched, not modified)."""
    newer = {"$lt": [_seen(write), write.offset]}
    replacement = {
        "$let": {"vars": {"applied": stored_applied(write.topic)}, "in": {"$cond": [newer, new, "$$ROOT"]}}
    }
    return UpdateOne({"_id": write.id}, [{"$replaceWith": replacement}], upsert=True)


def _position(document: Document) -> tuple[str, int]:
    return document.message.topic(), document.message.partition()


def _runs(versions: list[Document]) -> list[list[Document]]:
    """``versions`` cut where the topic or partition changes: each run is one partition's, in
    offset order."""
    runs: list[list[Document]] = []
    for document in versions:
        if runs and _position(runs[-1][-1]) == _position(document):
            runs[-1].append(document)
        else:
            runs.append([document])
    return runs


@dataclass
class _Tally:
    inserted: int = 0
    replaced: int = 0
    deleted: int = 0
    superseded: int = 0
    stale: int = 0
    matched: int = 0


class WriteModel:
    """Insert the batch, then write again, with the fenced ``rewrite``, what the insert refused.

    Subclasses say how a batch's versions of one ``_id`` fold into writes (``plan``), how a
    write is inserted (``insert``), how it is written when its ``_id`` may exist (``rewrite``),
    and which documents they cannot write at all (``unwritable``).

    After a batch in which most ``_id``s existed (a re-read, a re-sent batch) the next batch
    most likely holds existing ``_id``s too: it skips the insert step and goes straight to
    ``rewrite``, until a batch finds mostly new ``_id``s again. Both ways end in the same state.
    """

    name: ClassVar[str]
    # True when an insert refused as a duplicate on the _id index needs no second write.
    skip_existing: ClassVar[bool] = False
    # True when the rewrite is fenced (matched but not modified = stale).
    is_fenced: ClassVar[bool] = True

    def __init__(self, hints: WriteHints | None = None) -> None:
        self.rewrite_next = False
        # What the record path's processors ask of a rewrite (kafka_mongo_etl.processors).
        self.hints = hints or WriteHints()

    def kafka(self, write: Write) -> dict[str, Any]:
        """The ``_kafka`` expression of ``write``'s fenced rewrite."""
        return kafka_field(write, self.hints.own_kafka)

    def kept_on_rewrite(self, write: Write) -> dict[str, Any]:
        """The insert-only fields (``insert_timestamp``) a rewrite sets: the stored value, else
        the record's. Empty without such processors."""
        if not self.hints.insert_only or write.body is None:
            return {}
        return {
            name: {"$ifNull": ["$" + name, {"$literal": write.body[name]}]}
            for name in self.hints.insert_only
            if name in write.body
        }

    def plan(self, versions: list[Document]) -> list[Write]:
        """The writes, in order, that give ``versions`` (one ``_id``'s, in read order) the
        result of writing them one by one. Default: a partition's consecutive versions fold
        into the last (the latest wins)."""
        return [Write.of(run, run[-1].body, run[-1].id) for run in _runs(versions)]

    def insert(self, write: Write, at: dt.datetime) -> InsertOne | None:
        """The insert of step 1, or None for a write that goes straight to ``rewrite``."""
        return InsertOne(write.body)

    def rewrite(self, write: Write, at: dt.datetime) -> UpdateOne:
        raise NotImplementedError

    def unwritable(self, document: Document) -> str | None:
        """Why this model cannot write ``document`` (it becomes a dead letter), or None."""
        return None

    def prepare(self, collection: Collection, writes: list[Write]) -> None:
        """Anything the collection needs before ``writes`` are written (an index)."""

    def write(self, collection: Collection, documents: Sequence[Document]) -> WriteResult:
        """Write ``documents`` (every record of a batch, in read order; several may share an ``_id``)."""
        at = now()
        rejected = [(doc, why) for doc in documents if (why := self.unwritable(doc)) is not None]
        unwritable = {id(doc) for doc, _ in rejected}
        versions: dict[Hashable, list[Document]] = {}
        for doc in documents:
            if id(doc) not in unwritable:
                versions.setdefault(doc.identity, []).append(doc)
        queues = [deque(self.plan(group)) for group in versions.values()]
        tally = _Tally()
        first = True
        while queues:
            heads = [queue[0] for queue in queues]
            self.prepare(collection, heads)
            refused = self.write_round(
                collection, heads, at, tally, insert_first=first and not self.rewrite_next
            )
            if first:
                self.rewrite_next = not self.skip_existing and 2 * tally.matched > len(heads)
                first = False
            for index, queue in enumerate(queues):
                head = queue.popleft()
                if index not in refused:
                    tally.superseded += len(head.versions) - 1
                elif len(head.versions) > 1:
                    # One of the folded versions may be the one refused: write them one by one,
                    # so the others are stored and only the refused record becomes a dead letter.
                    queue.extendleft(reversed([Write.single(doc) for doc in head.versions]))
                else:
                    rejected.append((head.versions[0], refused[index]))
            queues = [queue for queue in queues if queue]
        return WriteResult(
            written=len(documents),
            inserted=tally.inserted,
            replaced=tally.replaced,
            rejected=rejected,
            deleted=tally.deleted,
            superseded=tally.superseded,
            stale=tally.stale,
        )

    def write_round(
        self, collection: Collection, writes: list[Write], at: dt.datetime, tally: _Tally, insert_first: bool
    ) -> dict[int, str]:
        """One write per ``_id``: the insert step (unless skipped), then the fenced rewrite of
        what it refused; returns the refused writes' indexes, with the server's reason."""
        again = list(range(len(writes)))
        if insert_first:
            inserts = [
                (i, request) for i, w in enumerate(writes) if (request := self.insert(w, at)) is not None
            ]
            first = bulk_write(collection, [request for _, request in inserts], "insert")
            tally.inserted += first.count("nInserted")
            refused_inserts = {inserts[position][0]: error for position, error in first.refused}
            kept = {
                i for i, error in refused_inserts.items() if self.skip_existing and is_id_duplicate(error)
            }
            tally.replaced += len(kept)  # found and kept (insert)
            inserted = {i for i, _ in inserts} - set(refused_inserts)
            again = [i for i in again if i not in inserted and i not in kept]
        refused: dict[int, str] = {}
        # Values and tombstones apart, so that the server's counts say which did what.
        for part in (
            [i for i in again if writes[i].body is not None],
            [i for i in again if writes[i].body is None],
        ):
            if not part:
                continue
            outcome = self.write_again(collection, [writes[i] for i in part], at)
            matched, modified = outcome.count("nMatched"), outcome.count("nModified")
            refused.update((part[position], refusal(error)) for position, error in outcome.refused)
            if writes[part[0]].body is None:
                tally.deleted += modified
            else:
                tally.inserted += outcome.count("nUpserted")
                tally.replaced += matched
                tally.matched += matched
            if self.is_fenced:
                tally.stale += matched - modified
        return refused

    def write_again(self, collection: Collection, again: list[Write], at: dt.datetime) -> Outcome:
        """Step 2: the model's upsert for what the insert refused; a duplicate on ``_id`` here
        means another writer inserted it meanwhile, so the batch fails and is retried."""
        outcome = bulk_write(collection, [self.rewrite(w, at) for w in again], "rewrite")
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


def _replacement(
    write: Write, kafka: dict[str, Any] | None = None, kept: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The record's document, as an expression (``$literal``: its nested names stay names),
    with the fence's ``_kafka`` (``kafka``, default ``kafka_field``) and the ``kept`` fields'
    expressions (insert-only fields)."""
    document: dict[str, Any] = {
        "$setField": {
            "field": "_kafka",
            "input": {"$literal": write.body},
            "value": kafka or kafka_field(write),
        }
    }
    for name, value in (kept or {}).items():
        document = {"$setField": {"field": name, "input": document, "value": value}}
    return document


class ReplaceModel(WriteModel):
    """Insert, and replace what exists if the record is newer: the latest version wins; a
    first load runs at insert speed."""

    name: ClassVar[str] = "replace"

    def rewrite(self, write: Write, at: dt.datetime) -> UpdateOne:
        return fenced(write, _replacement(write, self.kafka(write), self.kept_on_rewrite(write)))


class InsertModel(WriteModel):
    """Insert, and keep what exists: exactly once as well, but the first version wins — for
    records that never change. Never overwrites, so it needs no fence."""

    name: ClassVar[str] = "insert"
    skip_existing: ClassVar[bool] = True
    is_fenced: ClassVar[bool] = False

    def plan(self, versions: list[Document]) -> list[Write]:
        # The first version wins: the others would be found and kept, one by one.
        return [Write.of(versions, versions[0].body, versions[0].id)]

    def rewrite(self, write: Write, at: dt.datetime) -> UpdateOne:
        # Inserts only where the _id is absent; refused again only for another unique index.
        fields = _fields(write.body) or {"_id": write.id}  # $setOnInsert may not be empty
        return UpdateOne({"_id": write.id}, {"$setOnInsert": fields}, upsert=True)


class UpdateModel(WriteModel):
    """Set the record's fields on its document, if the record is newer: fields a later version
    lacks stay (``$set`` of top-level fields, done with ``$mergeObjects`` under the fence).

    A batch's versions of one ``_id`` from one partition merge in offset order, as if written
    one by one. ``_created_at`` is the time of the first write of the ``_id``, ``_updated_at``
    the time of the latest, both from the writing task's clock; the record's own fields of those
    names are replaced. A re-read of a record already applied changes nothing (it is stale).
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
        if len(document.body.raw) + _TIMESTAMP_BYTES > MAX_DOCUMENT_BYTES:
            return (
                f"write_mode 'update' adds {', '.join(TIMESTAMPS)} to the record's "
                f"{len(document.body.raw)}-byte document, which would then be over MongoDB's 16 MiB "
                "limit; load such records with 'replace'"
            )
        return None

    def plan(self, versions: list[Document]) -> list[Write]:
        runs = _runs(versions)
        if len(runs) > 1:
            # Merging across partitions (or topics) could set a field again that a newer record of another
            # partition has set since: one by one, each under its own fence.
            return [Write.single(doc) for doc in versions]
        if len(versions) == 1:
            return [Write.single(versions[0])]
        merged: dict[str, Any] = {}
        for doc in versions:
            merged.update(doc.body.items())
        _id = versions[0].id
        merged["_id"] = _id
        body = RawBSONDocument(bson.encode(merged))
        id_bytes = len(bson.encode({"_id": _id}))
        if len(body.raw) + _TIMESTAMP_BYTES > MAX_DOCUMENT_BYTES or (
            len(body.raw) + id_bytes + STATEMENT_OVERHEAD_BYTES > MAX_STATEMENT_BYTES
        ):
            return [Write.single(doc) for doc in versions]  # each fits, their merge does not
        return [Write.of(versions, body, _id)]

    def insert(self, write: Write, at: dt.datetime) -> InsertOne:
        fields = _fields(write.body, TIMESTAMPS)
        return InsertOne({"_id": write.id, **fields, CREATED_AT: at, UPDATED_AT: at})

    def rewrite(self, write: Write, at: dt.datetime) -> UpdateOne:
        fields = _fields(write.body, (*TIMESTAMPS, "_kafka"))
        stamps = {
            UPDATED_AT: at,
            CREATED_AT: {"$ifNull": ["$" + CREATED_AT, at]},
            "_kafka": self.kafka(write),
            **self.kept_on_rewrite(write),
        }
        return fenced(write, {"$mergeObjects": ["$$ROOT", {"$literal": fields}, stamps]})


class DeleteOnTombstoneModel(ReplaceModel):
    """``replace``, and a tombstone (a record with a null value) deletes its key's document: the
    latest of value and tombstone wins.

    A tombstone replaces the document, under the fence, with a marker ``{_id, _deleted_at,
    _kafka}``, so that a late older value can neither bring it back (its insert finds the marker's
    ``_id``, its rewrite is older) nor a late tombstone delete a newer value. A TTL index on
    ``_deleted_at`` (made on the first tombstone) purges markers after ``MARKER_RETENTION``;
    until then readers see them: filter ``{"_deleted_at": {"$exists": false}}``.

    Needs ``id_strategy='key'`` and the record builder from ``tombstones_delete``.
    """

    name: ClassVar[str] = "delete_on_tombstone"

    def __init__(self, hints: WriteHints | None = None) -> None:
        super().__init__(hints)
        self.marker_index = False

    def prepare(self, collection: Collection, writes: list[Write]) -> None:
        if not self.marker_index and any(write.body is None for write in writes):
            ensure_marker_index(collection)
            self.marker_index = True

    def insert(self, write: Write, at: dt.datetime) -> InsertOne | None:
        # A tombstone always goes through the fence: its counts say whether it deleted.
        return None if write.body is None else super().insert(write, at)

    def rewrite(self, write: Write, at: dt.datetime) -> UpdateOne:
        if write.body is not None:
            return super().rewrite(write, at)
        marker = {"_id": {"$literal": write.id}, DELETED_AT: at, "_kafka": kafka_field(write)}
        return fenced(write, marker)


def ensure_marker_index(collection: Collection, retention: dt.timedelta = MARKER_RETENTION) -> None:
    """The TTL index that purges tombstone markers; idempotent. An index on ``_deleted_at`` with
    other options (made by hand) is kept, with a warning."""
    try:
        collection.create_index(
            DELETED_AT,
            name=MARKER_INDEX,
            expireAfterSeconds=int(retention.total_seconds()),
            partialFilterExpression={DELETED_AT: {"$exists": True}},
        )
    except OperationFailure as err:
        if err.code not in INDEX_CONFLICTS:
            raise
        log.warning(
            "An index on %s.%s exists with other options than the tombstone markers' TTL index "
            "(%s); kept as it is: markers are purged by its rules, if any",
            collection.full_name,
            DELETED_AT,
            err,
        )


class CdcModel(DeleteOnTombstoneModel):
    """Mirror a table from Debezium change events (``kafka_mongo_etl.cdc``): an insert, snapshot
    read or update replaces the row's document with its ``after`` image, a delete and its tombstone
    delete it. The records come from ``cdc.change_events``, which makes the ``_id`` from the event
    key (the primary key); the writes are ``delete_on_tombstone``'s."""

    name: ClassVar[str] = "cdc"


def _fields(body: Any, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """The document's fields without ``_id`` (and ``leave_out``)."""
    return {k: v for k, v in body.items() if k != "_id" and k not in leave_out}


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
# The modes that take a tombstone for "delete the key's document": they need its _id from the key
# (declared with the modes' names in kafka_mongo_etl.options, which the DAG form reads).
TOMBSTONE_MODES = tuple(name for name, mode in WRITE_MODE_NAMES.items() if mode.needs_key_ids)


def write_model(mode: str, hints: WriteHints | None = None) -> WriteModel:
    try:
        model = WRITE_MODELS[mode]
    except KeyError:
        raise ValueError(f"unknown write_mode {mode!r}; choose one of {', '.join(WRITE_MODELS)}") from None
    return model(hints)


def record_builder(
    mode: str,
    builder: RecordBuilder,
    id_for: IdFunction,
    id_strategy: str,
    cdc: CdcSettings | None = None,
    chain: Chain | None = None,
) -> Callable[[Message], Document]:
    """The record builder ``mode`` needs: tombstones become deletes in ``delete_on_tombstone``;
    ``cdc`` reads Debezium change events (``cdc.change_events``, with ``cdc`` settings and the
    value ``chain`` of processors applied to each row) instead of ``builder``."""
    if mode not in TOMBSTONE_MODES:
        return builder
    problem = key_ids_problem(mode, id_strategy)
    if problem:
        raise ValueError(problem)
    if mode == CdcModel.name:
        return change_events(cdc, chain)
    return tombstones_delete(builder, id_for)


def record_path(
    write_mode: str,
    id_strategy: str = "key",
    id_field: str | None = None,
    id_fields: Sequence[str] | None = None,
    processors: Any = None,
    cdc: CdcSettings | None = None,
    value_decoder: ValueDecoder | None = None,
    key_decoder: KeyDecoder | None = None,
) -> tuple[RecordBuilder, WriteHints]:
    """How a load's records become documents — its id strategy, write mode, post-processors
    (``kafka_mongo_etl.processors``) and change-event settings — and what the write model must
    know of the processors. ``value_decoder`` and ``key_decoder`` read values and keys in a Schema
    Registry format (``schema_formats.registry_decoders``); ``None``: JSON values, keys as they
    are (with ``key_decoder``, id_strategy ``key`` makes the ``_id`` of the decoded key). Raises
    ``ValueError`` for options that cannot work."""
    chain = build_chain(processors)
    id_for = chain.key_ids(id_function(id_strategy, id_field, tuple(id_fields) if id_fields else None))
    if key_decoder is not None and write_mode == CdcModel.name:
        raise ValueError(cdc_format_problem("key_format", "other than json"))
    if key_decoder is not None and id_strategy == "key":
        id_for = decoded_key_ids(key_decoder, chain)
    if value_decoder is None:
        values = json_document(id_for, chain)
    else:
        values = processed_document(id_for, chain, value_decoder)
    builder = record_builder(write_mode, values, id_for, id_strategy, cdc, chain)
    return builder, chain.hints


__all__ = [
    "DOCUMENT_ERRORS",
    "TRANSIENT_ERRORS",
    "WRITE_MODES",
    "WriteFailedError",
    "WriteModel",
    "WriteResult",
    "record_builder",
    "write_model",
]
