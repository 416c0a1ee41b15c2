"""What the ETL page reads from MongoDB: the run audit (``<db>.etl_runs``) and dead letters
(``<db>.<collection>_dlq``, written by ``kafka_mongo_etl.mongo_sink.MongoDeadLetterSink``).

Every query is bounded: the latest runs come from an index on ``(target, updated_at)`` with a
limit, the newest dead letters from an index on ``failed_at`` with a limit, so the page costs the
same with ten or ten thousand documents. Fields a document lacks read as unknown, not as errors.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import PyMongoError

from kafka_mongo_etl.audit import AUDIT_COLLECTION
from kafka_mongo_etl.ids import default_group_id

log = logging.getLogger(__name__)

RUNS_LIMIT = 50
DEAD_LETTERS_LIMIT = 10
# Databases MongoDB keeps for itself; they never hold an ETL target.
SYSTEM_DATABASES = frozenset({"admin", "config", "local"})
# The same rules as the DAG's params (dags/kafka_to_mongo.py), so a target from the URL is one
# the DAG could have written to.
_DB_FORBIDDEN = set('/\\. "$*<>:|?')


@dataclass(frozen=True)
class Target:
    """A MongoDB database and collection the DAG loads into, written ``<db>.<collection>``."""

    database: str
    collection: str

    @classmethod
    def parse(cls, text: str) -> Target:
        """``"db.coll"`` -> Target; the collection may hold dots, the database may not."""
        database, dot, collection = text.strip().partition(".")
        if not dot or not database or not collection:
            raise ValueError(f"{text!r} is not a target: write it as <database>.<collection>")
        if len(database) > 63 or _DB_FORBIDDEN & set(database):
            raise ValueError(f"{database!r} is not a MongoDB database name")
        if "$" in collection or "\x00" in collection or collection.startswith("system."):
            raise ValueError(f"{collection!r} is not a collection the ETL writes to")
        return cls(database, collection)

    def __str__(self) -> str:
        return f"{self.database}.{self.collection}"

    @property
    def dead_letter_collection(self) -> str:
        return f"{self.collection}_dlq"

    @property
    def default_group_id(self) -> str:
        return default_group_id(self.database, self.collection)


DEFAULT_TARGET = Target("testnum", "testnum")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, dict):
        # A count that grew into a summary ({"count": n, ...}) still reads as its count.
        return _as_int(value.get("count"))
    if isinstance(value, list):
        return len(value)
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _as_utc(value: Any) -> dt.datetime | None:
    if not isinstance(value, dt.datetime):
        return None
    # pymongo hands out naive datetimes (UTC) unless the client was made tz_aware.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _reason_counts(value: Any) -> tuple[tuple[str, int], ...]:
    """``{"not_json": 3, ...}`` -> ``(("not_json", 3), ...)``, most frequent first."""
    if not isinstance(value, dict):
        return ()
    counts = ((str(code), _as_int(count)) for code, count in value.items())
    return tuple(sorted(((code, n) for code, n in counts if n), key=lambda item: (-item[1], item[0])))


@dataclass(frozen=True)
class RunRow:
    """One audit document as the page shows it; ``None`` where the document has no value."""

    dag_id: str
    run_id: str
    state: str
    produced: int | None
    loaded: int | None
    dead_letters: int | None
    seconds: float | None
    records_per_second: float | None
    updated_at: dt.datetime | None
    error: str | None = None
    stalled: bool = False
    dead_letter_reasons: tuple[tuple[str, int], ...] = ()
    # Records deleted by retention before they were loaded (skipped with on_retention_gap=skip).
    lost_to_retention: int = 0
    records: int | None = None
    # How many drains (audit documents) this row sums: more than one when consume was mapped.
    drains: int = 1
    # The tries of its drains (one each unless retried), and how many of them failed.
    tries: int = 1
    failed_tries: int = 0
    # The topic the drains read (a run with a topic map has a row per topic); None: not recorded.
    topic: str | None = None

    @classmethod
    def from_audit(cls, document: dict[str, Any]) -> RunRow:
        """One drain's audit document (``kafka_mongo_etl.audit``): its state is the latest try's,
        its loaded documents, dead letters and losses are what all its tries add up to; the
        seconds and rate are the latest try's drain (a failed try may not have recorded them)."""
        batch = str(document.get("_id", ""))
        # The audit _id is "<dag_id>/<run_id>" (kafka_mongo_etl.ids.batch_id); a DAG id has no "/".
        dag_id, _, run_from_id = batch.partition("/")
        produced = document.get("produced")
        # Documents written before tries were kept have no totals: they describe one try.
        totals = document.get("totals") if isinstance(document.get("totals"), dict) else {}
        loaded = _as_int(totals["loaded"]) if totals.get("loaded") is not None else None
        return cls(
            dag_id=dag_id,
            run_id=str(document.get("dag_run_id") or run_from_id),
            state=str(document.get("state") or "unknown"),
            produced=_as_int(produced.get("count")) if isinstance(produced, dict) else None,
            loaded=loaded if loaded is not None else _as_int(document.get("loaded")),
            dead_letters=_as_int(document.get("dead_letters")),
            seconds=_as_float(document.get("seconds")),
            records_per_second=_as_float(document.get("records_per_second")),
            updated_at=_as_utc(document.get("updated_at")),
            error=str(document["error"]) if document.get("error") else None,
            stalled=bool(document.get("stalled")),
            dead_letter_reasons=_reason_counts(document.get("dead_letter_reasons")),
            lost_to_retention=sum(count for _, count in _reason_counts(document.get("lost_to_retention"))),
            records=_as_int(document.get("records")),
            tries=max(1, _as_int(totals.get("tries")) or 1),
            failed_tries=_as_int(totals.get("failures")) or 0,
            topic=str(document["topic"]) if document.get("topic") else None,
        )

    @classmethod
    def combine(cls, drains: Sequence[RunRow]) -> RunRow:
        """One row for the drains of one run (mapped tasks, each with its own audit document).

        Each drain's document carries the same produce summary, so ``produced`` is taken once;
        records, documents and dead letters add up; the drains ran side by side, so the run took
        as long as the longest, and its rate is all records over that time. The run failed if
        any drain did. Their tries, and failed tries, add up.
        """
        if len(drains) == 1:
            return drains[0]
        first = drains[0]
        states = {row.state for row in drains}
        # A failed drain fails the run; drains that all agree give their state.
        state = "failed" if "failed" in states else first.state if len(states) == 1 else "unknown"
        seconds = _largest(row.seconds for row in drains)
        records = _total(row.records for row in drains)
        reasons: dict[str, int] = {}
        for row in drains:
            for code, count in row.dead_letter_reasons:
                reasons[code] = reasons.get(code, 0) + count
        errors = [row.error for row in drains if row.error]
        return cls(
            dag_id=first.dag_id,
            run_id=first.run_id,
            state=state,
            produced=_largest(row.produced for row in drains),
            loaded=_total(row.loaded for row in drains),
            dead_letters=_total(row.dead_letters for row in drains),
            seconds=seconds,
            records_per_second=round(records / seconds, 1) if records is not None and seconds else None,
            updated_at=_largest(row.updated_at for row in drains),
            error="; ".join(errors) if errors else None,
            stalled=any(row.stalled for row in drains),
            dead_letter_reasons=_reason_counts(reasons),
            records=records,
            drains=len(drains),
            lost_to_retention=sum(row.lost_to_retention for row in drains),
            tries=sum(row.tries for row in drains),
            failed_tries=sum(row.failed_tries for row in drains),
            topic=first.topic,
        )

    @property
    def run_path(self) -> str:
        """The Airflow UI's page of this run, relative to the UI's base URL."""
        return f"dags/{quote(self.dag_id, safe='')}/runs/{quote(self.run_id, safe='')}"


def _total(values: Iterable[Any]) -> Any:
    known = [value for value in values if value is not None]
    return sum(known) if known else None


def _largest(values: Iterable[Any]) -> Any:
    known = [value for value in values if value is not None]
    return max(known) if known else None


def run_rows(documents: Sequence[dict[str, Any]]) -> list[RunRow]:
    """The audit documents as one row per DAG run and topic, newest first: the drains of a run that
    mapped ``consume`` over partitions (``<batch>:<partition>`` documents) become a single row; a
    run that drained several topics into this target (a topic map) has a row per topic."""
    grouped: dict[tuple[str, str, str | None], list[RunRow]] = {}
    for document in documents:
        row = RunRow.from_audit(document)
        grouped.setdefault((row.dag_id, row.run_id, row.topic), []).append(row)
    return [RunRow.combine(rows) for rows in grouped.values()]


@dataclass(frozen=True)
class RunSource:
    """Where the latest run read its records from: the topic and group whose lag the page shows."""

    topic: str
    group_id: str


IndexKeys = list[tuple[str, int]]

AUDIT_INDEXES: tuple[IndexKeys, ...] = (
    # The page's query: one target's runs, newest first.
    [("target", ASCENDING), ("updated_at", DESCENDING)],
    # Newest runs across targets, and a sort that never needs a collection scan.
    [("updated_at", DESCENDING)],
)
DEAD_LETTER_INDEXES: tuple[IndexKeys, ...] = ([("failed_at", DESCENDING)],)

# Indexes are created once per server, collection and process, not on every page view.
_indexed: set[tuple[str, str, str]] = set()
_indexed_lock = threading.Lock()


def ensure_indexes(collection: Collection, indexes: tuple[IndexKeys, ...]) -> None:
    """Create the indexes the page's queries use (idempotent; a failure is only logged).

    A read-only MongoDB user cannot create them; the page then still works, only slower.
    """
    servers = sorted(collection.database.client.topology_description.server_descriptions())
    key = (repr(servers), collection.database.name, collection.name)
    with _indexed_lock:
        if key in _indexed:
            return
    try:
        for keys in indexes:
            collection.create_index(keys)
    except PyMongoError as err:
        log.warning("Could not index %s.%s: %s", collection.database.name, collection.name, err)
        return
    with _indexed_lock:
        _indexed.add(key)


def latest_runs(database: Database, target: Target, limit: int = RUNS_LIMIT) -> list[dict[str, Any]]:
    """The target's latest ``limit`` audit documents, newest first."""
    audit = database[AUDIT_COLLECTION]
    ensure_indexes(audit, AUDIT_INDEXES)
    cursor = audit.find({"target": str(target)}).sort("updated_at", DESCENDING).limit(limit)
    return list(cursor)


# A target loaded from several topics (a topic map) shows the lag of at most this many more.
MORE_SOURCES_LIMIT = 4


def more_run_sources(
    documents: list[dict[str, Any]], target: Target, limit: int = MORE_SOURCES_LIMIT
) -> list[RunSource]:
    """The other topics (and groups) the target's latest runs read, newest first, after the one
    ``run_source`` names: a target that several topics load (docs/routing.md) shows each one's lag."""
    first = run_source(documents, target)
    found: list[RunSource] = []
    for document in documents:
        if not document.get("topic"):
            continue
        source = RunSource(str(document["topic"]), str(document.get("group_id") or target.default_group_id))
        if source != first and source not in found:
            found.append(source)
    return found[:limit]


def run_source(documents: list[dict[str, Any]], target: Target) -> RunSource | None:
    """The topic and consumer group of the newest run that names them."""
    for document in documents:
        if document.get("topic"):
            return RunSource(str(document["topic"]), str(document.get("group_id") or target.default_group_id))
    return None


def known_targets(client: MongoClient) -> list[str]:
    """Every target that has an audit document, across databases, sorted."""
    targets: set[str] = set()
    for name in client.list_database_names():
        if name in SYSTEM_DATABASES:
            continue
        database = client[name]
        if not database.list_collection_names(filter={"name": AUDIT_COLLECTION}):
            continue
        audit = database[AUDIT_COLLECTION]
        ensure_indexes(audit, AUDIT_INDEXES)
        targets.update(str(value) for value in audit.distinct("target") if value)
    return sorted(targets)


@dataclass(frozen=True)
class DeadLetterRow:
    failed_at: dt.datetime | None
    run_id: str | None
    partition: int | None
    offset: int | None
    code: str | None
    reason: str


@dataclass(frozen=True)
class DeadLetters:
    """The target's dead-letter collection: whether it exists, its size, its newest entries."""

    collection: str
    exists: bool
    total: int = 0
    latest: tuple[DeadLetterRow, ...] = ()


def _dead_letter(document: dict[str, Any]) -> DeadLetterRow:
    run_id = document.get("run_id")
    return DeadLetterRow(
        failed_at=_as_utc(document.get("failed_at")),
        run_id=str(run_id) if run_id else None,
        partition=_as_int(document.get("partition")),
        offset=_as_int(document.get("offset")),
        code=str(document["code"]) if document.get("code") else None,
        reason=str(document.get("reason") or "(no reason recorded)"),
    )


def dead_letters(database: Database, target: Target, limit: int = DEAD_LETTERS_LIMIT) -> DeadLetters:
    """The count and the newest ``limit`` entries of ``<collection>_dlq``, if it exists."""
    name = target.dead_letter_collection
    if not database.list_collection_names(filter={"name": name}):
        return DeadLetters(name, exists=False)
    collection = database[name]
    ensure_indexes(collection, DEAD_LETTER_INDEXES)
    # The stored record (key, value, headers) can be large and the page never shows it.
    fields = {"failed_at": 1, "run_id": 1, "partition": 1, "offset": 1, "code": 1, "reason": 1}
    newest = list(collection.find({}, fields).sort("failed_at", DESCENDING).limit(limit))
    return DeadLetters(
        name,
        exists=True,
        total=collection.estimated_document_count(),
        latest=tuple(_dead_letter(document) for document in newest),
    )
