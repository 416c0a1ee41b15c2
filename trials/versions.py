"""Several versions per key: what the chaos and fault trials produce, and the check of the final
content (issue 19: 0 lost, 0 duplicated, 0 stale).

Every key of a trial's batch (``record_key(batch, n)``, as the DAG's produce task makes them) is
produced ``versions`` times, the versions of all keys interleaved at random, each key's in
order: ``{"num": n, "batch": batch, "version": v}``. One key always lands on one partition (the
ETL's own producer and partitioner), so its last offset holds its last version, and that is
the version ``replace`` must leave in MongoDB. When the DAG's produce task writes a batch after
them (its records carry no ``version``), its record is the last version of each key.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trials.work import Work

VERSION_FIELD = "version"


def versions_for(seed: int) -> int:
    """How many versions of each key a trial produces: 2 or 3, drawn from a stream of its own."""
    return random.Random(f"versions:{seed}").choice([2, 3])


def interleaved(count: int, versions: Sequence[int], rng: random.Random) -> list[tuple[int, int]]:
    """``(num, version)`` for every num of ``range(count)`` and every version, in a random order
    in which each num's versions come in the order given."""
    nums = [n for n in range(count) for _ in versions]
    rng.shuffle(nums)
    seen: Counter[int] = Counter()
    order = []
    for n in nums:
        order.append((n, versions[seen[n]]))
        seen[n] += 1
    return order


def produce_versions(
    *,
    kafka_conn_id: str,
    topic: str,
    partitions: int,
    batch: str,
    count: int,
    versions: Sequence[int],
    seed: int,
) -> int:
    """Produce ``versions`` of every key of ``batch`` to ``topic`` (created if missing), interleaved
    as ``seed`` draws; returns the number of records. Uses the ETL's producer (idempotent, in
    order per partition, the same partitioner as the DAG's produce task)."""
    from kafka_mongo_etl.clients import EtlProducerHook, admin_client
    from kafka_mongo_etl.ids import record_key
    from kafka_mongo_etl.produce import ensure_topic

    ensure_topic(admin_client(kafka_conn_id), topic, partitions)
    producer = EtlProducerHook(kafka_config_id=kafka_conn_id).get_producer()
    failed: list[Any] = []

    def delivered(err: Any, _message: Any) -> None:
        if err is not None:
            failed.append(err)

    order = interleaved(count, versions, random.Random(f"interleave:{seed}:{batch}"))
    for n, version in order:
        value = json.dumps({"num": n, "batch": batch, VERSION_FIELD: version}).encode()
        while True:
            try:
                producer.produce(topic, key=record_key(batch, n), value=value, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(60)
    if left or failed:
        raise RuntimeError(
            f"{len(failed) + left} of {len(order)} versioned records were not delivered to {topic!r} "
            f"(first error: {failed[0] if failed else 'flush timed out'})"
        )
    return len(order)


def produce_versions_of(work: Work, last: int, seed: int) -> int:
    """Versions ``1 … last`` of every key of ``work``'s batch (nothing when ``last`` < 1); returns
    the number of records."""
    if last < 1:
        return 0
    return produce_versions(
        kafka_conn_id=work.kafka_conn_id,
        topic=work.topic,
        partitions=work.partitions,
        batch=work.batch,
        count=work.count,
        versions=list(range(1, last + 1)),
        seed=seed,
    )


def stale_query(final_version: int) -> dict[str, Any]:
    """Documents that hold a version older than the last one produced for their key (a document
    without a version holds the DAG produce task's record, which came last)."""
    return {VERSION_FIELD: {"$exists": True, "$ne": final_version}}
