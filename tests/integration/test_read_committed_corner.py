"""The read_committed corner (issue 19, finding 9) on the real broker with real transactional
producers: a transaction aborted just below the snapshot whose abort marker lies above it,
because another transaction opened before the abort and stays open.

librdkafka's position stays at the aborted records' first offset until it reads the marker, so a
drain that stops on the position stalls there on every try while the other transaction is open.
With end-of-partition events (``enable.partition.eof``) the drain sees that its fetcher reached
the snapshot and finishes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_mongo_etl.clients import CONSUMER_REQUIRED, CONSUMER_TUNING
from kafka_mongo_etl.drain import DrainSettings, drain_to_watermark
from kafka_mongo_etl.ids import id_function
from kafka_mongo_etl.mongo_sink import MongoSink
from kafka_mongo_etl.records import json_document


def transactional(bootstrap: str, name: str) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": name})
    producer.init_transactions(30)
    return producer


def consumer(bootstrap: str, group: str, eof: bool) -> Consumer:
    """The drain's consumer settings, with or without end-of-partition events."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            **CONSUMER_TUNING,
            **CONSUMER_REQUIRED,
            "enable.partition.eof": eof,
            "group.id": group,
        }
    )


@pytest.fixture
def corner(kafka_broker, topic) -> Iterator[str]:
    """Offsets 0..2 committed (k0 v0, k1 v0, k0 v1), 3..5 an aborted transaction, 6 a
    transaction left open, 7 the abort marker: the last stable offset (the snapshot) is 6."""
    bootstrap = kafka_broker.bootstrap_servers
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    plain = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, version in (("k0", 0), ("k1", 0), ("k0", 1)):
        plain.produce(topic, key=key, value=json.dumps({"v": version}).encode())
    assert plain.flush(30) == 0
    aborted = transactional(bootstrap, f"{topic}-aborted")
    aborted.begin_transaction()
    for n in range(3):
        aborted.produce(topic, key="k0", value=json.dumps({"v": f"aborted {n}"}).encode())
    assert aborted.flush(30) == 0
    still_open = transactional(bootstrap, f"{topic}-open")
    still_open.begin_transaction()
    still_open.produce(topic, key="k1", value=json.dumps({"v": "open"}).encode())
    assert still_open.flush(30) == 0
    aborted.abort_transaction(30)
    # The abort marker is written after abort_transaction returns: wait for the stable offset.
    probe = consumer(bootstrap, "probe", eof=False)
    try:
        deadline = time.monotonic() + 60
        while probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False) != (0, 6):
            assert time.monotonic() < deadline, "the aborted transaction's marker never landed"
            time.sleep(0.1)
    finally:
        probe.close()
    try:
        yield topic
    finally:
        still_open.abort_transaction(30)


@pytest.mark.parametrize("eof", [False, True], ids=["position only", "with end-of-partition events"])
def test_an_aborted_transaction_below_the_snapshot_with_its_marker_above_it(
    corner, kafka_broker, group_id, mongo_client, mongo_db, committed_offsets, eof: bool
) -> None:
    collection = mongo_client[mongo_db].target
    drain_consumer = consumer(kafka_broker.bootstrap_servers, group_id, eof)
    try:
        summary = drain_to_watermark(
            drain_consumer,
            corner,
            group_id,
            MongoSink(collection),
            json_document(id_function("key")),
            # The position cannot move while the other transaction is open: no timing involved.
            DrainSettings(stall_timeout=3, poll_timeout=0.5),
        )
        position = drain_consumer.position([TopicPartition(corner, 0)])[0].offset
    finally:
        drain_consumer.close()
    assert summary.partitions[0].end == 6 and position == 3
    assert {d["_id"]: d["v"] for d in collection.find()} == {"k0": 1, "k1": 0}
    if eof:
        assert summary.stalled == {} and committed_offsets(corner, group_id) == {0: 6}
    else:
        assert summary.stalled == {0: 3} and committed_offsets(corner, group_id) == {0: 3}
