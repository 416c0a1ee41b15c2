"""Kafka clients from the provider's hooks, with the settings this ETL depends on.

The connection's extra (``bootstrap.servers``, security settings, tuning) comes first; the
settings the guarantees rest on are applied on top and cannot be switched off by a connection.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from airflow.providers.apache.kafka.hooks.client import KafkaAdminClientHook
from airflow.providers.apache.kafka.hooks.consume import KafkaConsumerHook
from airflow.providers.apache.kafka.hooks.produce import KafkaProducerHook
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from kafka_mongo_etl.errors import ConnectionProblem

log = logging.getLogger(__name__)

# How long a metadata request (creating a topic, listing its partitions) may wait for the broker.
KAFKA_METADATA_TIMEOUT = 15.0

# Every client's first connection: librdkafka drops its bootstrap connection as soon as the
# first metadata names the brokers, and connects to a named broker no sooner than half of
# reconnect.backoff.ms later (100 ms by default: 50 ms of every new client's start, measured
# with debug=broker). Later reconnects still back off exponentially, up to 10 s.
CONNECT_TUNING: dict[str, Any] = {"reconnect.backoff.ms": 20}
# Throughput defaults a connection may override.
PRODUCER_TUNING: dict[str, Any] = {
    **CONNECT_TUNING,
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 500_000,
    # Only failures call the delivery callback: successes are the flush() returning 0.
    "delivery.report.only.error": True,
    # How long a record may wait for its acknowledgement (librdkafka's default is 300 s): with the
    # broker gone, the first record fails after this long and produce stops at that first error,
    # so the task fails about this long after an outage; a blip shorter than this is ridden out.
    "message.timeout.ms": 30_000,
}
# What the produce guarantee rests on: no duplicates or reordering from internal retries.
PRODUCER_REQUIRED: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}

CONSUMER_TUNING: dict[str, Any] = {
    **CONNECT_TUNING,
    "fetch.min.bytes": 1,
    "fetch.wait.max.ms": 100,
    # Enough prefetch to keep the drain busy; 100,000 grew peak memory with the topic's size.
    "queued.min.messages": 10_000,
    # How long librdkafka waits before fetching again for a partition whose queue was above
    # queued.min.messages. Its default, 1000 ms, capped a plain consume loop of 6 partitions at
    # about 90,000 records/s (the queue empties in a fraction of that second, then the fetcher
    # sleeps out the rest) and the drain of a large topic with it; 10 ms: 0.75-1.5 M/s plain,
    # the drain 1.5-1.9x faster on 1,000,000 records (bench scale section, docs in bench/).
    "fetch.queue.backoff.ms": 10,
    # One fetch brings at most this much per partition (librdkafka's default is 1 MiB, still
    # at least one record batch). At 1 MiB, with prompt fetches, the prefetch of small records
    # held about 35 MB more at the peak than at 256 KiB and 20 MB more than at 512 KiB (50-byte
    # records, 6 partitions); 256 KiB cost a drain of 20,000 records 4 % (a second fetch per
    # partition), 512 KiB nothing measurable. Peak memory should follow the batch, not fetches.
    "max.partition.fetch.bytes": 524_288,
}
# What the drain's guarantees rest on; a connection's extra cannot change them.
CONSUMER_REQUIRED: dict[str, Any] = {
    # Offsets are committed by hand, only after MongoDB acknowledged the write.
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # Records of aborted (or still open) transactions are never loaded.
    "isolation.level": "read_committed",
    # The drain assigns every partition an explicit start offset (drain.start_offsets, which
    # handles a committed offset outside the log). A fetch position that falls out of range
    # later (retention deleting records during the drain) must fail the drain rather than jump
    # silently past the deleted records: its retry then meets them in start_offsets.
    "auto.offset.reset": "error",
    # An end-of-partition event says how far the fetcher has read; the drain needs it to see
    # that records of an aborted transaction below the snapshot are behind it even while
    # position() stays on them (drain.Drain._end_of_partition; docs/leases-and-offsets.md).
    "enable.partition.eof": True,
}


def on_client_error(err: KafkaError) -> None:
    """librdkafka's error callback: fatal and authentication errors fail the task, others are logged.

    An exception raised here surfaces from the ``poll``/``consume``/``flush`` call that served it.
    """
    if err.fatal() or err.code() in (
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    ):
        raise KafkaException(err)
    log.warning("Kafka client: %s", err)


class EtlProducerHook(KafkaProducerHook):
    """A producer from the connection, made idempotent and tuned for batches."""

    def _get_client(self, config: dict[str, Any]) -> Producer:
        return Producer({"error_cb": on_client_error, **PRODUCER_TUNING, **config, **PRODUCER_REQUIRED})


class EtlConsumerHook(KafkaConsumerHook):
    """A consumer from the connection for ``group_id``, with manual commits.

    Use ``get_conn`` and ``assign()``: the drain never subscribes, so it joins no rebalance.
    """

    def __init__(self, topic: str, group_id: str, kafka_config_id: str = "kafka_default") -> None:
        super().__init__(topics=[topic], kafka_config_id=kafka_config_id)
        self.group_id = group_id

    def _get_client(self, config: dict[str, Any]) -> Consumer:
        return super()._get_client(
            {
                "error_cb": on_client_error,
                **CONSUMER_TUNING,
                **config,
                **CONSUMER_REQUIRED,
                "group.id": self.group_id,
            }
        )


class EtlAdminClientHook(KafkaAdminClientHook):
    """An admin client from the connection whose errors surface (a refused login, say)."""

    def _get_client(self, config: dict[str, Any]) -> AdminClient:
        return AdminClient({"error_cb": on_client_error, **CONNECT_TUNING, **config})


def admin_client(kafka_config_id: str) -> AdminClient:
    return EtlAdminClientHook(kafka_config_id=kafka_config_id).get_conn


_UNREACHABLE = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT,
    KafkaError._RESOLVE,
    KafkaError._MSG_TIMED_OUT,
    # A synchronous commit with no group coordinator to send it to (the broker went away).
    KafkaError._WAIT_COORD,
}
_AUTH = {
    KafkaError._AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError._SSL,
}


def _bootstrap_servers(kafka_config_id: str) -> str:
    extra = KafkaAdminClientHook(kafka_config_id=kafka_config_id).get_connection(kafka_config_id).extra_dejson
    return str(extra.get("bootstrap.servers") or "no bootstrap.servers")


def kafka_label(kafka_config_id: str) -> str:
    """How messages name a Kafka connection: its id and bootstrap servers, never the rest of its
    extra (which may hold credentials)."""
    return f"Kafka connection {kafka_config_id!r} ({_bootstrap_servers(kafka_config_id)})"


@contextlib.contextmanager
def kafka_errors(kafka_config_id: str) -> Iterator[None]:
    """Turn client errors into a ``ConnectionProblem`` naming the connection and what to check.

    Only the connection id and its bootstrap servers are named: never the extra, which may hold
    credentials.
    """
    try:
        yield
    except KafkaException as err:
        error = err.args[0] if err.args and isinstance(err.args[0], KafkaError) else None
        code = error.code() if error is not None else None
        if code in _UNREACHABLE:
            hint = "no broker answered: check bootstrap.servers, the network and that the broker runs"
        elif code in _AUTH:
            hint = "the broker refused the client: check security.protocol, sasl.* and ssl.* settings"
        else:
            raise
        detail = error.str() if error is not None else str(err)
        raise ConnectionProblem(f"{kafka_label(kafka_config_id)}: {hint} ({detail})") from err
    except ValueError as err:
        if "bootstrap.servers" not in str(err):
            raise
        raise ConnectionProblem(
            f"Kafka connection {kafka_config_id!r} has no bootstrap.servers in its extra; set it, "
            'for example {"bootstrap.servers": "broker:9092"}'
        ) from err
