"""How a run splits its drain: one task for the whole topic, or one mapped task per partition.

Each drain holds one lease per partition it drains (``lease.partition_leases``; a whole-topic
drain takes them all), so the mapped drains of one run run side by side, while any two drains
of the same partition — per partition or whole topic, from any run — take turns.
"""

from __future__ import annotations

from collections.abc import Iterable

ONE_TASK = "one task"
PER_PARTITION = "per partition"
PARALLELISM = (ONE_TASK, PER_PARTITION)


def drain_scopes(parallelism: str, partitions: Iterable[int] = ()) -> list[list[int] | None]:
    """The ``partitions`` argument of each drain: ``[None]`` (all) or one list per partition."""
    if parallelism == ONE_TASK:
        return [None]
    if parallelism == PER_PARTITION:
        scopes: list[list[int] | None] = [[p] for p in sorted(set(partitions))]
        if not scopes:
            raise ValueError("a drain per partition needs the topic's partitions; none were given")
        return scopes
    raise ValueError(
        f"unknown parallelism {parallelism!r}; choose one of {', '.join(map(repr, PARALLELISM))}"
    )


def topic_partitions(kafka_conn_id: str, topic: str, timeout: float = 15.0) -> list[int]:
    """The partition ids of ``topic``, read from the broker through the connection;
    ``TopicNotFoundError`` if it has none (``offsets.partitions_of``)."""
    from kafka_mongo_etl.clients import admin_client, kafka_errors
    from kafka_mongo_etl.offsets import partitions_of

    with kafka_errors(kafka_conn_id):
        return partitions_of(admin_client(kafka_conn_id), topic, timeout)
