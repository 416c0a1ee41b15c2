"""Crash injection, a fixed set: the task process is SIGKILLed at each kill point, its retry (the
same DAG run) finishes, and the target holds exactly the batch's ``_id`` set, each key with the
last of its 2 or 3 versions (``trials.versions``).

The randomized version with many trials per point is ``make chaos`` (chaos/harness.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pymongo import MongoClient

from chaos.points import (
    ACKNOWLEDGED_PREFIX,
    CONSUME_AFTER_FETCH,
    CONSUME_AFTER_WRITE_BEFORE_COMMIT,
    CONSUME_MID_BULK_WRITE,
    PRODUCE_MID_BATCH,
)
from chaos.trials import SIGKILLED, TrialResult, run_overlapping, run_trial
from devstack.kafka import KafkaBroker
from devstack.mongo import MongoWireServer
from kafka_mongo_etl.ids import record_key
from trials.checks import Stack

COUNT = 600  # three partitions, drain batches of 200: at least three writes and commits


@pytest.fixture
def stack(connections, kafka_broker: KafkaBroker, mongo_server: MongoWireServer) -> Stack:
    """The session's services; ``connections`` put them in the environment the children inherit."""
    return Stack(bootstrap_servers=kafka_broker.bootstrap_servers, mongo_uri=mongo_server.uri)


def batch_ids(batch: str) -> set[str]:
    return {record_key(batch, n) for n in range(COUNT)}


def assert_killed_then_recovered(result: TrialResult) -> dict:
    """The first child died by SIGKILL, the retry exited 0, and no record was lost, doubled or stale."""
    assert result.error is None, result.error
    killed, retry = result.runs[0], result.runs[1]
    assert (killed.role, retry.role) == ("killed", "retry")
    assert killed.returncode == SIGKILLED, f"not SIGKILLed (exit {killed.returncode}); see {killed.log}"
    assert killed.note is not None and killed.note["point"] == result.scenario
    assert retry.returncode == 0, f"the retry failed; see {retry.log}"
    verification = result.verification
    (batch,) = result.batches
    assert verification.ids == batch_ids(batch)
    assert verification.documents == verification.distinct_ids == COUNT
    assert (verification.lost, verification.duplicate, verification.unexpected) == (0, 0, 0)
    assert verification.mismatched == 0 and verification.dead_letters == 0
    assert verification.stale == 0 and result.versions in (2, 3)
    assert verification.offsets_behind == 0  # the retry drained to the watermark and committed
    return killed.note


def final_versions(stack: Stack, result: TrialResult) -> dict[str, int | None]:
    """``{_id: version}`` of the trial's target (None: the DAG produce task's record, the last)."""
    client = MongoClient(stack.mongo_uri)
    try:
        collection = client[result.mongo_db]["records"]
        return {doc["_id"]: doc.get("version") for doc in collection.find({}, {"version": 1})}
    finally:
        client.close()


def test_killed_mid_produce_the_retry_resends_the_batch(stack, topic, mongo_db, tmp_path: Path) -> None:
    result = run_trial(PRODUCE_MID_BATCH, 5, stack, tmp_path, topic=topic, mongo_db=mongo_db, count=COUNT)

    note = assert_killed_then_recovered(result)
    assert (note["at"], note["handed"], note["settled"]) == ("produce", 262, 183)
    # Killed with the first records on the broker, more in the local queue, the rest not handed
    # (after the older versions of every key, produced before the task).
    older = COUNT * (result.versions - 1)
    assert older + 183 <= result.after_kill["records_on_topic"] <= older + 262
    assert [run.role for run in result.runs] == ["killed", "retry", "consume"]
    # The produce task's record (no version) is each key's last.
    assert set(final_versions(stack, result).values()) == {None}


def test_killed_after_fetch_before_the_write(stack, topic, mongo_db, tmp_path: Path) -> None:
    result = run_trial(CONSUME_AFTER_FETCH, 7, stack, tmp_path, topic=topic, mongo_db=mongo_db, count=COUNT)

    note = assert_killed_then_recovered(result)
    assert (note["at"], note["call"]) == ("MongoSink.write", 3)
    # The first two writes landed and the first was committed; the second's commit runs while
    # the third write starts, so it may or may not have happened. The fetched third batch never
    # reached MongoDB; the retry reads it (and the second, if uncommitted) again.
    assert result.after_kill["documents"] >= result.after_kill["keys_committed"] > 0
    assert set(final_versions(stack, result).values()) == {result.versions}


def test_killed_in_the_middle_of_a_bulk_write(stack, topic, mongo_db, tmp_path: Path) -> None:
    result = run_trial(
        CONSUME_MID_BULK_WRITE, 7, stack, tmp_path, topic=topic, mongo_db=mongo_db, count=COUNT
    )

    note = assert_killed_then_recovered(result)
    assert (note["at"], note["mode"], note["call"]) == ("bulk_write", ACKNOWLEDGED_PREFIX, 3)
    assert 0 < note["acknowledged"] < note["requests"]
    # Killed inside the third bulk write to the target: with several versions per key a batch
    # takes one or two (inserts of new ids, then replaces of ids already there), so MongoDB holds
    # every committed key and possibly more, of batches whose offsets are not committed.
    after = result.after_kill
    assert after["documents"] >= after["keys_committed"] > 0
    assert set(final_versions(stack, result).values()) == {result.versions}


def test_killed_after_the_write_before_the_commit(stack, topic, mongo_db, tmp_path: Path) -> None:
    result = run_trial(
        CONSUME_AFTER_WRITE_BEFORE_COMMIT, 7, stack, tmp_path, topic=topic, mongo_db=mongo_db, count=COUNT
    )

    note = assert_killed_then_recovered(result)
    assert (note["at"], note["call"]) == ("commit", 3)
    # The third batch is written but its offsets are not committed: the retry reads it again.
    assert result.after_kill["documents"] > result.after_kill["keys_committed"] > 0
    assert set(final_versions(stack, result).values()) == {result.versions}


def test_overlapping_runs_load_one_copy_of_every_record(stack, topic, mongo_db, tmp_path: Path) -> None:
    # Seed 1: both runs start at the same moment (no stagger).
    result = run_overlapping(1, stack, tmp_path, topic=topic, mongo_db=mongo_db, count=COUNT)

    assert result.error is None, result.error
    assert result.plan == {"stagger": 0.0}
    assert [run.returncode for run in result.runs] == [0, 0]
    verification = result.verification
    first, second = result.batches
    assert first != second
    assert verification.ids == batch_ids(first) | batch_ids(second)
    assert verification.documents == verification.distinct_ids == 2 * COUNT
    assert verification.offsets_behind == 0
    assert verification.stale == 0 and set(final_versions(stack, result).values()) == {None}


def test_the_stale_check_counts_documents_older_than_their_keys_last_version(mongo_client, mongo_db) -> None:
    from trials.versions import stale_query

    collection = mongo_client[mongo_db]["records"]
    collection.insert_many(
        [
            {"_id": "b/0", "version": 3},  # the last version
            {"_id": "b/1", "version": 2},  # stale
            {"_id": "b/2", "version": 1},  # stale
            {"_id": "b/3"},  # the DAG produce task's record, after every older version
        ]
    )

    assert collection.count_documents(stale_query(3)) == 2
