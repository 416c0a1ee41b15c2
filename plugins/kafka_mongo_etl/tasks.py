"""What the DAG's ``produce`` and ``consume`` tasks do: build clients from the connections,
run the job, close what was opened, return a small summary for XCom."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pymongo
from airflow.providers.mongo.hooks.mongo import MongoHook
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
)

from kafka_mongo_etl.audit import AUDIT_COLLECTION, TryAudit, dead_letter_reasons_since, write_try
from kafka_mongo_etl.clients import (
    EtlConsumerHook,
    EtlProducerHook,
    _bootstrap_servers,
    admin_client,
    kafka_errors,
)
from kafka_mongo_etl.drain import DrainSummary, drain_to_watermark, partitions_of
from kafka_mongo_etl.errors import (
    ConnectionProblem,
    DeadLetterLimitError,
    DrainStalledError,
    ParamsRefusedError,
    StopRequested,
)
from kafka_mongo_etl.ids import default_group_id, id_function  # noqa: F401 (re-exported)
from kafka_mongo_etl.job import ConsumeJob, DeadLetterPolicy  # noqa: F401 (re-exported)
from kafka_mongo_etl.lease import DrainLease, lease_owner, partition_leases
from kafka_mongo_etl.ledger import LEDGER_COLLECTION, OffsetLedger
from kafka_mongo_etl.mongo_sink import MongoDeadLetterSink, MongoSink
from kafka_mongo_etl.options import check_options
from kafka_mongo_etl.produce import ensure_topic, produce_batch
from kafka_mongo_etl.records import json_document
from kafka_mongo_etl.routing import RoutingSink, routed
from kafka_mongo_etl.write_models import record_builder

log = logging.getLogger(__name__)

LEASE_COLLECTION = "etl_leases"
KAFKA_METADATA_TIMEOUT = 15.0
MONGO_TIMEOUT_MS = 10_000
# Every MongoDB operation (pymongo's timeoutMS: the whole bulk write, retries included) is
# bounded by this unless the connection's extra sets its own: several times what a 5,000-record
# batch takes on the slow MongoDB-wire server here, and far below the task's execution timeout.
MONGO_OPERATION_TIMEOUT_MS = 20_000
MONGO_CLOSE_TIMEOUT = 2.0
MONGO_FAILURE_AUDIT_TIMEOUT = 5.0
# Airflow's SIGKILL follows its SIGTERM within 5 s, and the drain may have waited 3 s of them.
MONGO_STOP_AUDIT_TIMEOUT = 1.0
# Acknowledged by a majority of the replica set and journaled before an offset is committed: a
# failover cannot roll back a write whose offset is committed (w:1 could, and no retry would
# re-read it). A connection may lower it in its extra ("w": 1, "journal": false) knowingly.
MONGO_WRITE_CONCERN: dict[str, Any] = {"w": "majority", "journal": True}


def run_produce(
    *, kafka_conn_id: str, topic: str, partitions: int, batch: str, start: int, count: int
) -> dict[str, Any]:
    with kafka_errors(kafka_conn_id):
        ensure_topic(admin_client(kafka_conn_id), topic, partitions, timeout=KAFKA_METADATA_TIMEOUT)
        producer = EtlProducerHook(kafka_config_id=kafka_conn_id).get_producer()
        where = f"Kafka connection {kafka_conn_id!r} ({_bootstrap_servers(kafka_conn_id)})"
        return produce_batch(producer, topic, batch, start, count, where=where).as_dict()


def _has_option(extras: dict[str, Any], *names: str) -> bool:
    """pymongo reads option names case-insensitively; so does this check."""
    wanted = {name.lower() for name in names}
    return any(key.lower() in wanted for key in extras)


def _option(extras: dict[str, Any], name: str) -> Any:
    return next((value for key, value in extras.items() if key.lower() == name.lower()), None)


def _mongo_client(mongo_conn_id: str) -> tuple[MongoClient, str]:
    """A client from ``MongoHook`` that has answered ``ping``, and the address it uses.

    What the connection's extra does not set gets a default: server selection and connect
    timeouts of 10 s (an unreachable server fails the task in seconds), an operation timeout
    (``timeoutMS``) of 20 s, so a server that stops answering mid-write fails the task instead of
    hanging until its execution timeout, and write concern ``majority`` with journal. An
    unacknowledged write concern (``w: 0``) is refused: offsets are committed only after
    acknowledged writes.
    """
    hook = MongoHook(mongo_conn_id=mongo_conn_id)
    connection = hook.connection
    address = f"{connection.host}:{connection.port}" if connection.port else str(connection.host)
    extras = hook.extras
    for option in ("serverSelectionTimeoutMS", "connectTimeoutMS"):
        if not _has_option(extras, option):
            extras[option] = MONGO_TIMEOUT_MS
    if not _has_option(extras, "timeoutMS"):
        extras["timeoutMS"] = MONGO_OPERATION_TIMEOUT_MS
    w = _option(extras, "w")
    if str(w) == "0":
        raise ConnectionProblem(
            f"MongoDB connection {mongo_conn_id!r} ({address}) sets w=0 (unacknowledged writes) in its "
            "extra: offsets are committed only after MongoDB acknowledged the write, so remove it "
            '(the default is "majority") or set "w": 1'
        )
    if w is None:
        extras["w"] = MONGO_WRITE_CONCERN["w"]
    if not _has_option(extras, "journal", "fsync"):
        extras["journal"] = MONGO_WRITE_CONCERN["journal"]
    with mongo_errors(mongo_conn_id, address):
        client = hook.get_conn()
        try:
            # With timeoutMS set, pymongo waits that long for a server to select; the first
            # contact keeps the shorter server-selection bound: an unreachable server fails fast.
            with pymongo.timeout(float(_option(extras, "serverSelectionTimeoutMS")) / 1000):
                client.admin.command("ping")
        except BaseException:
            close_client(client)
            raise
    log.info(
        "MongoDB connection %s (%s): write concern %s, operation timeout %s s",
        mongo_conn_id,
        address,
        client.write_concern.document,
        client.options.timeout,
    )
    return client, address


def close_client(client: MongoClient) -> None:
    """``client.close()``, bounded: closing sends ``endSessions``, which waits without any
    timeout for a server that stopped answering (a stuck disk, a black-holed network)."""
    with pymongo.timeout(MONGO_CLOSE_TIMEOUT):
        client.close()


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0][:300] if str(err) else type(err).__name__


@contextlib.contextmanager
def mongo_errors(mongo_conn_id: str, address: str) -> Iterator[None]:
    """Name the connection and its address (never its credentials) when MongoDB cannot be used.

    An unreachable server, an operation that got no answer within the operation timeout, a
    connection that broke mid-operation, a write concern the server could not satisfy and a
    refused login each become a ``ConnectionProblem`` that says what to check.
    """
    where = f"MongoDB connection {mongo_conn_id!r} ({address})"
    unacknowledged = "Nothing was committed for the batch it was writing: the task's retry reads it again."
    try:
        yield
    except ServerSelectionTimeoutError as err:
        raise ConnectionProblem(
            f"{where}: the server did not answer; check the host, port and extra of the connection "
            f"and that the server runs ({type(err).__name__})"
        ) from err
    except (BulkWriteError, WriteConcernError) as err:
        details = getattr(err, "details", None) or {}
        concern_errors = details.get("writeConcernErrors") or (
            [details] if isinstance(err, WriteConcernError) else []
        )
        if err.timeout:
            raise ConnectionProblem(
                f"{where}: a write got no answer within the operation timeout ({_first_line(err)}). "
                f"{unacknowledged} Raise timeoutMS in the connection's extra if the server is only slow."
            ) from err
        if not concern_errors:
            raise
        reason = concern_errors[0].get("errmsg", _first_line(err))
        raise ConnectionProblem(
            f"{where}: the server could not confirm the write concern ({reason}). {unacknowledged} "
            'If the deployment cannot acknowledge "majority" (a standalone server), set "w": 1 in the '
            "connection's extra, knowing that a failover may then roll back committed writes."
        ) from err
    except ConnectionFailure as err:
        if err.timeout:
            raise ConnectionProblem(
                f"{where}: an operation got no answer within the operation timeout "
                f"({_first_line(err)}). {unacknowledged} Check the server's load and the network; "
                "raise timeoutMS in the connection's extra if the server is only slow."
            ) from err
        raise ConnectionProblem(
            f"{where}: the connection failed mid-operation ({type(err).__name__}: {_first_line(err)}). "
            f"{unacknowledged} Check the server and the network."
        ) from err
    except ConfigurationError as err:
        raise ConnectionProblem(
            # The message is not quoted: it may echo a value of the extra.
            f"{where}: the connection's settings are not usable ({type(err).__name__}); check its "
            "host, port and extra"
        ) from err
    except OperationFailure as err:
        if err.timeout:
            raise ConnectionProblem(
                f"{where}: an operation ran out of time on the server ({_first_line(err)}). "
                f"{unacknowledged} Raise timeoutMS in the connection's extra if the server is only slow."
            ) from err
        if err.code not in (13, 18):  # Unauthorized, AuthenticationFailed
            raise
        raise ConnectionProblem(
            f"{where}: authentication failed; check the connection's login, password and authSource"
        ) from err


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
    try:
        id_for = id_function(job.id_strategy, job.id_field, job.id_fields)
        to_document = record_builder(job.write_mode, json_document(id_for), id_for, job.id_strategy)
        if job.route_by:
            to_document = routed(to_document, job.route_by, job.mongo_db)
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
    this_try = TryAudit.begin(_try_number())
    try:
        with mongo_errors(job.mongo_conn_id, address), kafka_errors(job.kafka_conn_id):
            summary = _drain_under_lease(job, database, to_document, address)
        result = {**audit, **summary.as_dict(), "state": "success"}
        breach = job.dead_letter_policy.breach(summary.dead_letters, summary.records)
        stall = _stall_problem(job, summary)
        if breach or stall:
            result["state"] = "failed"
            result["error"] = "; ".join(problem for problem in (breach, stall) if problem)
        this_try.state, this_try.error = result["state"], result.get("error")
        this_try.summary = summary.as_dict()
        with mongo_errors(job.mongo_conn_id, address):
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
        close_client(client)


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
        f"Kafka connection {job.kafka_conn_id!r} ({_bootstrap_servers(job.kafka_conn_id)}): partitions "
        f"stayed below the snapshot for {job.drain.stall_timeout:.0f}s without progress ({where}); the "
        "broker was unreachable or a transaction on the topic stayed open. Everything before those "
        "offsets is loaded and committed; the task's retry continues from there."
    )


def _try_number() -> int | None:
    """The Airflow task try this runs in (``None`` outside a task)."""
    from airflow.sdk import get_current_context

    try:
        return get_current_context()["ti"].try_number
    except (RuntimeError, KeyError, AttributeError):
        return None


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``StopRequested`` in the main thread.

    Airflow's supervisor sends SIGTERM for "mark failed", a task the server no longer knows and a
    worker shutdown; the task runner answers it only by calling the operator's ``on_kill``, and
    SIGKILL follows five seconds later, so a drain blocked in a socket read would not notice.
    (The execution timeout is the runner's SIGALRM, which raises ``AirflowTaskTimeout`` itself.)
    The handler calls the previous one first (so ``on_kill`` still runs), then raises: a blocking
    read is interrupted (PEP 475) and the drain unwinds through its ``finally`` blocks without
    committing anything it had not written. Outside the main thread, or when SIGTERM is ignored,
    it does nothing.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous == signal.SIG_IGN:
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        if callable(previous):
            previous(signum, frame)
        raise StopRequested(
            "Airflow asked this try to stop (SIGTERM: 'mark failed', a task the server no longer "
            "knows, or a worker shutdown); it stopped before committing anything it had not written"
        )

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _drain_under_lease(job: ConsumeJob, database: Database, to_document: Any, address: str) -> DrainSummary:
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
                where=f"MongoDB connection {job.mongo_conn_id!r} ({address})",
            )
            with lease.held(wait=job.lease_wait):
                return drain_to_watermark(
                    consumer,
                    job.topic,
                    job.consumer_group,
                    (
                        RoutingSink(database, job.mongo_collection, job.write_mode)
                        if job.route_by
                        else MongoSink(database[job.mongo_collection], job.write_mode)
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
