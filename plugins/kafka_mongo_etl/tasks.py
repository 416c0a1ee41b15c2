"""What the DAG's ``produce`` and ``consume`` tasks do: build clients from the connections' hooks
(``clients`` for Kafka, ``mongo_client`` for MongoDB), run the job under the drain lease, record
the try in the run's audit, close what was opened, and return a small summary for XCom."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any

import pymongo
from pymongo.database import Database
from pymongo.errors import PyMongoError

from kafka_mongo_etl.audit import AUDIT_COLLECTION, TryAudit, dead_letter_reasons_since, write_try
from kafka_mongo_etl.cdc import CdcSettings
from kafka_mongo_etl.clients import (
    KAFKA_METADATA_TIMEOUT,
    EtlConsumerHook,
    EtlProducerHook,
    admin_client,
    kafka_errors,
    kafka_label,
)
from kafka_mongo_etl.drain import DrainSummary, drain_to_watermark, partitions_of
from kafka_mongo_etl.errors import DeadLetterLimitError, DrainStalledError, ParamsRefusedError
from kafka_mongo_etl.ids import default_group_id, id_function  # noqa: F401 (re-exported)
from kafka_mongo_etl.job import ConsumeJob, DeadLetterPolicy  # noqa: F401 (re-exported)
from kafka_mongo_etl.lease import LEASE_COLLECTION, DrainLease, lease_owner, partition_leases
from kafka_mongo_etl.ledger import LEDGER_COLLECTION, OffsetLedger
from kafka_mongo_etl.mongo_client import EtlMongoHook
from kafka_mongo_etl.mongo_sink import MongoDeadLetterSink, MongoSink
from kafka_mongo_etl.options import check_options
from kafka_mongo_etl.processors import WriteHints
from kafka_mongo_etl.produce import ensure_topic, produce_batch
from kafka_mongo_etl.records import RecordBuilder
from kafka_mongo_etl.routing import RoutingSink, routed
from kafka_mongo_etl.schema_formats import registry_decoders
from kafka_mongo_etl.sigterm import stop_on_sigterm
from kafka_mongo_etl.write_models import record_path

log = logging.getLogger(__name__)

MONGO_FAILURE_AUDIT_TIMEOUT = 5.0
# Airflow's SIGKILL follows its SIGTERM within 5 s, and the drain may have waited 3 s of them.
MONGO_STOP_AUDIT_TIMEOUT = 1.0


def run_produce(
    *, kafka_conn_id: str, topic: str, partitions: int, batch: str, start: int, count: int
) -> dict[str, Any]:
    with kafka_errors(kafka_conn_id):
        ensure_topic(admin_client(kafka_conn_id), topic, partitions, timeout=KAFKA_METADATA_TIMEOUT)
        producer = EtlProducerHook(kafka_config_id=kafka_conn_id).get_producer()
        where = kafka_label(kafka_conn_id)
        return produce_batch(producer, topic, batch, start, count, where=where).as_dict()


def run_consume(job: ConsumeJob, produced: dict[str, Any] | None = None) -> dict[str, Any]:
    """Drain ``job.topic`` into MongoDB under the drain lease and record the try in the run's audit.

    Every try adds its entry to the drain's audit document (``kafka_mongo_etl.audit``), failed
    ones too, so the run's dead letters and retention losses add up over its tries. Returns the
    try's drain summary with the run's ``totals`` so far. Raises ``DeadLetterLimitError`` (not
    retried) when the try's dead letters break the policy, and ``DrainStalledError`` (retried)
    when partitions stayed below the snapshot, each after everything that was loaded was
    committed and the audit written.
    """
    check_options(vars(job), done="Nothing was loaded")
    to_document, hints = _record_builder(job)
    hook = EtlMongoHook(job.mongo_conn_id)
    database = hook.get_conn()[job.mongo_db]
    audit = {
        "dag_run_id": job.run_id,
        "topic": job.topic,
        "group_id": job.consumer_group,
        "target": f"{job.mongo_db}.{job.mongo_collection}",
        "dead_letter_collection": f"{job.mongo_db}.{job.dead_letter_collection}",
        "produced": produced,
    }
    this_try = TryAudit.begin(_try_number())
    try:
        with hook.errors(), kafka_errors(job.kafka_conn_id):
            summary = _drain_under_lease(job, database, to_document, hook.label, hints)
        result = {**audit, **summary.as_dict(), "state": "success"}
        breach = job.dead_letter_policy.breach(summary.dead_letters, summary.records)
        stall = _stall_problem(job, summary)
        if breach or stall:
            result["state"] = "failed"
            result["error"] = "; ".join(problem for problem in (breach, stall) if problem)
        this_try.state, this_try.error = result["state"], result.get("error")
        this_try.summary = summary.as_dict()
        with hook.errors():
            result["totals"] = write_try(database[AUDIT_COLLECTION], job.audit_id, audit, this_try)["totals"]
        if breach:
            raise DeadLetterLimitError(
                f"{breach}. They are in {job.mongo_db}.{job.dead_letter_collection} with their "
                f"reasons ({summary.dead_letter_reasons}); everything else was loaded and all "
                "offsets are committed. Fix the producer or raise max_dead_letters, then go on."
                + (f" Also: {stall}" if stall else "")
            )
        if stall:
            raise DrainStalledError(stall)
        return result
    except (DeadLetterLimitError, DrainStalledError):
        raise
    except BaseException as err:
        # Record the failure in the run's audit, then fail the task with the original error.
        _audit_failure(job, database, audit, this_try, err)
        raise
    finally:
        hook.close()


def _record_builder(job: ConsumeJob) -> tuple[RecordBuilder, WriteHints]:
    """The job's record → document function (processors and routing included) and what the
    processors ask of the writes; options that cannot work raise ``ParamsRefusedError``."""
    try:
        values, keys = registry_decoders(job.value_format, job.key_format, job.schema_registry_conn_id)
        to_document, hints = record_path(
            job.write_mode,
            job.id_strategy,
            job.id_field,
            job.id_fields,
            job.processors,
            CdcSettings(keep_source=job.cdc_keep_source, times=job.cdc_times),
            values,
            keys,
        )
        if job.route_by:
            to_document = routed(to_document, job.route_by, job.mongo_db, keys)
    except ValueError as err:
        # Options that cannot work: a retry would fail the same way.
        raise ParamsRefusedError(f"{err}. Nothing was loaded; run again with other options.") from err
    return to_document, hints


def _audit_failure(
    job: ConsumeJob, database: Database, audit: dict[str, Any], this_try: TryAudit, err: BaseException
) -> None:
    """Add the failed try to the run's audit, with the dead letters it wrote before it failed.

    Bounded, and never raising: when MongoDB is what failed, this write would wait a whole
    timeoutMS again; a stop (SIGTERM, the execution timeout) has seconds before Airflow kills
    the process.
    """
    bound = MONGO_FAILURE_AUDIT_TIMEOUT if isinstance(err, Exception) else MONGO_STOP_AUDIT_TIMEOUT
    this_try.state, this_try.error = "failed", str(err) or type(err).__name__
    with contextlib.suppress(PyMongoError), pymongo.timeout(bound):
        if this_try.summary is None:
            this_try.dead_letter_reasons = dead_letter_reasons_since(
                database[job.dead_letter_collection],
                run_id=job.run_id,
                group_id=job.consumer_group,
                topic=job.topic,
                since=this_try.started_at,
                partitions=job.partitions,
            )
        write_try(database[AUDIT_COLLECTION], job.audit_id, audit, this_try)


def _stall_problem(job: ConsumeJob, summary: DrainSummary) -> str | None:
    """What to say when the drain stopped with partitions below their snapshot (``None``: it did not)."""
    if not summary.stalled:
        return None
    where = ", ".join(
        f"p{p} at offset {offset} of {summary.partitions[p].end}"
        for p, offset in sorted(summary.stalled.items())
    )
    return (
        f"{kafka_label(job.kafka_conn_id)}: partitions stayed below the snapshot for "
        f"{job.drain.stall_timeout:.0f}s without progress ({where}); the broker was unreachable or a "
        "transaction on the topic stayed open. Everything before those offsets is loaded and "
        "committed; the task's retry continues from there."
    )


def _try_number() -> int | None:
    """The Airflow task try this runs in (``None`` outside a task)."""
    from airflow.sdk import get_current_context

    try:
        return get_current_context()["ti"].try_number
    except (RuntimeError, KeyError, AttributeError):
        return None


def _drain_under_lease(
    job: ConsumeJob, database: Database, to_document: Any, mongo_label: str, hints: WriteHints | None = None
) -> DrainSummary:
    """The drain, under the leases of every partition it drains (``lease.partition_leases``).

    A whole-topic drain lists the topic's partitions first, takes all their leases, and then
    drains exactly those (a partition added meanwhile waits for the next run): so it excludes
    the per-partition drains of the same group, and they exclude it, whatever ``parallelism``
    each run uses.
    """
    with stop_on_sigterm():
        consumer = None
        try:
            consumer = EtlConsumerHook(job.topic, job.consumer_group, job.kafka_conn_id).get_conn
            partitions = (
                sorted(set(job.partitions))
                if job.partitions is not None
                else partitions_of(consumer, job.topic, KAFKA_METADATA_TIMEOUT)
            )
            lease = DrainLease(
                database[LEASE_COLLECTION],
                partition_leases(job.topic, job.consumer_group, partitions),
                owner=lease_owner(job.run_id, _try_number()),
                ttl=job.lease_ttl,
                where=mongo_label,
            )
            with lease.held(wait=job.lease_wait):
                return drain_to_watermark(
                    consumer,
                    job.topic,
                    job.consumer_group,
                    (
                        RoutingSink(database, job.mongo_collection, job.write_mode, hints)
                        if job.route_by
                        else MongoSink(database[job.mongo_collection], job.write_mode, hints)
                    ),
                    to_document,
                    dataclasses.replace(job.drain, on_retention_gap=job.on_retention_gap),
                    lease,
                    MongoDeadLetterSink(database[job.dead_letter_collection], job.run_id, job.consumer_group),
                    partitions,
                    OffsetLedger(database[LEDGER_COLLECTION], job.topic, job.consumer_group),
                )
        finally:
            if consumer is not None:
                consumer.close()
