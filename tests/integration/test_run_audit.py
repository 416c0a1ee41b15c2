"""The run audit keeps every try (issue 19, finding 7): dead letters that a failed try wrote stay
in the run's totals when its retry succeeds, on the real broker and server."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from kafka_mongo_etl.drain import DrainSettings
from kafka_mongo_etl.errors import DeadLetterLimitError
from kafka_mongo_etl.tasks import ConsumeJob, DeadLetterPolicy, run_consume
from kafka_mongo_etl.write_models import WriteFailedError


@pytest.fixture
def job(connections, make_job) -> ConsumeJob:
    return make_job(drain=DrainSettings(batch_size=10, stall_timeout=10, overlap=False))


def send(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """One partition; record ``n`` keyed ``k<n>``."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap})
    for n, value in enumerate(values):
        producer.produce(topic, key=f"k{n}".encode(), value=value)
    assert producer.flush(60) == 0


def good(n: int) -> bytes:
    return json.dumps({"num": n}).encode()


def test_the_dead_letters_of_a_try_that_broke_the_limit_stay_in_the_run_after_its_retry(
    job, kafka_broker, mongo_client, committed_offsets
) -> None:
    send(kafka_broker.bootstrap_servers, job.topic, [good(n) if n % 10 else b"{nope" for n in range(30)])

    with pytest.raises(DeadLetterLimitError, match="3 dead letters"):
        run_consume(job)
    # The user raises the limit and clears the task: the same run's next try finds nothing left.
    retry = run_consume(replace(job, dead_letter_policy=DeadLetterPolicy(max_count=None)))

    assert (retry["records"], retry["dead_letters"]) == (0, 0)
    audit = mongo_client[job.mongo_db].etl_runs.find_one({"_id": job.batch})
    assert (audit["state"], "error" in audit) == ("success", False)
    assert (audit["dead_letters"], audit["dead_letter_reasons"]) == (3, {"not_json": 3})
    assert [(t["state"], t["records"], t["loaded"], t["dead_letters"]) for t in audit["tries"]] == [
        ("failed", 30, 27, 3),
        ("success", 0, 0, 0),
    ]
    assert "3 dead letters, more than the limit of 0" in audit["tries"][0]["error"]
    expected = {"tries": 2, "failures": 1, "records": 30, "loaded": 27, "dead_letters": 3}
    assert {k: audit["totals"][k] for k in expected} == expected
    assert retry["totals"] == audit["totals"]
    assert mongo_client[job.mongo_db].testnum_dlq.count_documents({}) == 3
    assert committed_offsets(job.topic, job.consumer_group)[0] == 30


def failing_once_after_dead_letters(monkeypatch, collection: Collection, dead_letters: Collection) -> list:
    """The first bulk write to ``collection`` after a dead letter was kept is refused as throttled
    (code 16500, not about the document: the batch fails and nothing of it is committed)."""
    original = Collection.bulk_write
    failed: list[int] = []

    def bulk_write(self: Collection, requests, *args, **kwargs):
        if failed or self.full_name != collection.full_name or not dead_letters.count_documents({}):
            return original(self, requests, *args, **kwargs)
        failed.append(len(list(requests)))
        error = {"index": 0, "code": 16500, "errmsg": "Request rate is large", "op": {}}
        raise BulkWriteError({"writeErrors": [error], "writeConcernErrors": [], "nInserted": 0})

    monkeypatch.setattr(Collection, "bulk_write", bulk_write)
    return failed


def test_a_try_that_fails_after_writing_dead_letters_keeps_them_in_the_run(
    job, kafka_broker, mongo_client, committed_offsets, monkeypatch
) -> None:
    db = mongo_client[job.mongo_db]
    # The first batch (offsets 0..9) holds two bad records; the second batch's write fails.
    values = [good(n) for n in range(25)]
    values[3], values[7] = b"{nope", b"[1]"
    send(kafka_broker.bootstrap_servers, job.topic, values)
    lenient = replace(job, dead_letter_policy=DeadLetterPolicy(max_count=None))
    failed = failing_once_after_dead_letters(monkeypatch, db.testnum, db.testnum_dlq)

    with pytest.raises(WriteFailedError, match="16500"):
        run_consume(lenient)
    # Where try 1 stopped depends on how the broker cut the batches (a first fetch may bring
    # fewer than 10): after at least one dead letter, since that is when the failure comes.
    stopped = committed_offsets(job.topic, job.consumer_group)[0]
    assert failed and stopped > 3
    seen_first = {offset: code for offset, code in ((3, "not_json"), (7, "not_object")) if offset < stopped}
    retry = run_consume(lenient)

    assert (retry["records"], retry["loaded"], retry["dead_letters"]) == (
        25 - stopped,
        25 - stopped - (2 - len(seen_first)),
        2 - len(seen_first),
    )
    audit = db.etl_runs.find_one({"_id": job.batch})
    first, second = audit["tries"]
    assert (first["state"], first["dead_letters"]) == ("failed", len(seen_first))
    assert first["dead_letter_reasons"] == {code: 1 for code in seen_first.values()}
    assert "16500" in first["error"] and "records" not in first  # its drain never ended
    assert (second["state"], second["dead_letters"]) == ("success", 2 - len(seen_first))
    # The run: both dead letters, whichever try wrote them; one failure in two tries.
    assert (audit["state"], audit["dead_letters"]) == ("success", 2)
    assert audit["dead_letter_reasons"] == {"not_json": 1, "not_object": 1}
    assert (audit["totals"]["tries"], audit["totals"]["failures"]) == (2, 1)
    assert db.testnum.count_documents({}) == 23 and db.testnum_dlq.count_documents({}) == 2
