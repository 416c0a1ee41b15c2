"""What one task try of a trial does: the DAG's ``produce`` or ``consume`` task, or both.

The crash trials send a ``Work`` to their child process as JSON (``chaos.child``); the fault
trials run it in their own process. Either way it calls what the DAG's tasks call
(``run_produce``, ``run_consume``), with the batch id and consumer group the DAG would use.
``kafka_mongo_etl`` is imported lazily: it is on ``sys.path`` only once Airflow has been imported
with an ``AIRFLOW_HOME`` whose ``plugins_folder`` is this repository's ``plugins/``.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any

ACTIONS = ("produce", "consume", "produce+consume")


def unique_name(prefix: str) -> str:
    """A topic or database name no other trial uses."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Work:
    """One DAG run's task work: produce ``count`` records of its batch and/or drain the topic."""

    action: str
    topic: str
    run_id: str
    count: int
    mongo_db: str
    mongo_collection: str = "records"
    start: int = 0
    partitions: int = 3
    # Small drain batches: several writes and commits per run, so the kill's call number matters.
    batch_size: int = 200
    stall_timeout: float = 10.0
    lease_wait: float = 60.0
    # Each try owns its lease, so a retry waits for its SIGKILLed try's lease to expire: keep it short.
    lease_ttl: float = 3.0
    kafka_conn_id: str = "kafka_default"
    mongo_conn_id: str = "mongo_default"
    # How many versions of each key are on the topic once the batch is produced (trials.versions).
    versions: int = 1
    # The DAG id the batch id is built from: each injector its own, so their batches never meet.
    dag_id: str = "chaos"

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; choose one of {', '.join(ACTIONS)}")

    @property
    def batch(self) -> str:
        """The batch id the DAG builds from its dag id and run id."""
        from kafka_mongo_etl.ids import batch_id

        return batch_id(self.dag_id, self.run_id)

    @property
    def group_id(self) -> str:
        """The consumer group the DAG uses for this target."""
        from kafka_mongo_etl.tasks import default_group_id

        return default_group_id(self.mongo_db, self.mongo_collection)

    def consume_job(self, **changes: Any) -> Any:
        """The ``ConsumeJob`` the DAG's ``consume`` task would run for this work; keywords override."""
        from kafka_mongo_etl.drain import DrainSettings
        from kafka_mongo_etl.tasks import ConsumeJob

        job = ConsumeJob(
            kafka_conn_id=self.kafka_conn_id,
            mongo_conn_id=self.mongo_conn_id,
            topic=self.topic,
            mongo_db=self.mongo_db,
            mongo_collection=self.mongo_collection,
            batch=self.batch,
            run_id=self.run_id,
            lease_wait=self.lease_wait,
            lease_ttl=self.lease_ttl,
            drain=DrainSettings(batch_size=self.batch_size, stall_timeout=self.stall_timeout),
        )
        return replace(job, **changes)

    def expected_ids(self) -> set[str]:
        """The ``_id`` of every record of this run's batch (the record keys)."""
        from kafka_mongo_etl.ids import record_key

        return {record_key(self.batch, n) for n in range(self.start, self.start + self.count)}

    @property
    def min_writes(self) -> int:
        """A floor on the sink writes (and offset commits) one full drain of this batch makes.

        Each write holds at most ``batch_size`` records, so a drain of ``count`` keys with
        ``versions`` records each writes at least ``ceil(count * versions / batch_size)`` times,
        and commits after each write.
        """
        return max(1, math.ceil(self.count * self.versions / self.batch_size))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Work:
        return cls(**json.loads(text))


def run_work(work: Work) -> dict[str, Any]:
    """Do the work the way the DAG's tasks do it; return their XCom summaries."""
    from kafka_mongo_etl.tasks import run_consume, run_produce

    batch = work.batch
    results: dict[str, Any] = {}
    produced = None
    if work.action in ("produce", "produce+consume"):
        produced = run_produce(
            kafka_conn_id=work.kafka_conn_id,
            topic=work.topic,
            partitions=work.partitions,
            batch=batch,
            start=work.start,
            count=work.count,
        )
        results["produce"] = produced
    if work.action in ("consume", "produce+consume"):
        results["consume"] = run_consume(work.consume_job(), produced)
    return results
