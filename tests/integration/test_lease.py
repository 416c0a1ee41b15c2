"""The fenced drain lease against the real MongoDB-wire server (and, for whole drains, the broker).

A write slower than the ttl keeps the lease; a lost lease stops the drain before its next
commit; a zombie try and its retry never both commit; a worker clock far off can neither steal
a live lease nor keep a dead one; release by anyone but the owner deletes nothing.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kafka_mongo_etl.clients import EtlConsumerHook
from kafka_mongo_etl.drain import STOP_WAIT, DrainSettings, drain_to_watermark
from kafka_mongo_etl.errors import DrainBusyError, LeaseLostError, StopRequested
from kafka_mongo_etl.ids import id_function, record_key
from kafka_mongo_etl.lease import LEASE_COLLECTION, DrainLease, lease_owner, partition_leases
from kafka_mongo_etl.mongo_sink import MongoSink
from kafka_mongo_etl.records import json_document
from kafka_mongo_etl.tasks import run_consume, run_produce
from trials.versions import produce_versions, stale_query
from trials.work import Work

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def leases(mongo_client, mongo_db):
    return mongo_client[mongo_db][LEASE_COLLECTION]


def server_now(mongo_client) -> dt.datetime:
    return mongo_client.admin.command("hello")["localTime"]


def produce(topic: str, batch: str, count: int) -> None:
    run_produce(kafka_conn_id="kafka_default", topic=topic, partitions=3, batch=batch, start=0, count=count)


def wait_for(what: str, check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f}s"
        time.sleep(0.05)


def test_a_write_slower_than_the_ttl_keeps_the_lease(leases) -> None:
    lease = DrainLease(leases, "drain:t:g", owner=lease_owner("run-a", 1), ttl=1.5)
    rival = DrainLease(leases, "drain:t:g", owner=lease_owner("run-b", 1), ttl=1.5)
    with lease.held(wait=0):
        # One "write" three times as long as the ttl; nothing but the heartbeat renews meanwhile.
        for _ in range(9):
            time.sleep(0.5)
            with pytest.raises(DrainBusyError, match="run-a/try-1/"):
                rival.acquire(wait=0)
        lease.renew()  # the fencing check before the commit passes
        assert lease.lost is None
    assert leases.count_documents({}) == 0  # released on the way out
    rival.acquire(wait=0)


def test_a_drain_whose_writes_outlast_the_ttl_keeps_its_lease_and_commits_them(
    monkeypatch, connections, make_job, mongo_client, committed_offsets
) -> None:
    job = make_job(lease_ttl=1.5, lease_wait=0)
    produce(job.topic, job.batch, 400)
    rival = DrainLease(
        mongo_client[job.mongo_db][LEASE_COLLECTION],
        # A per-partition drain of the last partition: the whole-topic drain holds its lease too.
        partition_leases(job.topic, job.consumer_group, [2]),
        owner=lease_owner("another-run", 1),
        ttl=1.5,
    )
    refused = []

    class SlowerThanTheTtl(MongoSink):
        def write(self, documents):
            time.sleep(2.5)  # a degraded server: each write takes longer than the lease's ttl
            with pytest.raises(DrainBusyError):
                rival.acquire(wait=0)
            refused.append(len(documents))
            return super().write(documents)

    monkeypatch.setattr("kafka_mongo_etl.tasks.MongoSink", SlowerThanTheTtl)
    result = run_consume(replace(job, drain=replace(job.drain, batch_size=200)))
    assert result["records"] == 400 and sum(refused) == 400 and len(refused) >= 2
    assert sum(committed_offsets(job.topic, job.consumer_group, partitions=3).values()) == 400
    ids = {d["_id"] for d in mongo_client[job.mongo_db].testnum.find({}, {"_id": 1})}
    assert ids == {record_key(job.batch, n) for n in range(400)}


def test_a_lease_taken_over_stops_the_drain_before_its_next_commit(
    monkeypatch, connections, make_job, mongo_client, committed_offsets
) -> None:
    job = make_job(lease_ttl=30)
    produce(job.topic, job.batch, 300)
    leases = mongo_client[job.mongo_db][LEASE_COLLECTION]

    class TakenOverDuringTheSecondWrite(MongoSink):
        sizes: list[int] = []

        def write(self, documents):
            type(self).sizes.append(len(documents))
            if len(type(self).sizes) == 2:
                # What a drain that found the lease expired does: take it under its own name.
                leases.update_one({}, {"$set": {"owner": "the-retry/try-2/abc"}})
            return super().write(documents)

    monkeypatch.setattr("kafka_mongo_etl.tasks.MongoSink", TakenOverDuringTheSecondWrite)
    with pytest.raises(LeaseLostError, match=r"the-retry/try-2/abc holds it") as err:
        run_consume(replace(job, drain=replace(job.drain, batch_size=100)))
    assert "'mongo_default'" in str(err.value)
    # Nothing is committed after the takeover. The second write starts before the first batch's
    # commit, so that commit ran either before the takeover (the first batch is committed) or
    # after it (it found the lease lost: nothing is). The second batch was written and not
    # committed, and so was the third if its write started (it starts before the second's commit
    # finds the lease lost). A batch can hold fewer than batch_size records (end-of-partition
    # events count against consume()'s limit, and a busy broker returns what it has), so the
    # counts are the batches' own.
    first, second, *started = TakenOverDuringTheSecondWrite.sizes
    assert 0 < first <= 100 and 0 < second <= 100 and len(started) <= 1
    committed = committed_offsets(job.topic, job.consumer_group, partitions=3)
    assert sum(max(o, 0) for o in committed.values()) in (0, first)
    assert mongo_client[job.mongo_db].testnum.count_documents({}) == sum(TakenOverDuringTheSecondWrite.sizes)
    # Not released: the lease is the new owner's.
    assert leases.find_one()["owner"] == "the-retry/try-2/abc"


def test_the_heartbeat_finds_a_lost_lease_and_the_next_renewal_raises_without_asking(leases) -> None:
    lease = DrainLease(leases, "drain:t:g", owner=lease_owner("run-a", 1), ttl=1.5)
    lease.acquire(wait=0)
    with lease.heartbeat():
        leases.update_one({"_id": "drain:t:g"}, {"$set": {"owner": "run-b/try-1/xyz"}})
        wait_for("the heartbeat noticing", lambda: lease.lost is not None, timeout=10)
        leases.update_one({"_id": "drain:t:g"}, {"$set": {"owner": lease.owner}})  # even if it came back
        with pytest.raises(LeaseLostError, match="run-b/try-1/xyz holds it"):
            lease.renew()


def test_release_by_a_non_owner_deletes_nothing(leases) -> None:
    holder = DrainLease(leases, "drain:t:g", owner=lease_owner("run-a", 2), ttl=1.0)
    holder.acquire(wait=0)
    DrainLease(leases, "drain:t:g", owner=lease_owner("run-a", 1), ttl=1.0).release()  # an older try
    assert leases.find_one({"_id": "drain:t:g"})["owner"] == holder.owner

    # The holder's lease expires, a retry takes it; the holder's late release leaves it alone.
    wait_for("expiry", lambda: not _live(leases, "drain:t:g"), timeout=10)
    retry = DrainLease(leases, "drain:t:g", owner=lease_owner("run-a", 3), ttl=60)
    retry.acquire(wait=0)
    holder.release()
    assert leases.find_one({"_id": "drain:t:g"})["owner"] == retry.owner
    retry.release()
    assert leases.count_documents({}) == 0


def _live(leases, name: str) -> bool:
    found = leases.find_one(
        {"_id": name, "$expr": {"$gt": [{"$toLong": "$expires_at"}, {"$toLong": "$$NOW"}]}}
    )
    return found is not None


class _ShiftedDatetime(dt.datetime):
    shift = dt.timedelta(0)

    @classmethod
    def now(cls, tz=None):
        return super().now(tz) + cls.shift

    @classmethod
    def utcnow(cls):
        return super().utcnow() + cls.shift


def _set_worker_clock(monkeypatch, shift: dt.timedelta) -> None:
    """This process's wall clock (time.time, datetime.now) off by ``shift``; monotonic time unchanged."""
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + shift.total_seconds())
    monkeypatch.setattr(_ShiftedDatetime, "shift", shift)
    monkeypatch.setattr(dt, "datetime", _ShiftedDatetime)


def test_a_worker_clock_far_ahead_cannot_steal_a_live_lease(monkeypatch, mongo_client, leases) -> None:
    holder = DrainLease(leases, "drain:t:g", owner=lease_owner("run-a", 1), ttl=30)
    holder.acquire(wait=0)

    _set_worker_clock(monkeypatch, dt.timedelta(days=3650))
    assert dt.datetime.now(dt.UTC).year >= server_now(mongo_client).year + 9
    with pytest.raises(DrainBusyError, match="run-a/try-1/"):
        DrainLease(leases, "drain:t:g", owner=lease_owner("run-b", 1), ttl=30).acquire(wait=0)
    # Renewing from the fast clock does not push the expiry ten years out either.
    holder.renew()
    expires_at = leases.find_one({"_id": "drain:t:g"})["expires_at"]
    assert dt.timedelta(seconds=25) < expires_at - server_now(mongo_client) <= dt.timedelta(seconds=31)


def test_a_worker_clock_far_behind_cannot_keep_an_expired_lease(monkeypatch, leases) -> None:
    holder = DrainLease(leases, "drain:t:g", owner=lease_owner("run-a", 1), ttl=1.0)
    holder.acquire(wait=0)
    wait_for("expiry", lambda: not _live(leases, "drain:t:g"), timeout=10)

    _set_worker_clock(monkeypatch, -dt.timedelta(days=3650))
    with pytest.raises(LeaseLostError, match="it expired"):
        holder.renew()
    DrainLease(leases, "drain:t:g", owner=lease_owner("run-b", 1), ttl=30).acquire(wait=0)


# A try (chaos.child, no kill point) that stops itself with SIGSTOP inside its third write: frozen
# mid-drain, after two commits and not inside one (a freeze between the fencing check and the
# commit call is the window README → Guarantees admits; a SIGSTOP from outside could land in it).
FROZEN_IN_THIRD_WRITE = """
import os, signal, sys
from chaos.child import main  # imports Airflow first, which puts plugins/ on sys.path
from kafka_mongo_etl.mongo_sink import MongoSink

original, writes = MongoSink.write, 0

def write(self, documents):
    global writes
    writes += 1
    if writes == 3:
        os.kill(os.getpid(), signal.SIGSTOP)
    return original(self, documents)

MongoSink.write = write
sys.exit(main(["none", "0", sys.argv[1]]))
"""


def process_state(pid: int) -> str:
    """The state letter of ``/proc/<pid>/stat`` (``T``: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_zombie_try_and_its_retry_never_both_commit(
    connections, mongo_client, committed_offsets, tmp_path
) -> None:
    """Try 1 runs in its own process and is frozen (SIGSTOP: a paused VM, a worker cut off from
    Airflow) mid-drain; its retry takes the expired lease and loads everything; then try 1 wakes
    up. It must fail with LeaseLostError and commit nothing: a commit of its would move the
    group's offsets back from the high watermarks to where it was frozen. Every key has three
    versions, interleaved: the write the zombie sends when it wakes holds older versions than
    its retry stored, and the fence must keep the newer content (issue 19)."""
    work = Work(
        action="consume",
        topic=f"zombie-{os.getpid()}-{time.monotonic_ns()}",
        run_id="zombie-run",
        count=700,
        mongo_db=f"zombie_{time.monotonic_ns()}",
        batch_size=100,
        lease_ttl=2.0,
        lease_wait=30.0,
    )
    records = produce_versions(
        kafka_conn_id="kafka_default",
        topic=work.topic,
        partitions=3,
        batch=work.batch,
        count=work.count,
        versions=(1, 2, 3),
        seed=7,
    )
    log = tmp_path / "zombie.log"
    with open(log, "wb") as output:
        zombie = subprocess.Popen(
            [sys.executable, "-c", FROZEN_IN_THIRD_WRITE, work.to_json()],
            cwd=REPO,
            stdout=output,
            stderr=output,
        )
    try:
        wait_for(
            "the zombie frozen in its third write",
            lambda: zombie.poll() is not None or process_state(zombie.pid) == "T",
        )
        assert zombie.poll() is None, log.read_text()[-3000:]
        frozen_at = committed_offsets(work.topic, work.group_id, 3)
        assert sum(frozen_at.values()) < records

        # Waits for the frozen try's lease to expire, then drains the rest.
        run_consume(work.consume_job(drain=DrainSettings(batch_size=500)))
        done = committed_offsets(work.topic, work.group_id, 3)
        assert sum(done.values()) == records

        os.kill(zombie.pid, signal.SIGCONT)
        assert zombie.wait(timeout=60) != 0
    finally:
        if zombie.poll() is None:
            os.kill(zombie.pid, signal.SIGCONT)
            zombie.kill()
            zombie.wait()
    assert "LeaseLostError" in log.read_text(), log.read_text()[-3000:]
    assert committed_offsets(work.topic, work.group_id, 3) == done
    collection = mongo_client[work.mongo_db][work.mongo_collection]
    assert collection.count_documents({}) == work.count
    assert {d["_id"] for d in collection.find({}, {"_id": 1})} == work.expected_ids()
    # The final content: every key at its last version, written after the zombie's late write.
    assert collection.count_documents(stale_query(3)) == 0
    assert {d["version"] for d in collection.find({}, {"version": 1})} == {3}
    mongo_client.drop_database(work.mongo_db)


def test_heartbeat_threads_end_with_the_drain(connections, make_job) -> None:
    job = make_job(lease_ttl=1.5)
    produce(job.topic, job.batch, 50)
    run_consume(job)
    assert not [t for t in threading.enumerate() if t.name.startswith("lease-heartbeat")]


@pytest.mark.parametrize(
    "write_seconds", [0.5, STOP_WAIT + 3], ids=["write ends in time", "write still running"]
)
def test_a_stop_during_a_write_commits_nothing_more_and_a_running_write_keeps_the_lease(
    connections, make_job, leases, mongo_client, committed_offsets, write_seconds
) -> None:
    """A stop (SIGTERM's StopRequested) while the next batch is built and a write is in flight:
    the drain waits for that write up to STOP_WAIT, commits nothing after the stop, and leaves
    the lease to expire when the write is still running, so no other drain starts under it."""
    job = make_job()
    run_produce(
        kafka_conn_id="kafka_default", topic=job.topic, partitions=1, batch=job.batch, start=0, count=300
    )
    collection = mongo_client[job.mongo_db]["testnum"]
    build = json_document(id_function("key"))
    second_write = threading.Event()

    def to_document(message):
        if message.offset() == 250:  # batch 3, read while batch 2 is written
            # Once that write has started: a stop cancels a write that has not started yet.
            assert second_write.wait(60)
            raise StopRequested("SIGTERM")
        return build(message)

    class SlowSecondWrite(MongoSink):
        writes = 0

        def write(self, documents):
            self.writes += 1
            if self.writes == 2:
                second_write.set()
                time.sleep(write_seconds)
            return super().write(documents)

    lease = DrainLease(leases, f"drain:{job.topic}", owner=lease_owner("run-stop", 1), ttl=30)
    consumer = EtlConsumerHook(job.topic, job.consumer_group).get_conn
    began = time.monotonic()
    with pytest.raises(StopRequested), lease.held(wait=0):
        try:
            drain_to_watermark(
                consumer,
                job.topic,
                job.consumer_group,
                SlowSecondWrite(collection),
                to_document,
                # Batches of exactly 100: consume() waits up to poll_timeout for a full batch.
                DrainSettings(batch_size=100, poll_timeout=10),
                lease,
            )
        finally:
            consumer.close()
    stopped_after = time.monotonic() - began
    assert committed_offsets(job.topic, job.consumer_group, 1) == {0: 100}
    holder = leases.find_one({"_id": lease.name})
    if write_seconds < STOP_WAIT:
        assert holder is None, "the write ended within STOP_WAIT: the lease is released"
        assert collection.count_documents({}) == 200
    else:
        assert holder is not None and holder["owner"] == lease.owner, "left to expire, not released"
        assert stopped_after < write_seconds, "the stop did not wait for the whole write"
        wait_for("the write left running", lambda: collection.count_documents({}) == 200)
    loaded = {d["_id"] for d in collection.find({}, {"_id": 1})}
    assert loaded == {record_key(job.batch, n) for n in range(200)}
