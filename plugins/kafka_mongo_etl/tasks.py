"""What the DAG's ``produce`` and ``consume`` tasks do: build clients from the connections,
run the job, close what was opened, return a small summary for XCom."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from airflow.providers.mongo.hooks.mongo import MongoHook
from pymongo.errors import PyMongoError

from kafka_mongo_etl.audit import AUDIT_COLLECTION, write_audit
from kafka_mongo_etl.clients import EtlConsumerHook, EtlProducerHook, admin_client
from kafka_mongo_etl.drain import DrainSettings, drain_to_watermark, json_document
from kafka_mongo_etl.ids import id_function
from kafka_mongo_etl.lease import DrainLease
from kafka_mongo_etl.mongo_sink import MongoSink
from kafka_mongo_etl.produce import ensure_topic, produce_batch

log = logging.getLogger(__name__)

LEASE_COLLECTION = "etl_leases"


def default_group_id(mongo_db: str, mongo_collection: str) -> str:
    """One consumer group per target, so two targets of one topic never share offsets."""
    return f"kafka_to_mongo.{mongo_db}.{mongo_collection}"


def run_produce(
    *, kafka_conn_id: str, topic: str, partitions: int, batch: str, start: int, count: int
) -> dict[str, Any]:
    ensure_topic(admin_client(kafka_conn_id), topic, partitions)
    producer = EtlProducerHook(kafka_config_id=kafka_conn_id).get_producer()
    return produce_batch(producer, topic, batch, start, count).as_dict()


@dataclass(frozen=True)
class ConsumeJob:
    kafka_conn_id: str
    mongo_conn_id: str
    topic: str
    mongo_db: str
    mongo_collection: str
    batch: str
    run_id: str
    group_id: str | None = None
    id_strategy: str = "key"
    id_field: str | None = None
    lease_wait: float = 600.0
    drain: DrainSettings = DrainSettings()

    @property
    def consumer_group(self) -> str:
        return self.group_id or default_group_id(self.mongo_db, self.mongo_collection)


def run_consume(job: ConsumeJob, produced: dict[str, Any] | None = None) -> dict[str, Any]:
    """Drain ``job.topic`` into MongoDB under the drain lease and write the run's audit document."""
    to_document = json_document(id_function(job.id_strategy, job.id_field))
    mongo = MongoHook(mongo_conn_id=job.mongo_conn_id)
    client = mongo.get_conn()
    database = client[job.mongo_db]
    audit = {
        "dag_run_id": job.run_id,
        "topic": job.topic,
        "group_id": job.consumer_group,
        "target": f"{job.mongo_db}.{job.mongo_collection}",
        "produced": produced,
    }
    try:
        lease = DrainLease(
            database[LEASE_COLLECTION],
            name=f"drain:{job.topic}:{job.consumer_group}",
            owner=job.batch,
        )
        lease.acquire(wait=job.lease_wait)
        consumer = None
        try:
            consumer = EtlConsumerHook(job.topic, job.consumer_group, job.kafka_conn_id).get_conn
            summary = drain_to_watermark(
                consumer,
                job.topic,
                job.consumer_group,
                MongoSink(database[job.mongo_collection]),
                to_document,
                job.drain,
                lease,
            )
        finally:
            if consumer is not None:
                consumer.close()
            lease.release()
        result = {**audit, **summary.as_dict(), "state": "success"}
        write_audit(database[AUDIT_COLLECTION], job.batch, result)
        return result
    except Exception as err:
        # Record the failure for the run's audit, then fail the task with the original error.
        with contextlib.suppress(PyMongoError):
            write_audit(
                database[AUDIT_COLLECTION], job.batch, {**audit, "state": "failed", "error": str(err)}
            )
        raise
    finally:
        client.close()
