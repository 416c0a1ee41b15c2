"""Drain-and-load contenders: the same topic into a fresh collection with a fresh consumer group
each time, timed from client creation to the last write (and commit) and the clients' close."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from pymongo import MongoClient, ReplaceOne
from pymongo.errors import BulkWriteError

from bench.timing import Sample
from bench.topics import unique
from kafka_mongo_etl.clients import EtlConsumerHook
from kafka_mongo_etl.drain import drain_to_watermark, json_document
from kafka_mongo_etl.ids import id_function
from kafka_mongo_etl.mongo_sink import WriteResult
from kafka_mongo_etl.tasks import ConsumeJob, run_consume

log = logging.getLogger(__name__)

DB = "bench"
BATCH = 5_000  # ours' default DrainSettings.batch_size; every batching contender uses it
DUPLICATE_KEY = 11000


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
    name: str
    label: str
    run: Callable[[LoadTarget], dict[str, Any]]  # returns detail; must load target.expected records
    writes: bool = True


def ours(target: LoadTarget, kafka_conn_id: str = "kafka_default") -> dict[str, Any]:
    """The consume task's code: ``run_consume`` (hooks, lease, drain, upserts, audit)."""
    job = ConsumeJob(
        kafka_conn_id=kafka_conn_id,
        mongo_conn_id="mongo_default",
        topic=target.topic,
        mongo_db=DB,
        mongo_collection=target.collection,
        batch=f"bench/{target.collection}",
        run_id=target.collection,
        group_id=target.group,
    )
    result = run_consume(job)
    return {"records": result["records"], "batches": result["batches"]}


class NullSink:
    """Acknowledges every document without writing it: the drain's own cost."""

    def write(self, documents: dict[Any, dict[str, Any]]) -> WriteResult:
        return WriteResult(written=len(documents), inserted=len(documents), replaced=0)


def ours_null_sink(target: LoadTarget) -> dict[str, Any]:
    """Our drain (decode, build documents, commit offsets) with the write left out."""
    consumer = EtlConsumerHook(target.topic, target.group, "kafka_default").get_conn
    try:
        summary = drain_to_watermark(
            consumer, target.topic, target.group, NullSink(), json_document(id_function("key"))
        )
    finally:
        consumer.close()
    return {"records": summary.records, "batches": summary.batches}


def _raw_consumer(target: LoadTarget) -> tuple[Consumer, int]:
    """A consumer assigned to every partition from the beginning, and how many records to read."""
    consumer = Consumer(
        {
            "bootstrap.servers": target.bootstrap_servers,
            "group.id": target.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
            "queued.min.messages": 100_000,
        }
    )
    metadata = consumer.list_topics(target.topic, timeout=30)
    partitions = sorted(metadata.topics[target.topic].partitions)
    remaining = 0
    for partition in partitions:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(target.topic, partition), timeout=30, cached=False
        )
        remaining += high - low
    consumer.assign([TopicPartition(target.topic, p, OFFSET_BEGINNING) for p in partitions])
    return consumer, remaining


def _raw_loop(target: LoadTarget, write: Callable[[list[Message]], None]) -> dict[str, Any]:
    """Consume in batches of ``BATCH`` (never asking for more than is left), write, commit."""
    consumer, remaining = _raw_consumer(target)
    batches = records = 0
    try:
        while remaining > 0:
            messages = consumer.consume(num_messages=min(BATCH, remaining), timeout=1.0)
            if not messages:
                continue
            offsets: dict[int, int] = {}
            for message in messages:
                if message.error() is not None:
                    raise KafkaException(message.error())
                offsets[message.partition()] = message.offset() + 1
            write(messages)
            consumer.commit(
                offsets=[TopicPartition(target.topic, p, o) for p, o in offsets.items()],
                asynchronous=False,
            )
            remaining -= len(messages)
            records += len(messages)
            batches += 1
    finally:
        consumer.close()
    return {"records": records, "batches": batches}


def _document(message: Message) -> dict[str, Any]:
    """Ours' document for a record: the JSON value, ``_kafka`` coordinates, ``_id`` = the key."""
    value = json.loads(message.value())
    value.pop("_id", None)
    value["_kafka"] = {"partition": message.partition(), "offset": message.offset()}
    return value


def raw_upsert(target: LoadTarget) -> dict[str, Any]:
    """Raw confluent-kafka + pymongo with ours' write semantics: unordered ReplaceOne upserts."""
    client: MongoClient = MongoClient(target.mongo_uri)
    collection = client[DB][target.collection]

    def write(messages: list[Message]) -> None:
        documents = {message.key().decode(): _document(message) for message in messages}
        collection.bulk_write(
            [ReplaceOne({"_id": _id}, doc, upsert=True) for _id, doc in documents.items()], ordered=False
        )

    try:
        return _raw_loop(target, write)
    finally:
        client.close()


def insert_skipping_duplicates(collection, documents: list[dict[str, Any]]) -> int:
    """``insert_many(ordered=False)``; duplicate ``_id`` errors (11000) are records already there."""
    try:
        return len(collection.insert_many(documents, ordered=False).inserted_ids)
    except BulkWriteError as err:
        others = [e for e in err.details["writeErrors"] if e["code"] != DUPLICATE_KEY]
        if others:
            raise
        return err.details["nInserted"]


def raw_insert(target: LoadTarget) -> dict[str, Any]:
    """The same raw loop with plain unordered ``insert_many`` that skips duplicate ``_id``s."""
    client: MongoClient = MongoClient(target.mongo_uri)
    collection = client[DB][target.collection]

    def write(messages: list[Message]) -> None:
        documents = [{"_id": message.key().decode(), **_document(message)} for message in messages]
        insert_skipping_duplicates(collection, documents)

    try:
        return _raw_loop(target, write)
    finally:
        client.close()


@dataclass
class BatchClock:
    """When the provider operator's last batch finished: what comes after is its idle wait."""

    last_batch_end: float = 0.0
    batches: int = 0
    records: int = 0


def write_batch_through_mongo_hook(
    messages: list[Message], *, hook: Any, db: str, collection: str, clock: BatchClock
) -> None:
    """``apply_function_batch`` for the operator: the same documents and upserts as ours."""
    documents = [{"_id": message.key().decode(), **_document(message)} for message in messages]
    hook.replace_many(collection, documents, mongo_db=db, upsert=True, ordered=False)
    clock.batches += 1
    clock.records += len(messages)
    clock.last_batch_end = time.perf_counter()


def provider_operator(target: LoadTarget, poll_timeout: float) -> dict[str, Any]:
    """``ConsumeFromTopicOperator`` done well: batches through ``MongoHook``, manual commits.

    Run outside a DAG with ``execute(context={})``. Its consumer subscribes (a group join) and it
    ends only after ``consume`` returned nothing for ``poll_timeout`` seconds: that idle wait is
    part of its cost and reported separately.
    """
    from airflow.providers.apache.kafka.operators.consume import ConsumeFromTopicOperator
    from airflow.providers.mongo.hooks.mongo import MongoHook

    began = time.perf_counter()
    conn_id = f"bench_provider_{target.group}"
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(
        {
            "conn_type": "kafka",
            "extra": {
                "bootstrap.servers": target.bootstrap_servers,
                "group.id": target.group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        }
    )
    clock = BatchClock()
    hook = MongoHook(mongo_conn_id="mongo_default")
    try:
        consume_from_topic = ConsumeFromTopicOperator(
            task_id="consume_from_topic",
            topics=[target.topic],
            kafka_config_id=conn_id,
            apply_function_batch=write_batch_through_mongo_hook,
            apply_function_kwargs={"hook": hook, "db": DB, "collection": target.collection, "clock": clock},
            commit_cadence="end_of_batch",
            max_batch_size=BATCH,
            poll_timeout=poll_timeout,
        )
        consume_from_topic.execute(context={})
    finally:
        hook.close()
        del os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"]
    ended = time.perf_counter()
    return {
        "records": clock.records,
        "batches": clock.batches,
        "idle_seconds": round(ended - clock.last_batch_end, 4) if clock.batches else None,
        "seconds_without_idle": round(clock.last_batch_end - began, 4) if clock.batches else None,
    }


def tutorial(target: LoadTarget) -> dict[str, Any]:
    """The tutorial's consumer: kafka-python, auto-commit, ``insert_one`` per message.

    It loops forever by design; the harness stops it once it has consumed ``target.expected``.
    """
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        target.topic,
        bootstrap_servers=[target.bootstrap_servers],
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        group_id=target.group,
        value_deserializer=lambda raw: json.loads(raw.decode("utf-8")),
    )
    client: MongoClient = MongoClient(target.mongo_uri)
    collection = client[DB][target.collection]
    consumed = 0
    try:
        for message in consumer:
            collection.insert_one(message.value)
            consumed += 1
            if consumed >= target.expected:
                break
    finally:
        consumer.close()
        client.close()
    return {"records": consumed}


def measure(contender: LoadContender, target: LoadTarget) -> Sample:
    """One timed run; the documents that landed are counted after the clock stops, then dropped."""
    began = time.perf_counter()
    detail = contender.run(target)
    seconds = time.perf_counter() - began
    client: MongoClient = MongoClient(target.mongo_uri)
    try:
        if contender.writes:
            detail["in_mongo"] = client[DB][target.collection].count_documents({})
            client[DB].drop_collection(target.collection)
        landed = detail["in_mongo"] if contender.writes else detail["records"]
    finally:
        client.close()
    if landed != target.expected:
        log.error("%s loaded %s records, expected %s", contender.name, landed, target.expected)
    return Sample(seconds, target.expected, detail)
