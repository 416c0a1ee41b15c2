"""What the DAG's ``produce`` and ``consume`` tasks do: build clients from the connections,
run the job, close what was opened, return a small summary for XCom."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from airflow.providers.mongo.hooks.mongo import MongoHook
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import ConfigurationError, ConnectionFailure, OperationFailure, PyMongoError

from kafka_mongo_etl.audit import AUDIT_COLLECTION, write_audit
from kafka_mongo_etl.clients import EtlConsumerHook, EtlProducerHook, admin_client, kafka_errors
from kafka_mongo_etl.drain import DrainSettings, DrainSummary, drain_to_watermark
from kafka_mongo_etl.errors import ConnectionProblem, DeadLetterLimitError, ParamsRefusedError
from kafka_mongo_etl.ids import id_function
from kafka_mongo_etl.lease import DrainLease
from kafka_mongo_etl.mongo_sink import MongoDeadLetterSink, MongoSink
from kafka_mongo_etl.produce import ensure_topic, produce_batch
from kafka_mongo_etl.records import json_document
from kafka_mongo_etl.write_models import record_builder

log = logging.getLogger(__name__)

LEASE_COLLECTION = "etl_leases"
DEAD_LETTER_SUFFIX = "_dlq"
KAFKA_METADATA_TIMEOUT = 15.0
MONGO_TIMEOUT_MS = 10_000


def default_group_id(mongo_db: str, mongo_collection: str) -> str:
    """One consumer group per target, so two targets of one topic never share offsets."""
    return f"kafka_to_mongo.{mongo_db}.{mongo_collection}"


def run_produce(
    *, kafka_conn_id: str, topic: str, partitions: int, batch: str, start: int, count: int
) -> dict[str, Any]:
    with kafka_errors(kafka_conn_id):
        ensure_topic(admin_client(kafka_conn_id), topic, partitions, timeout=KAFKA_METADATA_TIMEOUT)
        producer = EtlProducerHook(kafka_config_id=kafka_conn_id).get_producer()
        return produce_batch(producer, topic, batch, start, count).as_dict()


@dataclass(frozen=True)
class DeadLetterPolicy:
    """When dead letters fail the task: more than ``max_count`` in a run, or more than
    ``max_ratio`` of the records it drained (``None``: no such limit)."""

    max_count: int | None = 0
    max_ratio: float | None = None

    def breach(self, dead_letters: int, records: int) -> str | None:
        if self.max_count is not None and dead_letters > self.max_count:
            return f"{dead_letters} dead letters, more than the limit of {self.max_count}"
        if self.max_ratio is not None and records and dead_letters / records > self.max_ratio:
            return (
                f"{dead_letters} dead letters of {records} records ({dead_letters / records:.1%}), "
                f"more than the limit of {self.max_ratio:.1%}"
            )
        return None


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
    # The value fields of a business-key _id (id_strategy="fields").
    id_fields: tuple[str, ...] | None = None
    # A committed offset below the low watermark: "fail" (default) or "skip" (count the loss).
    on_retention_gap: str = "fail"
    lease_wait: float = 600.0
    drain: DrainSettings = DrainSettings()
    dead_letter_policy: DeadLetterPolicy = DeadLetterPolicy()
    write_mode: str = "replace"
    # Drain only these partitions (a mapped task per partition); None: all of them.
    partitions: tuple[int, ...] | None = None

    @property
    def consumer_group(self) -> str:
        return self.group_id or default_group_id(self.mongo_db, self.mongo_collection)

    @property
    def scope(self) -> str:
        """``""`` for the whole topic, ``":0,2"`` for a drain of partitions 0 and 2."""
        return "" if self.partitions is None else ":" + ",".join(map(str, sorted(self.partitions)))

    @property
    def audit_id(self) -> str:
        return f"{self.batch}{self.scope}"

    @property
    def dead_letter_collection(self) -> str:
        return f"{self.mongo_collection}{DEAD_LETTER_SUFFIX}"


def _mongo_client(mongo_conn_id: str) -> tuple[MongoClient, str]:
    """A client from ``MongoHook`` that has answered ``ping``, and the address it uses.

    A connection without its own timeouts gets 10 s ones, so an unreachable server fails the
    task in seconds rather than after pymongo's 30 s default per operation.
    """
    hook = MongoHook(mongo_conn_id=mongo_conn_id)
    connection = hook.connection
    address = f"{connection.host}:{connection.port}" if connection.port else str(connection.host)
    for option in ("serverSelectionTimeoutMS", "connectTimeoutMS"):
        hook.extras.setdefault(option, MONGO_TIMEOUT_MS)
    client = hook.get_conn()
    with mongo_errors(mongo_conn_id, address):
        client.admin.command("ping")
    return client, address


@contextlib.contextmanager
def mongo_errors(mongo_conn_id: str, address: str) -> Iterator[None]:
    """Name the connection and its address (never its credentials) when MongoDB cannot be used."""
    try:
        yield
    except (ConnectionFailure, ConfigurationError) as err:
        raise ConnectionProblem(
            f"MongoDB connection {mongo_conn_id!r} ({address}): the server did not answer; check the "
            f"host, port and extra of the connection and that the server runs ({type(err).__name__})"
        ) from err
    except OperationFailure as err:
        if err.code not in (13, 18):  # Unauthorized, AuthenticationFailed
            raise
        raise ConnectionProblem(
            f"MongoDB connection {mongo_conn_id!r} ({address}): authentication failed; check the "
            "connection's login, password and authSource"
        ) from err


def run_consume(job: ConsumeJob, produced: dict[str, Any] | None = None) -> dict[str, Any]:
    """Drain ``job.topic`` into MongoDB under the drain lease and write the run's audit document.

    Raises ``DeadLetterLimitError`` (not retried) when the run's dead letters break the policy,
    after everything was written and committed.
    """
    try:
        id_for = id_function(job.id_strategy, job.id_field, job.id_fields)
        to_document = record_builder(job.write_mode, json_document(id_for), id_for, job.id_strategy)
    except ValueError as err:
        # Options that cannot work: a retry would fail the same way.
        raise ParamsRefusedError(f"{err}. Nothing was loaded; run again with other options.") from err
    client, address = _mongo_client(job.mongo_conn_id)
    database = client[job.mongo_db]
    audit = {
        "dag_run_id": job.run_id,
        "topic": job.topic,
        "group_id": job.consumer_group,
        "target": f"{job.mongo_db}.{job.mongo_collection}",
        "dead_letter_collection": f"{job.mongo_db}.{job.dead_letter_collection}",
        "produced": produced,
    }
    try:
        with mongo_errors(job.mongo_conn_id, address), kafka_errors(job.kafka_conn_id):
            summary = _drain_under_lease(job, database, to_document)
        result = {**audit, **summary.as_dict(), "state": "success"}
        breach = job.dead_letter_policy.breach(summary.dead_letters, summary.records)
        if breach:
            result["state"] = "failed"
            result["error"] = breach
        write_audit(database[AUDIT_COLLECTION], job.audit_id, result)
        if breach:
            raise DeadLetterLimitError(
                f"{breach}. They are in {job.mongo_db}.{job.dead_letter_collection} with their "
                f"reasons ({summary.dead_letter_reasons}); everything else was loaded and all "
                "offsets are committed. Fix the producer or raise max_dead_letters, then go on."
            )
        return result
    except DeadLetterLimitError:
        raise
    except Exception as err:
        # Record the failure for the run's audit, then fail the task with the original error.
        with contextlib.suppress(PyMongoError):
            write_audit(
                database[AUDIT_COLLECTION], job.audit_id, {**audit, "state": "failed", "error": str(err)}
            )
        raise
    finally:
        client.close()


def _drain_under_lease(job: ConsumeJob, database: Database, to_document: Any) -> DrainSummary:
    # Drains of disjoint partitions do not overlap, so each partition set has its own lease.
    lease = DrainLease(
        database[LEASE_COLLECTION],
        name=f"drain:{job.topic}:{job.consumer_group}{job.scope}",
        owner=job.batch,
    )
    lease.acquire(wait=job.lease_wait)
    consumer = None
    try:
        consumer = EtlConsumerHook(job.topic, job.consumer_group, job.kafka_conn_id).get_conn
        return drain_to_watermark(
            consumer,
            job.topic,
            job.consumer_group,
            MongoSink(database[job.mongo_collection], job.write_mode),
            to_document,
            dataclasses.replace(job.drain, on_retention_gap=job.on_retention_gap),
            lease,
            MongoDeadLetterSink(database[job.dead_letter_collection], job.run_id, job.consumer_group),
            job.partitions,
        )
    finally:
        if consumer is not None:
            consumer.close()
        lease.release()
