"""Drain-and-load contenders: the same topic into a fresh collection with a fresh consumer group
each time, timed from client creation to the last write (and commit) and the clients' close.

To measure a variant of our drain (a new ``DrainSettings`` field, a write mode), add a contender
to ``harness.load_contenders`` that calls ``ours`` with the ``ConsumeJob`` fields it changes, e.g.
``partial(load.ours, drain=DrainSettings(...))``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import bson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from pymongo import MongoClient, ReplaceOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from bench.timing import Sample
from bench.topics import unique
from kafka_mongo_etl.clients import EtlConsumerHook
from kafka_mongo_etl.drain import drain_to_watermark, json_document
from kafka_mongo_etl.ids import id_function
from kafka_mongo_etl.mongo_client import MONGO_WRITE_CONCERN
from kafka_mongo_etl.mongo_sink import WriteResult
from kafka_mongo_etl.tasks import ConsumeJob, run_consume

log = logging.getLogger(__name__)

DB = "bench"
BATCH = 5_000  # ours' default DrainSettings.batch_size; every batching contender uses it
DUPLICATE_KEY = 11000
Write = Callable[[list[Message]], None]


@dataclass
class LoadTarget:
    """What one run drains and where it writes; ``expected`` records should land."""

    bootstrap_servers: str
    mongo_uri: str
    topic: str
    expected: int
    collection: str = field(default_factory=lambda: unique("c"))
    group: str = field(default_factory=lambda: unique("bench_group"))


@dataclass(frozen=True)
class LoadContender:
    """``run`` returns at least ``{"records": records read}``; ``prepare`` runs before the clock,
    with another consumer group, into the same collection."""

    name: str
    label: str
    run: Callable[[LoadTarget], dict[str, Any]]
    writes: bool = True
    prepare: Callable[[LoadTarget], Any] | None = None


def ours(target: LoadTarget, **job_fields: Any) -> dict[str, Any]:
    """The consume task's code: ``run_consume`` (hooks, lease, drain, default write mode, audit)."""
    job = ConsumeJob(
        kafka_conn_id="kafka_default",
        mongo_conn_id="mongo_default",
        topic=target.topic,
        mongo_db=DB,
        mongo_collection=target.collection,
        batch=f"bench/{target.collection}",
        run_id=target.collection,
        group_id=target.group,
        **job_fields,
    )
    return {"records": run_consume(job)["records"]}


class NullSink:
    """Acknowledges every document without writing it: the drain's own cost."""

    def write(self, documents: dict[Any, dict[str, Any]]) -> WriteResult:
        return WriteResult(written=len(documents), inserted=len(documents), replaced=0)


def ours_null_sink(target: LoadTarget) -> dict[str, Any]:
    """Our drain (decode, build documents, commit offsets) with the write left out."""
    consumer = EtlConsumerHook(target.topic, target.group, "kafka_default").get_conn
    try:
        to_document = json_document(id_function("key"))
        summary = drain_to_watermark(consumer, target.topic, target.group, NullSink(), to_document)
    finally:
        consumer.close()
    return {"records": summary.records, "drain_seconds": summary.seconds}


def _raw_loop(target: LoadTarget, write: Write) -> dict[str, Any]:
    """What an expert writes in an afternoon: assign every partition from the beginning, read
    the watermarks once, consume batches of at most what is left, write, commit synchronously."""
    consumer = Consumer(
        {
            "bootstrap.servers": target.bootstrap_servers,
            "group.id": target.group,
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
            "queued.min.messages": 100_000,
        }
    )
    try:
        partitions = consumer.list_topics(target.topic, timeout=30).topics[target.topic].partitions
        tps = [TopicPartition(target.topic, p) for p in sorted(partitions)]
        total = sum(
            h - low for low, h in (consumer.get_watermark_offsets(tp, 30, cached=False) for tp in tps)
        )
        consumer.assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in tps])
        remaining = total
        while remaining > 0:
            messages = consumer.consume(num_messages=min(BATCH, remaining), timeout=1.0)
            offsets: dict[int, int] = {}
            for message in messages:
                if message.error() is not None:
                    raise KafkaException(message.error())
                offsets[message.partition()] = message.offset() + 1
            if messages:
                write(messages)
                commit = [TopicPartition(target.topic, p, o) for p, o in offsets.items()]
                consumer.commit(offsets=commit, asynchronous=False)
                remaining -= len(messages)
    finally:
        consumer.close()
    return {"records": total}


def _document(message: Message) -> dict[str, Any]:
    """Ours' document for a record: the JSON value, ``_id`` = the key, and the ``_kafka`` ours
    stores (topic, partition, offset, and the fence's ``applied`` keyed ``<topic>:<partition>``,
    ``records.kafka_position``), written out here as a hand-written loop would: the raw loops
    encode and send the same bytes per record as ours, not a smaller document."""
    value = json.loads(message.value())
    value["_id"] = message.key().decode()
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    value["_kafka"] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "applied": {f"{topic}:{partition}": offset},
    }
    return value


def upserts(collection: Collection) -> Write:
    """Ours' default write semantics: unordered ``ReplaceOne`` upserts, the latest version wins."""

    def write(messages: list[Message]) -> None:
        documents = {doc.pop("_id"): doc for doc in map(_document, messages)}
        requests = [ReplaceOne({"_id": _id}, doc, upsert=True) for _id, doc in documents.items()]
        collection.bulk_write(requests, ordered=False)

    return write


def inserts(collection: Collection) -> Write:
    """``insert_many(ordered=False)``; duplicate ``_id`` errors (11000) are records already there."""

    def write(messages: list[Message]) -> None:
        try:
            collection.insert_many([_document(m) for m in messages], ordered=False)
        except BulkWriteError as err:
            if any(e["code"] != DUPLICATE_KEY for e in err.details["writeErrors"]):
                raise

    return write


def raw(
    target: LoadTarget,
    write_model: Callable[[Collection], Write],
    concurrent: bool = False,
    journal: bool = True,
) -> dict:
    """The raw loop with ``write_model``; ``concurrent``: each batch is split by partition and
    the parts are written at the same time, one thread each (the commit waits for all). It writes
    with ours' write concern (``w: majority``, journal), as the peers do: a loop that commits
    offsets after a write needs that write to last. ``journal=False``: the driver's default
    write concern instead, for reference."""
    client: MongoClient = MongoClient(target.mongo_uri, **(MONGO_WRITE_CONCERN if journal else {}))
    write = write_model(client[DB][target.collection])
    pool = ThreadPoolExecutor(max_workers=16) if concurrent else None

    def one_write_per_partition(messages: list[Message]) -> None:
        parts: dict[int, list[Message]] = defaultdict(list)
        for message in messages:
            parts[message.partition()].append(message)
        for future in [pool.submit(write, part) for part in parts.values()]:
            future.result()

    try:
        return _raw_loop(target, one_write_per_partition if pool else write)
    finally:
        if pool:
            pool.shutdown()
        client.close()


def raw_decode(target: LoadTarget) -> dict[str, Any]:
    """The raw loop with the write left out: ``json.loads``, ``_id`` and ``_kafka``, ``bson.encode``
    and nothing else for each record (none of MongoDB's rules, no dead letters): what a record costs
    a hand-written loop, to hold our null sink against."""
    encoded = 0

    def decode(messages: list[Message]) -> None:
        nonlocal encoded
        for message in messages:
            bson.encode(_document(message))
            encoded += 1

    result = _raw_loop(target, decode)
    if encoded != result["records"]:
        raise RuntimeError(f"raw_decode encoded {encoded} of {result['records']} records")
    return result


def tutorial(target: LoadTarget, cap_seconds: float) -> dict[str, Any]:
    """The tutorial's consumer: kafka-python, auto-commit, ``insert_one`` per message. It loops
    forever by design: stopped after ``target.expected`` records or ``cap_seconds``."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        target.topic,
        bootstrap_servers=[target.bootstrap_servers],
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        group_id=target.group,
        value_deserializer=lambda raw: json.loads(raw.decode("utf-8")),
        # A guard, never reached when the topic holds the records it should.
        consumer_timeout_ms=int(1000 * max(cap_seconds, 10.0)),
    )
    client: MongoClient = MongoClient(target.mongo_uri)
    collection = client[DB][target.collection]
    deadline = time.monotonic() + cap_seconds
    consumed = 0
    try:
        for message in consumer:
            collection.insert_one(message.value)
            consumed += 1
            if consumed >= target.expected or time.monotonic() >= deadline:
                break
    finally:
        consumer.close()
        client.close()
    return {"records": consumed, "capped_at_seconds": cap_seconds if consumed < target.expected else None}


def measure(contender: LoadContender, target: LoadTarget) -> Sample:
    """One timed run; the documents that landed are counted after the clock stops, then dropped."""
    if contender.prepare:
        contender.prepare(replace(target, group=unique("bench_prepare")))
    began = time.perf_counter()
    detail = contender.run(target)
    seconds = time.perf_counter() - began
    if contender.writes:
        client: MongoClient = MongoClient(target.mongo_uri)
        try:
            detail["in_mongo"] = client[DB][target.collection].count_documents({})
            client[DB].drop_collection(target.collection)
        finally:
            client.close()
    expected = detail["records"] if detail.get("capped_at_seconds") else target.expected
    if detail["records"] != expected or detail.get("in_mongo", expected) != expected:
        log.error("%s: %s, expected %s records", contender.name, detail, expected)
    return Sample(seconds, detail["records"], detail)
