"""``bulk.bulk_write`` narrows a command refused as a whole down to the requests that cause it.

A unit test of the narrowing logic against a stand-in collection: SecantusDB does not enforce
mongod's statement limit (16 MiB + 16 KiB per statement, code 10334 for the whole command), so
the stand-in refuses, with pymongo's real ``OperationFailure`` and that code, every command that
holds a "poison" request; it applies the others (inserts and replace-upserts into a dict) and
answers with the server's counts. ``tests/integration/test_poison_batches.py`` drives the same
refusal through the real server and broker.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo import InsertOne, ReplaceOne
from pymongo.errors import BulkWriteError, ExecutionTimeout, OperationFailure
from pymongo.write_concern import WriteConcern

from kafka_mongo_etl.bulk import TRANSIENT_ERRORS, bulk_write
from kafka_mongo_etl.errors import WriteFailedError

STATEMENT_TOO_LARGE = {
    "ok": 0.0,
    "errmsg": "BSONObj size: 16793700 (0x1003E64) is invalid. Size must be between 0 and 16793600(16MB)",
    "code": 10334,
    "codeName": "BSONObjectTooLarge",
}


class Result:
    acknowledged = True

    def __init__(self, counts: dict[str, Any]) -> None:
        self.bulk_api_result = counts


class RefusingCollection:
    """Applies inserts and replace-upserts; a command holding a request ``poison`` names is
    refused as a whole with ``failure`` (nothing of it applied), and a request ``refuse`` names
    gets a per-document write error with ``code``."""

    full_name = "db.testnum"
    write_concern = WriteConcern()

    def __init__(
        self,
        poison: Any,
        failure: dict[str, Any] = STATEMENT_TOO_LARGE,
        refuse: Any = None,
        code: int = 121,
    ) -> None:
        self.poison, self.failure, self.refuse, self.code = poison, failure, refuse, code
        self.stored: dict[Any, dict[str, Any]] = {}
        self.commands: list[int] = []

    def bulk_write(self, requests: list[Any], ordered: bool = True) -> Result:
        assert ordered is False
        self.commands.append(len(requests))
        if any(self.poison(_document(request)) for request in requests):
            raise OperationFailure(self.failure["errmsg"], self.failure["code"], self.failure)
        counts: dict[str, Any] = {
            "nInserted": 0,
            "nUpserted": 0,
            "nMatched": 0,
            "upserted": [],
            "writeErrors": [],
        }
        for index, request in enumerate(requests):
            document = _document(request)
            if self.refuse is not None and self.refuse(document):
                counts["writeErrors"].append({"index": index, "code": self.code, "errmsg": "refused"})
            elif isinstance(request, InsertOne):
                self.stored[document["_id"]] = document
                counts["nInserted"] += 1
            elif document["_id"] in self.stored:
                self.stored[document["_id"]] = document
                counts["nMatched"] += 1
            else:
                self.stored[document["_id"]] = document
                counts["nUpserted"] += 1
                counts["upserted"].append({"index": index, "_id": document["_id"]})
        if counts["writeErrors"]:
            raise BulkWriteError({**counts, "writeConcernErrors": []})
        return Result(counts)


def _document(request: InsertOne | ReplaceOne) -> dict[str, Any]:
    if isinstance(request, InsertOne):
        return request._doc
    return {"_id": request._filter["_id"], **request._doc}


def poisoned(document: dict[str, Any]) -> bool:
    return document.get("poison", False)


@settings(max_examples=200, deadline=None)
@given(
    flags=st.lists(st.booleans(), min_size=1, max_size=300),
    replace=st.booleans(),
)
def test_only_the_poison_requests_are_refused_and_the_rest_written(flags: list[bool], replace: bool) -> None:
    documents = [{"_id": n, "v": n, "poison": poison} for n, poison in enumerate(flags)]
    if replace:
        requests: list[Any] = [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in documents]
    else:
        requests = [InsertOne(d) for d in documents]
    collection = RefusingCollection(poisoned)

    outcome = bulk_write(collection, requests, "insert")

    poison = {n for n, flag in enumerate(flags) if flag}
    assert {index for index, _ in outcome.refused} == poison
    assert all(error["code"] == 10334 and "BSONObj size" in error["errmsg"] for _, error in outcome.refused)
    assert all(error["codeName"] == "BSONObjectTooLarge" for _, error in outcome.refused)
    assert collection.stored == {d["_id"]: d for d in documents if not d["poison"]}
    written = len(flags) - len(poison)
    assert outcome.count("nInserted" if not replace else "nUpserted") == written
    if replace:
        assert sorted(u["index"] for u in outcome.counts["upserted"]) == sorted(
            set(range(len(flags))) - poison
        )
    # The work is bounded: at most 2n - 1 commands, and each level halves the pieces.
    assert len(collection.commands) <= 2 * len(flags) - 1
    if poison:
        assert min(collection.commands) >= 1
        depth = math.ceil(math.log2(len(flags))) if len(flags) > 1 else 0
        assert len(collection.commands) <= 1 + 2 * len(poison) * max(depth, 1)


def test_one_poison_request_among_a_thousand_costs_a_few_commands() -> None:
    documents = [{"_id": n, "poison": n == 617} for n in range(1000)]
    collection = RefusingCollection(poisoned)
    outcome = bulk_write(collection, [InsertOne(d) for d in documents], "insert")
    assert [index for index, _ in outcome.refused] == [617]
    assert outcome.count("nInserted") == 999 and len(collection.stored) == 999
    # The whole command, then two halves per level down to the single request: 1 + 2 x 10.
    assert len(collection.commands) == 1 + 2 * math.ceil(math.log2(1000))


def test_per_document_refusals_inside_the_pieces_keep_their_own_index() -> None:
    documents = [{"_id": n, "poison": n == 3, "bad": n in (1, 6)} for n in range(8)]
    collection = RefusingCollection(poisoned, refuse=lambda d: d["bad"], code=16766)
    outcome = bulk_write(collection, [InsertOne(d) for d in documents], "insert")
    assert {index: error["code"] for index, error in outcome.refused} == {1: 16766, 3: 10334, 6: 16766}
    assert set(collection.stored) == {0, 2, 4, 5, 7}
    assert outcome.count("nInserted") == 5


@pytest.mark.parametrize(
    "failure",
    [
        {"errmsg": "not authorized on db to execute command", "code": 13, "codeName": "Unauthorized"},
        {
            "errmsg": "Namespace is a view, not a collection",
            "code": 166,
            "codeName": "CommandNotSupportedOnView",
        },
        {"errmsg": "Request rate is large", "code": 16500},
        {"errmsg": "operation was interrupted", "code": 11601, "codeName": "Interrupted"},
        {"errmsg": "Exceeded time limit", "code": 262, "codeName": "ExceededTimeLimit"},
    ],
)
def test_a_refusal_about_the_deployment_or_the_moment_is_never_narrowed(failure: dict[str, Any]) -> None:
    collection = RefusingCollection(lambda d: True, failure=failure)
    with pytest.raises(OperationFailure) as raised:
        bulk_write(collection, [InsertOne({"_id": n}) for n in range(10)], "insert")
    assert raised.value.code == failure["code"] and collection.commands == [10]


def test_a_server_timeout_is_never_narrowed() -> None:
    class TimingOut(RefusingCollection):
        def bulk_write(self, requests: list[Any], ordered: bool = True) -> Result:
            self.commands.append(len(requests))
            raise ExecutionTimeout("operation exceeded time limit", 50, {"code": 50})

    collection = TimingOut(poisoned)
    with pytest.raises(ExecutionTimeout):
        bulk_write(collection, [InsertOne({"_id": n}) for n in range(10)], "insert")
    assert collection.commands == [10]


def test_a_transient_error_in_a_piece_fails_the_batch() -> None:
    # The narrowing finds a piece the server refuses for a reason about the moment: nothing of
    # the batch may be committed, whatever the other pieces did.
    documents = [{"_id": n, "poison": n == 0, "bad": n == 9} for n in range(10)]
    collection = RefusingCollection(poisoned, refuse=lambda d: d["bad"], code=11601)
    with pytest.raises(WriteFailedError, match=r"code 11601 x1.*retry"):
        bulk_write(collection, [InsertOne(d) for d in documents], "insert")
    assert 11601 in TRANSIENT_ERRORS


@pytest.mark.parametrize("code", [16766, 16572, 61, 14, 99999])
def test_a_per_document_code_that_is_not_transient_refuses_only_its_document(code: int) -> None:
    documents = [{"_id": n, "poison": False, "bad": n == 2} for n in range(5)]
    collection = RefusingCollection(poisoned, refuse=lambda d: d["bad"], code=code)
    outcome = bulk_write(collection, [InsertOne(d) for d in documents], "insert")
    assert [(index, error["code"]) for index, error in outcome.refused] == [(2, code)]
    assert set(collection.stored) == {0, 1, 3, 4}


@pytest.mark.parametrize("code", sorted(TRANSIENT_ERRORS))
def test_every_transient_per_document_code_fails_the_batch(code: int) -> None:
    documents = [{"_id": n, "poison": False, "bad": n == 2} for n in range(5)]
    collection = RefusingCollection(poisoned, refuse=lambda d: d["bad"], code=code)
    with pytest.raises(WriteFailedError, match=rf"1 of 5 documents.*code {code} x1"):
        bulk_write(collection, [InsertOne(d) for d in documents], "insert")
