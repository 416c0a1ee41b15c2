"""Replay dead letters: send chosen records of ``<collection>_dlq`` back through the current record
path and write model, once their cause is fixed (a validator relaxed, an index dropped).

Each dead letter is rebuilt as the record it was (topic, partition, offset, key, value, headers,
timestamp) and written like a drain writes it: **fenced by its original position**, so a replay
never replaces content that a newer record of its partition wrote (the write is then a stale
no-op, and the dead letter has done its job). The order is write first, delete after: a replay
that crashes between the two is run again, its write is a stale no-op, and the delete follows —
each record is loaded exactly once. A dead letter is deleted only if it is the one that was read
(same ``failed_at``): one that a drain wrote again meanwhile stays for the next replay.

A record that still fails stays, with the new ``code``/``reason``/``stage``, ``replayed_at`` and
``replays`` incremented. A dead letter that does not hold the whole record (key, value or headers
cut to their bounds, or a minimal one kept without content) cannot be replayed faithfully: it
stays, untouched but for ``unreplayable`` (why) and ``replayed_at``.

docs/replay.md says how to run it (the ``kafka_to_mongo_replay`` DAG or this function) and its limits.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TIMESTAMP_CREATE_TIME, Message
from pymongo import DeleteOne, UpdateOne
from pymongo.database import Database

from kafka_mongo_etl.bulk import bulk_write
from kafka_mongo_etl.cdc import CdcSettings
from kafka_mongo_etl.errors import ParamsRefusedError
from kafka_mongo_etl.mongo_client import EtlMongoHook
from kafka_mongo_etl.mongo_sink import MAX_CODE_CHARS, MAX_REASON_CHARS, MongoSink, _cut
from kafka_mongo_etl.options import DEAD_LETTER_SUFFIX, check_options
from kafka_mongo_etl.records import BadRecordError, Document
from kafka_mongo_etl.routing import Route, RoutingSink, routed
from kafka_mongo_etl.schema_formats import DEFAULT_CONN_ID, KeyDecoder, ValueDecoder, registry_decoders
from kafka_mongo_etl.write_models import record_path

__all__ = ["DeadLetterSelection", "ReplaySummary", "replay_dead_letters", "run_replay"]

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 500


def _as_utc(moment: dt.datetime | str | None, name: str) -> dt.datetime | None:
    if moment is None or moment == "":
        return None
    if isinstance(moment, str):
        try:
            moment = dt.datetime.fromisoformat(moment)
        except ValueError:
            raise ValueError(
                f"{name} {moment!r} is not an ISO 8601 date or time; use e.g. 2026-12-06 or "
                "2026-12-06T23:00:00+00:00"
            ) from None
    # A time without a zone is taken as UTC, the zone failed_at is stored in.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class DeadLetterSelection:
    """Which dead letters to replay: those matching every criterion given (at least one is
    required). ``failed_after`` is inclusive, ``failed_before`` exclusive; times without a zone
    are UTC; ``ids`` are dead-letter ``_id``s (``topic:partition:offset``)."""

    run_id: str | None = None
    codes: tuple[str, ...] = ()
    failed_after: dt.datetime | str | None = None
    failed_before: dt.datetime | str | None = None
    ids: tuple[str, ...] = ()

    def query(self) -> dict[str, Any]:
        """The dead letters' filter; raises ``ValueError`` for an empty selection."""
        query: dict[str, Any] = {}
        if self.run_id:
            query["run_id"] = self.run_id
        if self.codes:
            query["code"] = {"$in": list(self.codes)}
        if self.ids:
            query["_id"] = {"$in": list(self.ids)}
        after = _as_utc(self.failed_after, "failed_after")
        before = _as_utc(self.failed_before, "failed_before")
        if after is not None and before is not None and after >= before:
            raise ValueError(
                f"failed_after {after.isoformat()} is not before failed_before {before.isoformat()}"
            )
        window = {op: moment for op, moment in (("$gte", after), ("$lt", before)) if moment is not None}
        if window:
            query["failed_at"] = window
        if not query:
            raise ValueError(
                "no dead letters selected: give at least one of run_id, codes, failed_after, "
                "failed_before or ids (replaying a whole dead-letter collection by accident is "
                "refused; to mean it, give failed_before a time in the future)"
            )
        return query


@dataclass
class ReplaySummary:
    """What a replay did. ``selected`` = ``loaded`` + ``still_failing`` + ``unreplayable`` +
    ``changed``. ``loaded`` counts records now in the collection (their dead letters deleted),
    ``stale`` those of them whose fenced write found newer content stored and changed nothing;
    ``changed`` dead letters that a drain wrote again while the replay ran (kept)."""

    selected: int = 0
    loaded: int = 0
    stale: int = 0
    still_failing: dict[str, int] = field(default_factory=dict)
    unreplayable: int = 0
    changed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "selected": self.selected,
            "loaded": self.loaded,
            "stale": self.stale,
            "still_failing": dict(self.still_failing),
            "unreplayable": self.unreplayable,
            "changed": self.changed,
        }


def unreplayable_reason(letter: dict[str, Any]) -> str | None:
    """Why ``letter`` does not hold the whole record, or ``None`` when it does."""
    if letter.get("kept_minimal") or "value" not in letter or "key" not in letter:
        return "the dead letter was kept without the record's content (kept_minimal)"
    cut = [name for name in ("key", "value", "headers") if letter.get(f"{name}_truncated")]
    if cut:
        return (
            f"the dead letter keeps only part of the record's {' and '.join(cut)} (cut to its bounds): "
            "replaying it would load another record; read it again from Kafka, if retention still "
            "keeps it, or load it by hand"
        )
    return None


def as_message(letter: dict[str, Any]) -> Message:
    """The record ``letter`` keeps, as the consumer gave it (the timestamp's type is not kept:
    it comes back as create time)."""
    stamp = letter.get("timestamp")
    if isinstance(stamp, dt.datetime):
        aware = stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=dt.UTC)
        timestamp = (TIMESTAMP_CREATE_TIME, round(aware.timestamp() * 1000))
    else:
        timestamp = (0, 0)  # TIMESTAMP_NOT_AVAILABLE
    headers = [(header["key"], _bytes(header.get("value"))) for header in letter.get("headers") or []]
    return Message(
        topic=letter["topic"],
        partition=int(letter["partition"]),
        offset=int(letter["offset"]),
        key=_bytes(letter.get("key")),
        value=_bytes(letter.get("value")),
        headers=headers or None,
        timestamp=timestamp,
    )


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def replay_dead_letters(
    database: Database,
    collection: str,
    selection: DeadLetterSelection,
    write_mode: str = "replace",
    id_strategy: str = "key",
    id_field: str | None = None,
    id_fields: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    processors: Any = None,
    cdc: CdcSettings | None = None,
    route_by: str | None = None,
    value_decoder: ValueDecoder | None = None,
    key_decoder: KeyDecoder | None = None,
) -> ReplaySummary:
    """Replay the dead letters of ``database[collection + "_dlq"]`` that ``selection`` picks, in
    ``_id`` order, ``batch_size`` at a time, into ``database[collection]`` with the given write
    mode and id strategy (those the collection is loaded with: an other strategy makes other
    ``_id``s), post-processors, change-event settings and value and key decoders
    (``schema_formats.registry_decoders``; ``None``: JSON). ``route_by`` (the drain's, when it
    routes: its dead letters are all kept in ``collection``'s) sends each record to the collection
    its field names, as the drain does.

    Raises ``ValueError`` for an empty selection or options that cannot work, before anything is
    read; lets MongoDB's errors (and ``WriteFailedError``) leave: what was replayed so far stays
    replayed, and running the same replay again goes on exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    query = selection.query()
    to_document, hints = record_path(
        write_mode, id_strategy, id_field, id_fields, processors, cdc, value_decoder, key_decoder
    )
    sink: MongoSink | RoutingSink = MongoSink(database[collection], write_mode, hints)
    if route_by:
        to_document = routed(to_document, route_by, database.name, key_decoder)
        sink = RoutingSink(database, collection, write_mode, hints)
    letters = database[f"{collection}{DEAD_LETTER_SUFFIX}"]
    summary = ReplaySummary()
    still_failing: Counter[str] = Counter()
    log.info("Replaying the dead letters of %s matching %s into %s", letters.full_name, query, collection)
    last: Any = None
    while True:
        page = query if last is None else {"$and": [query, {"_id": {"$gt": last}}]}
        batch = list(letters.find(page).sort("_id", 1).limit(batch_size))
        if not batch:
            break
        last = batch[-1]["_id"]
        summary.selected += len(batch)
        _replay_batch(batch, to_document, sink, letters, summary, still_failing)
        summary.still_failing = dict(still_failing)
        log.info(
            "Replayed %s dead letters so far (up to %s): %s loaded (%s stale), %s still failing, "
            "%s unreplayable, %s changed meanwhile",
            summary.selected,
            last,
            summary.loaded,
            summary.stale,
            sum(still_failing.values()),
            summary.unreplayable,
            summary.changed,
        )
    summary.still_failing = dict(still_failing)
    if not summary.selected:
        log.info("No dead letters in %s match %s", letters.full_name, query)
    return summary


def _replay_batch(
    batch: list[dict[str, Any]],
    to_document: Any,
    sink: MongoSink | RoutingSink,
    letters: Any,
    summary: ReplaySummary,
    still_failing: Counter[str],
) -> None:
    now = dt.datetime.now(dt.UTC)
    documents: list[Document] = []
    letter_of: dict[int, dict[str, Any]] = {}  # id(document) -> its dead letter
    notes: list[UpdateOne] = []
    for letter in batch:
        reason = unreplayable_reason(letter)
        if reason is not None:
            summary.unreplayable += 1
            notes.append(_note(letter, {"$set": {"unreplayable": reason, "replayed_at": now}}))
            continue
        try:
            document = to_document(as_message(letter))
        except BadRecordError as err:
            still_failing[err.code] += 1
            notes.append(_failed_again(letter, err.code, str(err), "decode", now))
            continue
        documents.append(document)
        letter_of[id(document)] = letter
    # The write model folds versions of one _id in read order (the last wins), and _id order is
    # not offset order ("t:0:10" < "t:0:9"): write them in the order the partition holds them.
    documents.sort(key=lambda doc: (doc.message.topic(), doc.message.partition(), doc.message.offset()))
    # Write first (fenced: never over newer content), delete after: see the module's docstring.
    result = sink.write(documents)
    summary.stale += result.stale
    refused = set()
    for document, reason in result.rejected:
        refused.add(id(document))
        still_failing["rejected"] += 1
        notes.append(_failed_again(letter_of[id(document)], "rejected", reason, "write", now))
    loaded = [letter for key, letter in letter_of.items() if key not in refused]
    if notes:
        outcome = bulk_write(letters, notes, "dead letters noted after a replay")
        if outcome.refused:
            log.warning(
                "MongoDB refused to note the replay on %s dead letters of %s (%s); they stay as they were",
                len(outcome.refused),
                letters.full_name,
                outcome.refused[0][1].get("errmsg"),
            )
        summary.changed += len(notes) - len(outcome.refused) - outcome.count("nMatched")
    if loaded:
        deletes = [
            DeleteOne({"_id": letter["_id"], "failed_at": letter.get("failed_at")}) for letter in loaded
        ]
        deleted = _delete(letters, deletes)
        summary.loaded += deleted
        summary.changed += len(loaded) - deleted


def _delete(letters: Any, deletes: list[DeleteOne]) -> int:
    """Delete the dead letters of loaded records; how many were still as read."""
    return bulk_write(letters, deletes, "dead letters deleted after a replay").count("nRemoved")


def _note(letter: dict[str, Any], update: dict[str, Any]) -> UpdateOne:
    # Matched only while the dead letter is the one read: a drain that wrote it again meanwhile wins.
    return UpdateOne({"_id": letter["_id"], "failed_at": letter.get("failed_at")}, update)


def _failed_again(letter: dict[str, Any], code: str, reason: str, stage: str, now: dt.datetime) -> UpdateOne:
    fields = {
        "code": code[:MAX_CODE_CHARS],
        "reason": _cut(reason, MAX_REASON_CHARS),
        "stage": stage,
        "replayed_at": now,
    }
    return _note(letter, {"$set": fields, "$inc": {"replays": 1}})


def run_replay(params: dict[str, Any]) -> dict[str, Any]:
    """The ``kafka_to_mongo_replay`` DAG's task: replay what its ``params`` select, with a client
    from the ``mongo_conn_id`` connection; returns the summary. Params that cannot work (no
    selection, a bad time, options that do not go together) fail the run without retries."""
    done = "Nothing was replayed"
    check_options(params, done=done)
    selection = DeadLetterSelection(
        run_id=params.get("run_id") or None,
        codes=tuple(params.get("codes") or ()),
        failed_after=params.get("failed_after") or None,
        failed_before=params.get("failed_before") or None,
        ids=tuple(params.get("ids") or ()),
    )
    write_mode = params.get("write_mode") or "replace"
    id_strategy = params.get("id_strategy") or "key"
    id_field, id_fields = params.get("id_field") or None, params.get("id_fields") or None
    route_by = params.get("route_by") or None
    try:
        selection.query()
        if route_by:
            Route.parse(route_by)
        cdc = CdcSettings(params.get("cdc_keep_source", True), params.get("cdc_times") or "exact")
        # A registry format reads the Schema Registry connection (ConnectionProblem: retried).
        values, keys = registry_decoders(
            params.get("value_format") or "json",
            params.get("key_format") or "json",
            params.get("schema_registry_conn_id") or DEFAULT_CONN_ID,
        )
        record_path(write_mode, id_strategy, id_field, id_fields, params.get("processors"), cdc, values, keys)
    except ValueError as err:
        raise ParamsRefusedError(f"{err}. {done}; run again with other params.") from err
    conn_id = params.get("mongo_conn_id") or "mongo_default"
    with EtlMongoHook(conn_id) as hook:
        client = hook.get_conn()
        with hook.errors():
            summary = replay_dead_letters(
                client[params["mongo_db"]],
                params["mongo_collection"],
                selection,
                write_mode=write_mode,
                id_strategy=id_strategy,
                id_field=id_field,
                id_fields=id_fields,
                batch_size=int(params.get("batch_size") or DEFAULT_BATCH_SIZE),
                processors=params.get("processors"),
                cdc=cdc,
                route_by=route_by,
                value_decoder=values,
                key_decoder=keys,
            )
    result = {"target": f"{params['mongo_db']}.{params['mongo_collection']}", **summary.as_dict()}
    log.info("Replay done: %s", result)
    return result
