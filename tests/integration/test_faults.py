"""Faults between the ETL and its services.

Through Toxiproxy (a broker with a listener advertised as its proxy, the session's MongoDB-wire
server behind another): one fixed trial per fault kind — the randomized suite is ``make faults``
(faults/) — and a try that Airflow stops with SIGTERM while it is blocked on a silent MongoDB.
Without a proxy: a stalled drain fails after committing what it loaded, and the MongoDB client
gets its timeouts and write concern from the connection.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.work import Work
from faults.kinds import (
    FAULT_KINDS,
    KAFKA_CUT,
    KAFKA_RESET_PRODUCE,
    MONGO_BANDWIDTH,
    MONGO_BLACKHOLE,
    MONGO_LATENCY,
    MONGO_RESET,
    plan_for,
)
from faults.stack import FaultStack, fault_stack
from faults.trials import DAG_ID, run_fault_trial
from kafka_mongo_etl.drain import DrainSettings
from kafka_mongo_etl.errors import ConnectionProblem, DrainStalledError
from kafka_mongo_etl.ids import batch_id, record_key
from kafka_mongo_etl.mongo_client import EtlMongoHook
from kafka_mongo_etl.tasks import run_consume, run_produce

REPO = Path(__file__).resolve().parents[2]

# One seed per kind, chosen for a short fault; the consume faults drain 1,200 records (three
# writes) and start at the first bulk write.
FIXED_SEEDS = {
    MONGO_LATENCY: 9,
    MONGO_RESET: 4,
    MONGO_BLACKHOLE: 2,
    MONGO_BANDWIDTH: 5,
    KAFKA_CUT: 14,
    KAFKA_RESET_PRODUCE: 2,
}
CONSUME_FAULT_RECORDS = 1_200


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mongo_server) -> Iterator[FaultStack]:
    with fault_stack(tmp_path_factory.mktemp("faults"), mongo=mongo_server) as started:
        yield started


def use_connections(monkeypatch, connections: dict[str, dict]) -> None:
    for conn_id, conn in connections.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


@pytest.fixture
def through_proxies(monkeypatch, stack: FaultStack) -> FaultStack:
    use_connections(monkeypatch, stack.connections())
    stack.toxiproxy.reset()
    return stack


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_fault_mid_flight_loads_every_record_exactly_once(
    kind: str, through_proxies: FaultStack, topic: str, mongo_db: str
) -> None:
    seed = FIXED_SEEDS[kind]
    count = plan_for(kind, seed).count if kind == KAFKA_RESET_PRODUCE else CONSUME_FAULT_RECORDS
    result = run_fault_trial(kind, seed, through_proxies, topic=topic, mongo_db=mongo_db, count=count)

    details = json.dumps(result.as_dict()["tries"], indent=1)
    assert result.problems == [], details
    batch = batch_id(DAG_ID, f"trial-0-{seed}")
    verification = result.verification
    assert verification.ids == {record_key(batch, n) for n in range(count)}
    assert verification.documents == verification.distinct_ids == count
    assert verification.offsets_behind == 0
    # Each key's last version (2 or 3 per key, interleaved) is what MongoDB holds.
    assert verification.stale == 0 and result.versions in (2, 3)
    first = result.tries[0]
    for failing in result.failing_tries:
        assert failing.committed_not_written in (0, None)
        assert failing.names_connection, failing.error
    if kind == MONGO_LATENCY:
        # Every answer later than the ttl: the try cannot prove it holds the lease, so it stops.
        assert first.error_type == "LeaseLostError", details
    elif kind == MONGO_BLACKHOLE:
        assert first.error_type == "ConnectionProblem" and "operation timeout" in first.error, details
    elif kind == MONGO_BANDWIDTH:
        # Writes slower than the ttl: the heartbeat (on its own connection) keeps the lease.
        assert all(t.error_type != "LeaseLostError" for t in result.tries), details
    elif kind == KAFKA_RESET_PRODUCE:
        assert first.task == "produce" and first.error_type == "DeliveryError", details
        assert "the producer stopped at the first delivery error" in first.error
        assert first.acknowledged is not None and first.acknowledged < count
        assert first.on_topic is not None and first.on_topic >= first.acknowledged


def topic_state(stack: FaultStack, topic: str, group_id: str) -> dict[int, tuple[int, int, int]]:
    from chaos.trials import topic_offsets

    return topic_offsets(stack, topic, group_id)


def test_sigterm_stops_a_try_blocked_on_a_silent_mongodb(
    monkeypatch, stack: FaultStack, mongo_client, tmp_path: Path
) -> None:
    """The try runs as its own process, as a task does; MongoDB stops answering mid-drain (the
    operation timeout is two minutes); SIGTERM, as Airflow's supervisor sends it, ends the try in
    seconds, with nothing committed that was not written; the retry loads the rest."""
    connections = stack.connections()
    connections["mongo_default"]["extra"]["timeoutMS"] = 120_000
    use_connections(monkeypatch, connections)
    stack.toxiproxy.reset()
    work = Work(
        action="consume",
        topic=f"sigterm-{time.monotonic_ns()}",
        run_id="sigterm-run",
        count=1500,
        mongo_db=f"sigterm_{time.monotonic_ns()}",
        batch_size=100,
        lease_ttl=5.0,
        lease_wait=30.0,
    )
    run_produce(
        kafka_conn_id="kafka_default",
        topic=work.topic,
        partitions=3,
        batch=work.batch,
        start=0,
        count=work.count,
    )
    # Every MongoDB answer 0.3 s late: the drain of 15 batches takes seconds, so it is still
    # running when the test makes the server silent (unslowed, it can finish in 0.2 s).
    stack.mongo.add_toxic("latency", "downstream", latency=300)
    log = tmp_path / "try.log"
    with open(log, "wb") as output:
        child = subprocess.Popen(
            [sys.executable, "-m", "chaos.child", "none", "0", work.to_json()],
            cwd=REPO,
            stdout=output,
            stderr=output,
        )
    try:
        deadline = time.monotonic() + 60
        while not any(c > 0 for _, _, c in topic_state(stack, work.topic, work.group_id).values()):
            assert time.monotonic() < deadline and child.poll() is None, log.read_text()[-3000:]
            time.sleep(0.1)
        stack.mongo.add_toxic("timeout", "upstream", timeout=0)
        time.sleep(2)  # the drain's next MongoDB call is now waiting for an answer that will not come
        assert child.poll() is None
        sent = time.monotonic()
        os.kill(child.pid, signal.SIGTERM)
        returncode = child.wait(timeout=100)
        stopped_after = time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        stack.toxiproxy.reset()
    output = log.read_text()
    assert returncode != 0 and "StopRequested" in output, output[-3000:]
    assert stopped_after < 20, f"the try took {stopped_after:.0f}s to stop after SIGTERM"
    collection = mongo_client[work.mongo_db][work.mongo_collection]
    for partition, (_low, _high, committed) in topic_state(stack, work.topic, work.group_id).items():
        written = collection.count_documents(
            {"_kafka.partition": partition, "_kafka.offset": {"$lt": committed}}
        )
        assert written == max(committed, 0)

    run_consume(work.consume_job(drain=DrainSettings()))
    assert collection.count_documents({}) == work.count
    assert {d["_id"] for d in collection.find({}, {"_id": 1})} == work.expected_ids()
    mongo_client.drop_database(work.mongo_db)


def test_a_stalled_drain_fails_after_committing_what_it_loaded_and_the_retry_goes_on(
    through_proxies: FaultStack, make_job, mongo_client
) -> None:
    """The broker answers metadata requests but its records crawl (1 KB/s: a fetch of 200 records
    needs far longer than the 2 s stall timeout): the partition stays below its snapshot; the
    task fails naming the connection and the partition, after the audit; the retry, on a
    healthy network, loads the rest."""
    from kafka_mongo_etl.audit import AUDIT_COLLECTION

    stack = through_proxies
    job = make_job(drain=DrainSettings(batch_size=100, stall_timeout=2))

    def produce(start: int, count: int) -> None:
        run_produce(
            kafka_conn_id="kafka_default",
            topic=job.topic,
            partitions=1,
            batch=job.batch,
            start=start,
            count=count,
        )

    produce(0, 300)
    assert run_consume(job)["records"] == 300
    produce(300, 200)
    with stack.kafka.toxic("bandwidth", "downstream", rate=1):
        with pytest.raises(
            DrainStalledError, match=rf"'kafka_default' \({stack.kafka.listen}\).*p0 at offset 300 of 500"
        ):
            run_consume(job)
    assert [c for _, _, c in topic_state(stack, job.topic, job.consumer_group).values()] == [300]
    target = mongo_client[job.mongo_db]
    assert target.testnum.count_documents({}) == 300
    audit = target[AUDIT_COLLECTION].find_one({"_id": job.audit_id})
    assert (
        audit["state"] == "failed" and audit["stalled"] == {"0": 300} and "p0 at offset 300" in audit["error"]
    )

    result = run_consume(job)
    assert result["state"] == "success" and result["records"] == 200
    assert {d["_id"] for d in target.testnum.find({}, {"_id": 1})} == {
        record_key(job.batch, n) for n in range(500)
    }
    assert [c for _, _, c in topic_state(stack, job.topic, job.consumer_group).values()] == [500]


def test_the_mongodb_client_is_bounded_and_durable_by_default(monkeypatch, mongo_server) -> None:
    def connect(extra: dict) -> tuple:
        conn = {"conn_type": "mongo", "host": mongo_server.host, "port": mongo_server.port, "extra": extra}
        monkeypatch.setenv("AIRFLOW_CONN_MONGO_DEFAULT", json.dumps(conn))
        with EtlMongoHook("mongo_default") as hook:
            client = hook.get_conn()
            return client.write_concern.document, client.options.timeout

    assert connect({}) == ({"w": "majority", "j": True}, 20.0)
    assert connect({"w": 1, "journal": False, "timeoutMS": 2500}) == ({"w": 1, "j": False}, 2.5)
    assert connect({"W": "majority", "TIMEOUTMS": 7000}) == ({"w": "majority", "j": True}, 7.0)
    with pytest.raises(ConnectionProblem, match=r"'mongo_default' .* sets w=0"):
        connect({"w": 0})


def test_an_unreachable_mongodb_still_fails_in_seconds(monkeypatch) -> None:
    from devstack.process import free_port

    conn = {
        "conn_type": "mongo",
        "host": "127.0.0.1",
        "port": free_port(),
        "extra": {"serverSelectionTimeoutMS": 1500},
    }
    monkeypatch.setenv("AIRFLOW_CONN_MONGO_DEFAULT", json.dumps(conn))
    began = time.monotonic()
    with pytest.raises(
        ConnectionProblem, match=r"'mongo_default' \(127\.0\.0\.1:\d+\): the server did not answer"
    ):
        EtlMongoHook("mongo_default").get_conn()
    # Bounded by the server-selection timeout, not by the 20 s operation timeout.
    assert time.monotonic() - began < 15
