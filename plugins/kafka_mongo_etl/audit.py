"""The run audit in ``<db>.etl_runs``: one document per drain of a DAG run, with every try in it.

A drain's document (``_id`` ``<batch>``, or ``<batch>:<partitions>`` for one mapped drain) holds:

- the run: ``dag_run_id``, ``topic``, ``group_id``, ``target``, ``dead_letter_collection``,
  ``produced``;
- ``tries``: one entry per try, oldest first (``try``, ``attempt``, ``state``, ``error``,
  ``started_at``, ``ended_at`` and, when the try's drain ended, its summary: ``records``,
  ``loaded``, ``partitions``, ``dead_letters``, ``dead_letter_reasons``, ``lost_to_retention``...);
- ``totals``: what the tries add up to (``tries``, ``failures``, ``records``, ``loaded``,
  ``dead_letters``, ``dead_letter_reasons``, ``lost_to_retention``);
- at the top, the latest try's ``state``, ``error`` and drain summary (as before tries were kept),
  except ``dead_letters``, ``dead_letter_reasons`` and ``lost_to_retention``, which are the run's
  totals: a retry that succeeds never hides what a failed try dead-lettered or lost.

Each try's entry is keyed by its ``attempt`` (its try number and a random part), so a try that
writes twice (a failure audit after its own success audit could not be confirmed) replaces its
entry instead of counting twice, and two processes that run the same try (a zombie and its
successor) each keep theirs. Writes are compare-and-set on ``revision``: tries that finish at
once never lose each other's entries.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from kafka_mongo_etl.errors import AuditConflictError

log = logging.getLogger(__name__)

AUDIT_COLLECTION = "etl_runs"
# Compare-and-set rounds before giving up: each lost round means another try of the same drain
# wrote in between, and there are never more than a few of those.
MAX_WRITE_ROUNDS = 20
# The drain summary's fields that describe one try (DrainSummary.as_dict() without its identity).
_RUN_TOTAL_FIELDS = ("dead_letters", "dead_letter_reasons", "lost_to_retention")
_IDENTITY_FIELDS = ("topic", "group_id")
# What ``run_consume`` says about the run (the same for every try) and the document's own fields.
_RUN_FIELDS = ("dag_run_id", "topic", "group_id", "target", "dead_letter_collection", "produced")
_DOCUMENT_FIELDS = ("_id", "updated_at", "revision", "tries", "totals")
_LEGACY_ATTEMPT = "before-tries"


@dataclass
class TryAudit:
    """What one try of a drain saw: its state, its error and, once its drain ended, its summary.

    ``attempt`` keys the entry in the document; make one per try with ``TryAudit.begin``.
    """

    attempt: str
    try_number: int | None
    started_at: dt.datetime
    state: str = "running"
    error: str | None = None
    # DrainSummary.as_dict() when the try's drain ended (success, dead-letter limit, stall).
    summary: dict[str, Any] | None = None
    # Dead letters a try wrote before it failed, counted in the dead-letter collection (a
    # failed drain returns no summary); ignored when ``summary`` is known.
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)

    @classmethod
    def begin(cls, try_number: int | None) -> TryAudit:
        attempt = f"try-{'?' if try_number is None else try_number}/{secrets.token_hex(4)}"
        return cls(attempt=attempt, try_number=try_number, started_at=dt.datetime.now(dt.UTC))

    def entry(self, ended_at: dt.datetime) -> dict[str, Any]:
        """The try's entry in ``tries``."""
        entry: dict[str, Any] = {
            "try": self.try_number,
            "attempt": self.attempt,
            "state": self.state,
            "started_at": self.started_at,
            "ended_at": ended_at,
        }
        if self.error:
            entry["error"] = self.error
        if self.summary is not None:
            entry.update({k: v for k, v in self.summary.items() if k not in _IDENTITY_FIELDS})
        else:
            entry["dead_letters"] = sum(self.dead_letter_reasons.values())
            entry["dead_letter_reasons"] = dict(self.dead_letter_reasons)
        return entry


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _lost_ranges(entry: Mapping[str, Any]) -> dict[str, list[tuple[int, int]]] | None:
    """``{partition: [(first, after)]}`` the try skipped as lost to retention, from its partitions
    (``start`` is where it started after the gap, ``lost`` how many offsets lay below); ``None``
    for an entry that has no partitions but counts (a document written before tries were kept)."""
    partitions = entry.get("partitions")
    if not isinstance(partitions, Mapping):
        return None
    ranges: dict[str, list[tuple[int, int]]] = {}
    for partition, progress in partitions.items():
        if not isinstance(progress, Mapping):
            continue
        start, lost = _count(progress.get("start")), _count(progress.get("lost"))
        if lost > 0:
            ranges.setdefault(str(partition), []).append((start - lost, start))
    return ranges


def _union_size(ranges: Iterable[tuple[int, int]]) -> int:
    size, reached = 0, None
    for first, after in sorted(ranges):
        if reached is not None and first < reached:
            first = reached
        if after > first:
            size += after - first
            reached = after
    return size


def run_totals(tries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the tries of one drain add up to.

    ``records`` and ``loaded`` count the tries whose drain ended (a try that failed midway
    reports no summary; what it committed is not re-read, so no record counts twice).
    ``dead_letters`` add up over tries: a try that failed after writing a batch's dead letters
    but before committing it counts them, and so does the retry that writes them again, so
    the total may exceed the dead-letter documents by that batch; it is never below them.
    ``lost_to_retention`` counts each lost offset once, even when two tries skipped the same gap.
    """
    reasons: dict[str, int] = {}
    lost_ranges: dict[str, list[tuple[int, int]]] = {}
    lost_counted: dict[str, int] = {}
    records = loaded = None
    for entry in tries:
        for code, count in (entry.get("dead_letter_reasons") or {}).items():
            reasons[str(code)] = reasons.get(str(code), 0) + _count(count)
        if isinstance(entry.get("records"), int):
            records = (records or 0) + _count(entry.get("records"))
            loaded = (loaded or 0) + _count(entry.get("loaded"))
        ranges = _lost_ranges(entry)
        if ranges is None:
            for partition, count in (entry.get("lost_to_retention") or {}).items():
                lost_counted[str(partition)] = lost_counted.get(str(partition), 0) + _count(count)
        else:
            for partition, found in ranges.items():
                lost_ranges.setdefault(partition, []).extend(found)
    lost = dict(lost_counted)
    for partition, ranges_of_partition in lost_ranges.items():
        lost[partition] = lost.get(partition, 0) + _union_size(ranges_of_partition)
    dead_letters = sum(_count(entry.get("dead_letters")) for entry in tries)
    return {
        "tries": len(tries),
        "failures": sum(entry.get("state") == "failed" for entry in tries),
        "records": records,
        "loaded": loaded,
        "dead_letters": dead_letters,
        "dead_letter_reasons": reasons,
        "lost_to_retention": {p: n for p, n in sorted(lost.items(), key=lambda i: int(i[0])) if n},
    }


def _legacy_entry(document: Mapping[str, Any]) -> dict[str, Any]:
    """A document written before tries were kept, as the one try it describes."""
    entry = {k: v for k, v in document.items() if k not in (*_RUN_FIELDS, *_DOCUMENT_FIELDS)}
    return {**entry, "try": None, "attempt": _LEGACY_ATTEMPT, "ended_at": document.get("updated_at")}


def _order(entry: Mapping[str, Any]) -> tuple[int, dt.datetime]:
    ended = entry.get("ended_at")
    if not isinstance(ended, dt.datetime):
        ended = dt.datetime.min
    # pymongo reads datetimes back naive (UTC); compare them all naive.
    return _count(entry.get("try")), ended.replace(tzinfo=None)


def merged_document(
    current: Mapping[str, Any] | None,
    run_fields: Mapping[str, Any],
    entry: Mapping[str, Any],
    now: dt.datetime,
) -> dict[str, Any]:
    """The audit document once ``entry`` (one try) is in ``current``'s tries.

    ``entry`` replaces the entry of the same ``attempt``; the latest try (highest try number,
    then latest end) gives the top-level state, error and drain summary.
    """
    if current is None:
        tries: list[Mapping[str, Any]] = []
    elif isinstance(current.get("tries"), list):
        tries = [t for t in current["tries"] if isinstance(t, Mapping)]
    else:
        tries = [_legacy_entry(current)] if current.get("state") else []
    tries = sorted([*(t for t in tries if t.get("attempt") != entry.get("attempt")), entry], key=_order)
    latest = tries[-1]
    totals = run_totals(tries)
    document: dict[str, Any] = {
        **{k: v for k, v in latest.items() if k not in ("try", "attempt", "started_at", "ended_at")},
        **run_fields,
    }
    document.pop("error", None)
    if latest.get("error"):
        document["error"] = latest["error"]
    document.update({name: totals[name] for name in _RUN_TOTAL_FIELDS})
    document["tries"] = [dict(t) for t in tries]
    document["totals"] = totals
    document["revision"] = _count(current.get("revision")) + 1 if current is not None else 1
    document["updated_at"] = now
    return document


def write_try(
    collection: Collection, audit_id: str, run_fields: Mapping[str, Any], attempt: TryAudit
) -> dict[str, Any]:
    """Put ``attempt``'s entry into the drain's audit document (creating it) and return the document.

    Idempotent per try: writing the same ``attempt`` again replaces its entry. Raises
    ``AuditConflictError`` when other writers kept winning (never seen with a handful of tries).
    """
    for _ in range(MAX_WRITE_ROUNDS):
        now = dt.datetime.now(dt.UTC)
        current = collection.find_one({"_id": audit_id})
        document = merged_document(current, run_fields, attempt.entry(now), now)
        if current is None:
            try:
                collection.insert_one({"_id": audit_id, **document})
            except DuplicateKeyError:
                continue  # another try created it first: merge into theirs
            return document
        # A document without a revision (written before tries were kept) matches revision: null.
        found = collection.replace_one({"_id": audit_id, "revision": current.get("revision")}, document)
        if found.matched_count:
            return document
        log.info("The audit document %s changed while this try wrote it; merging again", audit_id)
    raise AuditConflictError(
        f"the audit document {audit_id!r} in {collection.full_name} changed {MAX_WRITE_ROUNDS} times "
        "while this try wrote its entry (other tries of the same drain writing at once); its figures "
        "are in the task's log and return value"
    )


def dead_letter_reasons_since(
    collection: Collection,
    *,
    run_id: str,
    group_id: str,
    topic: str,
    since: dt.datetime,
    partitions: Sequence[int] | None = None,
) -> dict[str, int]:
    """``{code: count}`` of the dead letters the run wrote to ``collection`` since ``since``.

    What a try that failed midway dead-lettered: the drain returns no summary when it fails,
    but its dead letters are in the collection (``MongoDeadLetterSink``: one per record, with the
    run, group and time of writing).
    """
    query: dict[str, Any] = {
        "run_id": run_id,
        "group_id": group_id,
        "topic": topic,
        "failed_at": {"$gte": since},
    }
    if partitions is not None:
        query["partition"] = {"$in": list(partitions)}
    reasons: dict[str, int] = {}
    for letter in collection.find(query, {"code": 1, "_id": 0}):
        code = str(letter.get("code") or "unknown")
        reasons[code] = reasons.get(code, 0) + 1
    return reasons
