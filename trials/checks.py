"""What every trial checks: the exact ``_id`` set, each key's final content, the dead letters, and
the consumer group's offsets against the topic.

Everything here reads the broker and the MongoDB-wire server directly (``Stack``), round any proxy
a fault sits on, so a fault never hides what Kafka and MongoDB hold. The expected ``_id`` set is
computed apart from the ETL (``Work.expected_ids``: ``record_key(batch, n)`` for every n).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaException, TopicPartition
from pymongo import MongoClient

from trials.versions import stale_query
from trials.work import Work

if TYPE_CHECKING:
    from kafka_mongo_etl.offsets import PartitionOffsets

# The group of the checks' own consumers: it reads, never commits.
CHECKS_GROUP = "trial-checks"


@dataclass(frozen=True)
class Stack:
    """Where the trials' broker and MongoDB-wire server listen, for the checks (round any proxy)."""

    bootstrap_servers: str
    mongo_uri: str

    def mongo_client(self) -> MongoClient:
        return MongoClient(self.mongo_uri, serverSelectionTimeoutMS=10_000)

    def consumer(self, group_id: str = CHECKS_GROUP) -> Consumer:
        return Consumer(
            {"bootstrap.servers": self.bootstrap_servers, "group.id": group_id, "enable.auto.commit": False}
        )


def topic_offsets(stack: Stack, topic: str, group_id: str) -> dict[int, PartitionOffsets]:
    """Each partition's watermarks and ``group_id``'s committed offset; ``{}`` for an unknown topic."""
    from kafka_mongo_etl.offsets import partition_offsets

    consumer = stack.consumer(group_id)
    try:
        return partition_offsets(consumer, topic, 30)
    finally:
        consumer.close()


def records_on_topic(stack: Stack, topic: str) -> int:
    """Records on ``topic`` now (high minus low watermarks); 0 when it does not exist."""
    from kafka_mongo_etl.offsets import records_on

    consumer = stack.consumer()
    try:
        return records_on(consumer, topic, 30)
    finally:
        consumer.close()


def committed_ends(offsets: dict[int, PartitionOffsets]) -> dict[int, tuple[int, int]]:
    """``{partition: (low, end)}``: the records below the group's committed offsets, where its
    next drain starts."""
    return {p: (o.low, o.high - o.lag) for p, o in offsets.items()}


def latest_below(stack: Stack, topic: str, ends: dict[int, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """``{key: (partition, offset)}`` of each key's last record below ``ends`` (``{partition: (low, end)}``).

    What a consumer group that committed ``end`` has promised is in MongoDB: for each key, at
    least the version at that offset.
    """
    wanted = {p: (low, end) for p, (low, end) in ends.items() if end > low}
    latest: dict[str, tuple[int, int]] = {}
    if not wanted:
        return latest
    consumer = stack.consumer()
    try:
        consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in wanted.items()])
        reached = {p: low for p, (low, _) in wanted.items()}
        deadline = time.monotonic() + 60
        while any(reached[p] < end for p, (_, end) in wanted.items()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not read {topic!r} up to {wanted} in 60 s (at {reached})")
            for message in consumer.consume(num_messages=1000, timeout=1.0):
                if message.error() is not None:
                    raise KafkaException(message.error())
                partition, offset = message.partition(), message.offset()
                if offset < wanted[partition][1]:
                    latest[message.key().decode()] = (partition, offset)
            for tp in consumer.position([TopicPartition(topic, p) for p in wanted]):
                reached[tp.partition] = max(reached[tp.partition], tp.offset)
    finally:
        consumer.close()
    return latest


def committed_keys(stack: Stack, work: Work) -> dict[str, tuple[int, int]]:
    """Each key with a record below the group's committed offsets, and where its last such record is."""
    return latest_below(stack, work.topic, committed_ends(topic_offsets(stack, work.topic, work.group_id)))


def committed_not_written(stack: Stack, work: Work) -> int:
    """Keys with a record below the group's committed offsets whose document is missing or holds an
    earlier record (a key's versions are all on one partition, in order: its document must come
    from its last record below the committed offset, or a later one)."""
    promised = committed_keys(stack, work)
    client = stack.mongo_client()
    try:
        collection = client[work.mongo_db][work.mongo_collection]
        stored = {
            doc["_id"]: (doc.get("_kafka", {}).get("partition"), doc.get("_kafka", {}).get("offset", -1))
            for doc in collection.find({}, {"_kafka.partition": 1, "_kafka.offset": 1})
        }
    finally:
        client.close()
    return sum(
        1
        for key, (partition, offset) in promised.items()
        if key not in stored or stored[key][0] != partition or stored[key][1] < offset
    )


@dataclass
class Verification:
    """The target collection against the expected ``_id`` set and final content, and the group's offsets."""

    expected: int
    versions: int
    documents: int
    distinct_ids: int
    lost: int
    duplicate: int
    unexpected: int
    # Documents whose content does not belong to their _id (num/batch differ from the key).
    mismatched: int
    # Documents holding an older version than the last one produced for their key.
    stale: int
    # Records in <collection>_dlq: all trial records are good, so this must be 0.
    dead_letters: int
    # Records between the group's committed offsets and the high watermarks after the last try.
    offsets_behind: int
    ids: set[str] = field(default_factory=set, repr=False)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicate
            or self.unexpected
            or self.mismatched
            or self.stale
            or self.dead_letters
            or self.offsets_behind
        )

    def describe(self) -> str:
        return (
            f"{self.documents}/{self.expected} docs ({self.versions} versions per key), lost {self.lost}, "
            f"duplicate {self.duplicate}, stale {self.stale}, unexpected {self.unexpected}, "
            f"mismatched {self.mismatched}, dead letters {self.dead_letters}, "
            f"offsets behind {self.offsets_behind}"
        )


def verify(stack: Stack, work: Work, expected: set[str] | None = None) -> Verification:
    """Compare ``work``'s target collection with ``expected`` (default: its own batch's ids), each
    document with its key's last version (``work.versions``), and the group's offsets with the topic."""
    expected = work.expected_ids() if expected is None else expected
    client = stack.mongo_client()
    try:
        database = client[work.mongo_db]
        collection = database[work.mongo_collection]
        documents = collection.count_documents({})
        distinct = collection.distinct("_id")
        mismatched = 0
        ids: set[str] = set()
        for doc in collection.find({}, {"_id": 1, "num": 1, "batch": 1}):
            ids.add(doc["_id"])
            if doc["_id"] != f"{doc.get('batch')}/{doc.get('num')}":
                mismatched += 1
        stale = collection.count_documents(stale_query(work.versions))
        dead_letters = database[f"{work.mongo_collection}_dlq"].count_documents({})
    finally:
        client.close()
    return Verification(
        expected=len(expected),
        versions=work.versions,
        documents=documents,
        distinct_ids=len(distinct),
        lost=len(expected - ids),
        duplicate=documents - len(distinct),
        unexpected=len(ids - expected),
        mismatched=mismatched,
        stale=stale,
        dead_letters=dead_letters,
        offsets_behind=sum(o.lag for o in topic_offsets(stack, work.topic, work.group_id).values()),
        ids=ids,
    )


def drop_database(stack: Stack, name: str) -> None:
    client = stack.mongo_client()
    try:
        client.drop_database(name)
    finally:
        client.close()
