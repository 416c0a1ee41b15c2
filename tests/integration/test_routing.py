"""Routing records to collections by a field (``route_by``), end to end on the real broker and
Mongo-wire server: each record lands once in the collection its field names (the latest version
wins), the rest in the drain's own collection or the dead letters, and offsets are committed
only after every collection's write."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from kafka_mongo_etl.errors import WriteFailedError
from kafka_mongo_etl.job import DeadLetterPolicy
from kafka_mongo_etl.routing import RoutingSink
from kafka_mongo_etl.tasks import run_consume

pytestmark = pytest.mark.usefixtures("connections")


# Three versions of six keys, routed by "kind" to alpha or beta; one key without a kind; two
# whose kind names no collection.
RECORDS = [
    *[(n % 2, f"k{n}", {"kind": "alpha" if n < 3 else "beta", "v": v}) for v in range(3) for n in range(6)],
    (0, "plain", {"v": 0}),
    (1, "dollar", {"kind": "$x", "v": 0}),
    (1, "number", {"kind": 7, "v": 0}),
]


def contents(collection) -> dict[str, dict[str, Any]]:
    return {doc.pop("_id"): {k: v for k, v in doc.items() if k != "_kafka"} for doc in collection.find()}


def expect_routed(database) -> None:
    assert contents(database["alpha"]) == {f"k{n}": {"kind": "alpha", "v": 2} for n in range(3)}
    assert contents(database["beta"]) == {f"k{n}": {"kind": "beta", "v": 2} for n in range(3, 6)}
    assert contents(database["testnum"]) == {"plain": {"v": 0}}
    letters = {d["_id"]: d["code"] for d in database["testnum_dlq"].find()}
    assert sorted(letters.values()) == ["bad_route", "bad_route"]
    assert {database["testnum_dlq"].find_one({"_id": _id})["key"] for _id in letters} == {
        b"dollar",
        b"number",
    }


def test_records_land_once_in_the_collection_their_field_names(
    make_job, send_keyed, mongo_client, committed_offsets
) -> None:
    job = make_job(route_by="value.kind", dead_letter_policy=DeadLetterPolicy(max_count=2))
    send_keyed(job.topic, RECORDS)
    result = run_consume(job)
    assert (result["records"], result["dead_letters"]) == (len(RECORDS), 2)
    expect_routed(mongo_client[job.mongo_db])
    assert sum(committed_offsets(job.topic, job.consumer_group, 2).values()) == len(RECORDS)
    again = run_consume(replace(job, batch="test/run-2", run_id="run-2"))
    assert again["records"] == 0
    expect_routed(mongo_client[job.mongo_db])


def test_a_failure_between_two_collections_commits_nothing_and_the_retry_loads_once(
    make_job, send_keyed, mongo_client, committed_offsets, monkeypatch
) -> None:
    job = make_job(route_by="value.kind", dead_letter_policy=DeadLetterPolicy(max_count=2))
    send_keyed(job.topic, RECORDS)
    written: list[str] = []
    original = RoutingSink.sink

    def fails_on_beta(self, name):
        written.append(name)
        if name == "beta":
            raise WriteFailedError("injected: the server went away before beta's write")
        return original(self, name)

    monkeypatch.setattr(RoutingSink, "sink", fails_on_beta)
    with pytest.raises(WriteFailedError, match="injected"):
        run_consume(job)
    database = mongo_client[job.mongo_db]
    assert "alpha" in written and database["alpha"].count_documents({}) > 0
    assert database["beta"].count_documents({}) == 0
    # alpha was written, but the offsets of the batch that failed were not committed: nothing
    # at or past each partition's first beta record (an earlier batch may have been committed).
    first_beta = {}
    for partition in (0, 1):
        sent = [value for p, _key, value in RECORDS if p == partition]
        first_beta[partition] = next(n for n, value in enumerate(sent) if value.get("kind") == "beta")
    committed = committed_offsets(job.topic, job.consumer_group, 2)
    assert all(committed[p] <= first_beta[p] for p in (0, 1)), (committed, first_beta)

    monkeypatch.setattr(RoutingSink, "sink", original)
    retry = run_consume(replace(job, run_id="run-1-retry"))
    assert retry["records"] == len(RECORDS) - sum(max(offset, 0) for offset in committed.values())
    expect_routed(database)
    assert sum(committed_offsets(job.topic, job.consumer_group, 2).values()) == len(RECORDS)
