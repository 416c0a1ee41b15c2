"""One unordered bulk write, and what each of its errors means: retry the batch, or dead-letter
the documents that caused it.

The rule (docs/poison-records.md): **an error is about the documents unless it says otherwise.**

- A per-document write error (``BulkWriteError.details["writeErrors"]``) refuses its request:
  the caller makes it a dead letter with the server's code and message — *unless* its code is in
  ``TRANSIENT_ERRORS`` (the server was busy, stepping down, interrupted, routing stale, …) or it
  carries a transient error label: then nothing of the batch is committed and the task's retry
  writes it again. A code nobody has seen before is taken for the document's: the same document
  would be refused the same way on every retry, and failing for ever would wedge its partition.
- A write concern the server reports it could not satisfy fails the batch (never a dead letter).
- A command-level ``OperationFailure`` (the server refused the whole command, e.g. code 10334
  when one statement exceeds mongod's 16 MiB + 16 KiB) that is not a timeout, not transient and
  not about the deployment (``DEPLOYMENT_ERRORS``: authorization, a missing namespace, a view)
  is narrowed down: the requests are split in halves, each half is one bulk write, and the
  halves that fail again are split again, down to single requests. The requests refused on their
  own become refused entries of the ``Outcome``; the others are written and counted. At most
  ``2n - 1`` bulk writes for ``n`` requests, at most ``ceil(log2 n)`` levels deep; with ``k``
  culprits about ``2k log2 n``.
- Connection failures and client-side timeouts are not ``OperationFailure`` errors and leave
  here as they are: the task fails and its retry writes the batch again (``tasks`` names them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, OperationFailure, WriteConcernError

from kafka_mongo_etl.errors import WriteFailedError

log = logging.getLogger(__name__)

# Codes that say the server could not do the write *now*, whatever the document: the batch
# fails uncommitted and the task's retry writes it again. Names and categories from MongoDB's
# src/mongo/base/error_codes.yml (RetriableError, NotPrimaryError, ShutdownError, Interruption,
# ExceededTimeLimitError, StaleShardVersionError, NetworkError, WriteConcernError) and pymongo's
# helpers_shared._NOT_PRIMARY_CODES / _RETRYABLE_ERROR_CODES; 16500 is Azure Cosmos DB's.
TRANSIENT_ERRORS: dict[int, str] = {
    # Busy or throttled
    16500: "TooManyRequests (Cosmos DB: request rate is large)",
    24: "LockTimeout",
    46: "LockBusy",
    112: "WriteConflict",
    117: "ConflictingOperationInProgress",
    365: "TemporarilyUnavailable",
    # Interrupted, or out of time
    11601: "Interrupted",
    11600: "InterruptedAtShutdown",
    11602: "InterruptedDueToReplStateChange",
    262: "ExceededTimeLimit",
    50: "MaxTimeMSExpired",
    202: "NetworkInterfaceExceededTimeLimit",
    279: "ClientDisconnect",
    # Not (or no longer) the primary, or shutting down
    10107: "NotWritablePrimary",
    10058: "LegacyNotPrimary",
    13435: "NotPrimaryNoSecondaryOk",
    13436: "NotPrimaryOrSecondary",
    189: "PrimarySteppedDown",
    91: "ShutdownInProgress",
    133: "FailedToSatisfyReadPreference",
    134: "ReadConcernMajorityNotAvailableYet",
    # Sharding: the router's view of the cluster is stale
    13388: "StaleConfig",
    63: "StaleShardVersion",
    150: "StaleEpoch",
    249: "StaleDbVersion",
    # Network, as a server reports it for its own hops
    6: "HostUnreachable",
    7: "HostNotFound",
    89: "NetworkTimeout",
    9001: "SocketException",
    # Write concern, should a server send it as a write error
    64: "WriteConcernFailed",
    79: "UnknownReplWriteConcern",
    100: "UnsatisfiableWriteConcern",
}
# Error labels that mark an error as worth a retry, whatever its code.
TRANSIENT_LABELS = (
    "RetryableWriteError",
    "RetryableError",
    "SystemOverloadedError",
    "TransientTransactionError",
)

# Command-level codes about the deployment or the connection's rights, never about a document:
# narrowing them down would refuse every request, so they fail the batch as they are.
DEPLOYMENT_ERRORS: dict[int, str] = {
    13: "Unauthorized",
    18: "AuthenticationFailed",
    20: "IllegalOperation",
    26: "NamespaceNotFound",
    59: "CommandNotFound",
    72: "InvalidOptions",
    73: "InvalidNamespace",
    115: "CommandNotSupported",
    166: "CommandNotSupportedOnView",
    238: "NotImplemented",
    391: "ReauthenticationRequired",
    8000: "AtlasError (Atlas: quota or permission)",
}

# Codes seen refusing a document, for reference and for the docs only: since every code that is
# not transient refuses its document, this table no longer decides anything.
DOCUMENT_ERRORS: dict[int, str] = {
    2: "BadValue (mongod's insert path: 'object to insert too large', an array _id)",
    14: "TypeMismatch",
    15: "Overflow (nested deeper than the server allows)",
    52: "DollarPrefixedFieldName",
    53: "InvalidIdField",
    55: "InvalidDBRef",
    56: "EmptyFieldName",
    57: "DottedFieldName",
    61: "ShardKeyNotFound (an upsert on a collection sharded by another key)",
    66: "ImmutableField (the stored _id differs in type, e.g. 1 stored, 1.0 written)",
    121: "DocumentValidationFailure (the collection's validator)",
    10334: "BSONObjectTooLarge (also a whole command: one statement over 16 MiB + 16 KiB)",
    11000: "DuplicateKey (a unique index; on _id only when another writer raced us)",
    16572: "can't extract geo keys (a 2d/2dsphere-indexed field out of range; SecantusDB)",
    16755: "can't extract geo keys (a 2dsphere-indexed field that is not valid GeoJSON)",
    16766: "a hashed index fed an array",
    17419: "the document after the update is over 16 MiB",
    17420: "the document to upsert is over 16 MiB",
}


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


def is_transient(error: dict[str, Any]) -> bool:
    """A write error that says "not now" rather than "not this document" (or has no code)."""
    labels = error.get("errorLabels") or ()
    return (
        error.get("code") is None
        or error["code"] in TRANSIENT_ERRORS
        or any(label in labels for label in TRANSIENT_LABELS)
    )


def bulk_write(collection: Collection, requests: list[Any], step: str) -> Outcome:
    """One unordered bulk write of ``requests`` (more only to narrow a refused command down).

    Returns the server's counts (summed over the pieces when the command was narrowed down) and
    the requests refused for a reason about them, by index into ``requests``. Raises
    ``WriteFailedError`` for a transient write error or an unsatisfied write concern, and lets a
    command-level failure that is not about the requests (timeout, transient, deployment) and
    every connection failure leave as they are: nothing of the batch may then be committed.
    """
    if not requests:
        return Outcome({}, [])
    try:
        return _write(collection, requests, step)
    except OperationFailure as err:
        if not _narrowable(err):
            raise
        outcome = _narrow(collection, requests, step, err)
        log.warning(
            "MongoDB refused a bulk write of %s requests (%s) as a whole (code %s: %s); narrowed down, "
            "%s of them are refused on their own (the caller dead-letters them), the others were written",
            len(requests),
            step,
            err.code,
            _errmsg(err),
            len(outcome.refused),
        )
        return outcome


def _piece(collection: Collection, requests: list[Any], step: str) -> Outcome:
    """One piece of a command being narrowed down: one bulk write, narrowed down in turn."""
    try:
        return _write(collection, requests, step)
    except OperationFailure as err:
        if not _narrowable(err):
            raise
        return _narrow(collection, requests, step, err)


def _write(collection: Collection, requests: list[Any], step: str) -> Outcome:
    try:
        result = collection.bulk_write(requests, ordered=False)
    except BulkWriteError as err:
        details = err.details
        check_write_concern(details, collection, step)
        errors = details.get("writeErrors", [])
        transient = [e for e in errors if is_transient(e)]
        if transient:
            raise WriteFailedError(
                f"MongoDB did not write {len(transient)} of {len(requests)} documents of a batch ({step}) "
                f"for a reason that is not about the documents: {_codes(transient)}; first: "
                f"{transient[0].get('errmsg')}. Nothing of this batch is committed: the task fails and "
                "its retry writes the batch again. If it keeps failing, check the server."
            ) from err
        return Outcome(details, [(e["index"], e) for e in errors])
    if not result.acknowledged:
        raise WriteFailedError(f"{step}: the write was not acknowledged (write concern w=0)")
    return Outcome(result.bulk_api_result, [])


def _narrowable(err: OperationFailure) -> bool:
    """A command-level refusal that may be caused by some of its requests."""
    if isinstance(err, BulkWriteError | WriteConcernError) or err.timeout or err.code is None:
        return False
    if err.code in TRANSIENT_ERRORS or err.code in DEPLOYMENT_ERRORS:
        return False
    return not any(err.has_error_label(label) for label in TRANSIENT_LABELS)


def _narrow(collection: Collection, requests: list[Any], step: str, err: OperationFailure) -> Outcome:
    """``requests`` refused as a whole by ``err``: a single request is refused with the server's
    code and message; more are split in halves, each written (and narrowed) on its own."""
    if len(requests) == 1:
        error = {"index": 0, "code": err.code, "errmsg": _errmsg(err)}
        if isinstance(err.details, dict) and err.details.get("codeName"):
            error["codeName"] = err.details["codeName"]
        counts: dict[str, Any] = {name: 0 for name in _COUNTS}
        counts.update(writeErrors=[error], writeConcernErrors=[], upserted=[])
        return Outcome(counts, [(0, error)])
    middle = len(requests) // 2
    first = _piece(collection, requests[:middle], step)
    second = _piece(collection, requests[middle:], step)
    return _merged([(0, first), (middle, second)])


_COUNTS = ("nInserted", "nUpserted", "nMatched", "nModified", "nRemoved")


def _merged(pieces: list[tuple[int, Outcome]]) -> Outcome:
    """One ``Outcome`` of pieces written apart, each with the index of its first request."""
    counts: dict[str, Any] = {name: 0 for name in _COUNTS}
    counts.update(writeErrors=[], writeConcernErrors=[], upserted=[])
    refused: list[tuple[int, dict[str, Any]]] = []
    for start, outcome in pieces:
        for name in _COUNTS:
            counts[name] += outcome.count(name)
        counts["upserted"] += [{**u, "index": u["index"] + start} for u in outcome.counts.get("upserted", [])]
        for index, error in outcome.refused:
            moved = {**error, "index": index + start}
            counts["writeErrors"].append(moved)
            refused.append((index + start, moved))
    return Outcome(counts, refused)


def _errmsg(err: OperationFailure) -> str:
    details = err.details if isinstance(err.details, dict) else {}
    return str(details.get("errmsg") or err)


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
