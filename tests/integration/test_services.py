"""The local stack's services are real and behave as the ETL relies on."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from pymongo.errors import DuplicateKeyError

from devstack.kafka import KafkaBroker


def test_message_round_trips_through_the_real_broker(
    kafka_broker: KafkaBroker, topic: str, group_id: str
) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
    for n in range(3):
        producer.produce(topic, key=f"k{n}", value=f'{{"num": {n}}}')
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap_servers,
            "group.id": group_id,
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        received = []
        while len(received) < 3:
            batch = consumer.consume(num_messages=10, timeout=10)
            assert batch, "no message came back from the broker within 10 s"
            received.extend(batch)
    finally:
        consumer.close()
    assert [(m.key(), m.value(), m.offset()) for m in received] == [
        (b"k0", b'{"num": 0}', 0),
        (b"k1", b'{"num": 1}', 1),
        (b"k2", b'{"num": 2}', 2),
    ]


def test_documents_round_trip_and_duplicate_id_is_rejected(mongo_client, mongo_db: str) -> None:
    collection = mongo_client[mongo_db]["docs"]
    collection.insert_many([{"_id": n, "num": n} for n in range(5)])
    assert sorted(d["_id"] for d in collection.find({}, {"_id": 1})) == [0, 1, 2, 3, 4]
    assert collection.find_one({"_id": 3}) == {"_id": 3, "num": 3}

    with pytest.raises(DuplicateKeyError) as err:
        collection.insert_one({"_id": 3, "num": 33})
    assert err.value.code == 11000
    assert collection.count_documents({}) == 5
    assert collection.find_one({"_id": 3})["num"] == 3
