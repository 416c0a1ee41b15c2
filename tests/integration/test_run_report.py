"""``make run``'s report counts the run's own batch in MongoDB and names the drain that loaded
it (issue 14, item 5): never "loaded 0" when the batch is there.

The first ``make up`` on a fresh machine is the case it is for: unpausing the DAG starts a
scheduled run, whose drain takes the manual run's batch too, so the manual run's own drain finds
nothing left; the batch is there all the same. The first tests reproduce it with the real produce
and consume code on the session's broker and server; the last ones check the report's wording
for every way a batch can be split between drains (no services).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack.airflow import AirflowHome, local_connections
from devstack.run import batch_landing, report

REPO = Path(__file__).resolve().parents[2]
MANUAL, SCHEDULED = "manual__2026-12-01T10:00:00+00:00", "scheduled__2026-12-01T09:00:00+00:00"


def _batch(run_id: str) -> str:
    return f"kafka_to_mongo/{run_id}"


@pytest.fixture
def produce(connections, topic):
    from kafka_mongo_etl.tasks import run_produce

    def send(run_id: str, count: int, start: int = 0) -> dict:
        return run_produce(
            kafka_conn_id="kafka_default",
            topic=topic,
            partitions=3,
            batch=_batch(run_id),
            start=start,
            count=count,
        )

    return send


@pytest.fixture
def drain(make_job):
    from kafka_mongo_etl.tasks import run_consume

    return lambda run_id: run_consume(make_job(batch=_batch(run_id), run_id=run_id))


def _summary(run_id: str, produced: dict, consumed: dict, landing: dict) -> dict:
    return {
        "run_id": run_id,
        "state": "success",
        "url": "http://ui",
        "produce": produced,
        "consume": consumed,
        "landing": landing,
    }


def test_a_batch_drained_by_the_scheduled_run_is_reported_as_there_and_loaded_by_it(
    produce, drain, mongo_client, mongo_db, topic
) -> None:
    began = dt.datetime.now(dt.UTC)
    produce(SCHEDULED, 40)
    produced = produce(MANUAL, 25)
    scheduled = drain(SCHEDULED)  # takes both batches: everything up to its snapshot
    manual = drain(MANUAL)  # nothing left

    landing = batch_landing(mongo_client[mongo_db], "testnum", produced["batch"], topic, began)

    assert (scheduled["loaded"], manual["records"], manual["loaded"]) == (65, 0, 0)
    assert landing["in_mongo"] == 25
    assert [(e["run_id"], e["records_of_batch"], e["loaded"]) for e in landing["loaded_by"]] == [
        (SCHEDULED, 25, 65)
    ]
    text = report(_summary(MANUAL, produced, manual, landing))
    assert f"in {mongo_db}.testnum now: 25 of its 25 records (counted by batch {_batch(MANUAL)})" in text
    assert f"25 of them loaded by the drain of run {SCHEDULED} (65 documents, 65 records drained in" in text
    assert "this run's own drain came later and found nothing left to drain" in text
    assert "loaded 0" not in text and "0 documents" not in text


def test_a_batch_split_between_two_drains_names_both_with_their_share(
    produce, drain, mongo_client, mongo_db, topic
) -> None:
    began = dt.datetime.now(dt.UTC)
    produce(MANUAL, 30)
    drain(SCHEDULED)  # its snapshot came while the manual run was still producing
    produced = produce(MANUAL, 20, start=30)
    manual = drain(MANUAL)

    landing = batch_landing(mongo_client[mongo_db], "testnum", produced["batch"], topic, began)

    assert landing["in_mongo"] == 50
    assert [(e["run_id"], e["records_of_batch"]) for e in landing["loaded_by"]] == [
        (SCHEDULED, 30),
        (MANUAL, 20),
    ]
    text = report(_summary(MANUAL, {**produced, "count": 50, "first": 0}, manual, landing))
    assert "now: 50 of its 50 records" in text
    assert f"30 of them loaded by the drain of run {SCHEDULED}" in text
    assert "20 of them loaded by this run's drain (20 documents, 20 records drained in" in text
    assert "(a drain takes every record" not in text  # its drain took nothing but its own records


def test_a_run_drained_per_partition_counts_all_its_drains_as_its_own(
    produce, make_job, mongo_client, mongo_db, topic
) -> None:
    from kafka_mongo_etl.tasks import run_consume

    began = dt.datetime.now(dt.UTC)
    produced = produce(MANUAL, 60)
    # parallelism "per partition": one drain (and one audit document) per partition.
    drains = [run_consume(make_job(batch=_batch(MANUAL), run_id=MANUAL, partitions=(p,))) for p in range(3)]
    consumed = {**drains[0], "records": 60, "loaded": 60, "seconds": max(d["seconds"] for d in drains)}

    landing = batch_landing(mongo_client[mongo_db], "testnum", produced["batch"], topic, began)

    assert [(e["run_id"], e["records_of_batch"], e["loaded"]) for e in landing["loaded_by"]] == [
        (MANUAL, 60, 60)
    ]
    text = report(_summary(MANUAL, produced, consumed, landing))
    assert "60 of them loaded by this run's drain (60 documents, 60 records drained in" in text
    assert "(a drain takes every record" not in text


def test_drains_that_ended_before_the_run_began_are_not_named(
    produce, drain, mongo_client, mongo_db, topic
) -> None:
    produced = produce(MANUAL, 10)
    drain(MANUAL)

    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    landing = batch_landing(mongo_client[mongo_db], "testnum", produced["batch"], topic, later)

    assert (landing["in_mongo"], landing["loaded_by"]) == (10, [])


def test_the_client_comes_from_the_stacks_own_connections_file(tmp_path: Path, mongo_server) -> None:
    """In a fresh interpreter, as ``python -m devstack run`` builds it: the home's connections.json
    wins over an AIRFLOW_CONN_MONGO_DEFAULT left in the caller's shell."""
    home = AirflowHome(tmp_path / "airflow", api_port=8080)
    home.write(local_connections("127.0.0.1:1", mongo_server.host, mongo_server.port))
    code = (
        "import sys; from pathlib import Path; from devstack.airflow import AirflowHome; "
        "from devstack.run import stack_mongo_client; "
        "client = stack_mongo_client(AirflowHome(Path(sys.argv[1]))); "
        "print(client.address[1], client.admin.command('ping')['ok'])"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "AIRFLOW_CONN_MONGO_DEFAULT": json.dumps({"conn_type": "mongo", "port": 1}),
    }
    # The timeout only turns a hang into a failure; it is not a timing claim.
    result = subprocess.run(
        [sys.executable, "-c", code, str(home.path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    # The hook logs its settings first; the script's own line is the last.
    assert result.stdout.splitlines()[-1].split() == [str(mongo_server.port), "1.0"]


# The wording, from XComs and landings written by hand.

RUN = MANUAL
PRODUCED = {
    "topic": "testnum",
    "batch": f"kafka_to_mongo/{RUN}",
    "count": 500,
    "first": 0,
    "last": 499,
    "records_per_second": 460.0,
}


def _consumed(records: int) -> dict:
    return {"target": "testnum.testnum", "records": records, "loaded": records, "seconds": 1.25}


def _loaded_by(run_id: str, of_batch: int, records: int) -> dict:
    return {
        "run_id": run_id,
        "records_of_batch": of_batch,
        "loaded": records,
        "records": records,
        "seconds": 2.0,
    }


def _report(consumed: dict | None, loaded_by: list[dict] | None, in_mongo: int = 500, **extra) -> str:
    summary = {
        "run_id": RUN,
        "state": "success",
        "url": "http://ui/run",
        "produce": PRODUCED,
        "consume": consumed,
        **extra,
    }
    if loaded_by is not None:
        summary["landing"] = {
            "target": "testnum.testnum",
            "batch": PRODUCED["batch"],
            "in_mongo": in_mongo,
            "loaded_by": loaded_by,
        }
    return report(summary)


def test_the_first_make_up_reports_the_batch_loaded_by_the_scheduled_run() -> None:
    text = _report(_consumed(0), [_loaded_by("scheduled__2026-12-01T09:00:00+00:00", 500, 1000)])

    assert text.splitlines() == [
        f"Run {RUN}: success",
        "  produced 500 records (0..499) to topic testnum at 460 records/s",
        f"  in testnum.testnum now: 500 of its 500 records (counted by batch kafka_to_mongo/{RUN})",
        "  500 of them loaded by the drain of run scheduled__2026-12-01T09:00:00+00:00 "
        "(1000 documents, 1000 records drained in 2.0s)",
        "  this run's own drain came later and found nothing left to drain",
        "  (a drain takes every record on the topic up to its snapshot: other runs' batches, such as the "
        "scheduled run's that unpausing started, land in the same drain)",
        "  see it in the UI: http://ui/run",
    ]


def test_a_run_that_loaded_its_own_batch_alone_says_so_without_the_note() -> None:
    text = _report(_consumed(500), [_loaded_by(RUN, 500, 500)])

    assert "  500 of them loaded by this run's drain (500 documents, 500 records drained in 1.2s)" in text
    assert "other runs' batches" not in text


def test_a_drain_that_also_took_other_batches_is_explained() -> None:
    text = _report(_consumed(1000), [_loaded_by(RUN, 500, 1000)])

    assert "  500 of them loaded by this run's drain (1000 documents, 1000 records drained in 1.2s)" in text
    assert "other runs' batches" in text


def test_a_drain_that_loaded_only_other_records_is_not_taken_for_the_batchs() -> None:
    text = _report(_consumed(300), [_loaded_by("scheduled__x", 500, 800)])

    assert (
        "  this run's own drain loaded other records only (300 documents, 300 records drained in 1.2s)"
        in text
    )


def test_without_a_count_from_mongodb_the_drain_is_reported_with_the_reason() -> None:
    text = _report(_consumed(500), None, landing_error="ServerSelectionTimeoutError: no server")

    assert "  this run's drain: 500 documents, 500 records drained in 1.2s into testnum.testnum" in text
    assert "  could not count its records in MongoDB: ServerSelectionTimeoutError: no server" in text


def test_a_failed_consume_still_reports_what_was_produced() -> None:
    text = _report(None, None)

    assert text.splitlines()[1:] == [
        "  produced 500 records (0..499) to topic testnum at 460 records/s",
        "  see it in the UI: http://ui/run",
    ]


@given(
    shares=st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=4),
    own_share=st.integers(min_value=0, max_value=500),
    extra=st.integers(min_value=0, max_value=2000),
)
def test_every_drain_that_loaded_part_of_the_batch_is_named_with_its_share(
    shares: list[int], own_share: int, extra: int
) -> None:
    others = [_loaded_by(f"scheduled__{i}", share, share + extra) for i, share in enumerate(shares)]
    own = [_loaded_by(RUN, own_share, own_share + extra)] if own_share else []
    in_mongo = sum(shares) + own_share
    text = _report(_consumed(own_share + extra), others + own, in_mongo=in_mongo)

    assert f"now: {in_mongo} of its 500 records" in text
    for i, share in enumerate(shares):
        assert f"  {share} of them loaded by the drain of run scheduled__{i} " in text
    assert (f"  {own_share} of them loaded by this run's drain" in text) == bool(own_share)
    assert "loaded 0" not in text and re.search(r"(?<!\d)0 (of them|documents)", text) is None
    assert ("other runs' batches" in text) == (extra > 0 or not own_share)
