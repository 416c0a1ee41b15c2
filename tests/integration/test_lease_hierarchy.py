"""One lease hierarchy against the real broker and MongoDB-wire server: every drain holds the lease
of each partition it drains, so a whole-topic drain and a per-partition drain of the same group
never write the same partition at the same time, and the latest version of every key wins."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_mongo_etl.errors import DrainBusyError, LeaseLostError
from kafka_mongo_etl.lease import LEASE_COLLECTION, DrainLease, lease_owner, partition_leases
from kafka_mongo_etl.mongo_sink import MongoSink
from kafka_mongo_etl.tasks import run_consume

KEYS = 90
VERSIONS = 3


def fill_versions(bootstrap: str, topic: str, partitions: int) -> None:
    """``VERSIONS`` versions ``{"num": n, "v": v}`` of keys ``k0..``, in version order (one key's
    versions share a partition, so the last one read is the latest)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for v in range(VERSIONS):
        for n in range(KEYS):
            producer.produce(topic, key=f"k{n}", value=json.dumps({"num": n, "v": v}).encode())
    assert producer.flush(30) == 0


@pytest.fixture
def leases(mongo_client, mongo_db):
    return mongo_client[mongo_db][LEASE_COLLECTION]


def test_a_whole_topic_drain_and_a_partition_drain_of_one_group_never_write_a_partition_together(
    monkeypatch, connections, make_job, kafka_broker, mongo_client, committed_offsets
) -> None:
    """Both drains start together. The whole-topic drain shares partition 1 with the other, so
    the two must never write at the same time. Each write waits a while for a write of the other
    drain to begin: before the hierarchy (one lease for the whole topic, another for partition
    1) the two met there, and both loaded partition 1; now one waits for the other's leases."""
    job = make_job(drain=replace(make_job().drain, batch_size=60))
    fill_versions(kafka_broker.bootstrap_servers, job.topic, partitions=3)
    writing: set[int] = set()
    met = threading.Condition()
    overlaps: list[set[int]] = []

    class Watched(MongoSink):
        def write(self, documents):
            drain = id(self)  # one sink per drain (its writes run in the drain's writer thread)
            with met:
                writing.add(drain)
                if len(writing) > 1:
                    overlaps.append(set(writing))
                met.notify_all()
                # Give the other drain the chance to write meanwhile.
                met.wait_for(lambda: len(writing) > 1, timeout=2.0)
            try:
                return super().write(documents)
            finally:
                with met:
                    writing.discard(drain)

    monkeypatch.setattr("kafka_mongo_etl.tasks.MongoSink", Watched)
    results: dict[str, object] = {}

    def run(name: str, partitions: tuple[int, ...] | None) -> None:
        try:
            results[name] = run_consume(replace(job, partitions=partitions, batch=f"test/{name}"))
        except BaseException as err:  # noqa: BLE001 - reported by the test below
            results[name] = err

    threads = [
        threading.Thread(target=run, args=("whole", None)),
        threading.Thread(target=run, args=("p1", (1,))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert all(isinstance(result, dict) for result in results.values()), results
    assert overlaps == [], "two drains sharing partition 1 wrote at the same time"
    # Between them they read every record once: the later one finds partition 1 done.
    assert results["whole"]["records"] + results["p1"]["records"] == KEYS * VERSIONS  # type: ignore[index]
    offsets = committed_offsets(job.topic, job.consumer_group, 3)
    assert sum(offsets.values()) == KEYS * VERSIONS
    collection = mongo_client[job.mongo_db].testnum
    documents = {d["_id"]: d for d in collection.find()}
    assert set(documents) == {f"k{n}" for n in range(KEYS)}
    assert {d["v"] for d in documents.values()} == {VERSIONS - 1}, "an older version won"
    assert mongo_client[job.mongo_db][LEASE_COLLECTION].count_documents({}) == 0


def test_a_drain_waits_for_any_partition_lease_and_releases_what_it_took_when_it_gives_up(leases) -> None:
    single = DrainLease(leases, partition_leases("t", "g", [1]), owner=lease_owner("per-partition", 1))
    single.acquire(wait=0)
    whole = DrainLease(leases, partition_leases("t", "g", [2, 0, 1]), owner=lease_owner("whole", 1))
    assert whole.names == ("drain:t:g:0", "drain:t:g:1", "drain:t:g:2"), "ascending partition order"
    with pytest.raises(DrainBusyError, match=r"per-partition/try-1/.* holds drain:t:g:1 "):
        whole.acquire(wait=0)
    # Partition 0, taken before partition 1 was found busy, is free again; 2 was never taken.
    assert {d["_id"]: d["owner"] for d in leases.find()} == {"drain:t:g:1": single.owner}
    single.release()
    whole.acquire(wait=0)
    assert leases.count_documents({"owner": whole.owner}) == 3
    whole.release()
    assert leases.count_documents({}) == 0


def test_leases_taken_while_waiting_for_the_next_stay_renewed(leases) -> None:
    """The whole-topic drain holds partition 0 while it waits for 1 longer than the ttl: 0 must
    not expire meanwhile, or a per-partition drain of 0 could start under it."""
    busy = DrainLease(leases, partition_leases("t", "g", [1]), owner=lease_owner("busy", 1), ttl=60)
    busy.acquire(wait=0)
    whole = DrainLease(leases, partition_leases("t", "g", [0, 1]), owner=lease_owner("whole", 1), ttl=1.5)
    taken = threading.Event()
    failure: list[BaseException] = []

    def take() -> None:
        try:
            whole.acquire(wait=60)
            taken.set()
        except BaseException as err:  # noqa: BLE001 - reported below
            failure.append(err)

    waiter = threading.Thread(target=take)
    waiter.start()
    try:
        deadline = time.monotonic() + 30
        while leases.count_documents({"_id": "drain:t:g:0", "owner": whole.owner}) == 0:
            assert time.monotonic() < deadline and not failure, failure
            time.sleep(0.05)
        # Three ttls later, partition 0 is still the waiting drain's.
        for _ in range(9):
            time.sleep(0.5)
            with pytest.raises(DrainBusyError, match="whole/try-1/"):
                DrainLease(leases, "drain:t:g:0", owner=lease_owner("rival", 1), ttl=1.5).acquire(wait=0)
        assert not taken.is_set()
        busy.release()
        waiter.join(30)
        assert taken.is_set(), failure
    finally:
        busy.release()
        waiter.join(30)
    whole.renew()
    whole.release()


def test_a_renewal_fails_when_any_one_partition_lease_was_lost(leases) -> None:
    names = partition_leases("t", "g", range(3))
    whole = DrainLease(leases, names, owner=lease_owner("whole", 1), where="MongoDB connection 'm'")
    whole.acquire(wait=0)
    whole.renew()
    leases.update_one({"_id": "drain:t:g:2"}, {"$set": {"owner": "per-partition/try-1/abc"}})
    with pytest.raises(LeaseLostError, match=r"drain:t:g:2: per-partition/try-1/abc holds it") as err:
        whole.renew()
    assert "drain:t:g:0:" not in str(err.value) and "'m'" in str(err.value)
    whole.release()
    assert {d["_id"] for d in leases.find()} == {"drain:t:g:2"}, "another owner's lease is never deleted"
