"""What one drain is asked to do: ``ConsumeJob``, its dead-letter policy, and how the load
options (``kafka_mongo_etl.options``) become a job.

Imports the drain's settings, so it loads the client libraries: DAG files do not import it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kafka_mongo_etl.drain import DrainSettings
from kafka_mongo_etl.ids import default_group_id
from kafka_mongo_etl.lease import LEASE_TTL
from kafka_mongo_etl.options import DEAD_LETTER_SUFFIX, job_values


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
    """One drain of ``topic`` into ``mongo_db.mongo_collection``. The defaults of the fields a
    load option sets are the options' (``kafka_mongo_etl.options.LOAD_OPTIONS``); build a job
    from options with ``consume_job``."""

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
    lease_ttl: float = LEASE_TTL
    drain: DrainSettings = DrainSettings()
    dead_letter_policy: DeadLetterPolicy = DeadLetterPolicy()
    write_mode: str = "replace"
    # Drain only these partitions (a mapped task per partition); None: all of them.
    partitions: tuple[int, ...] | None = None
    # Route each record to the collection a field of its key or value names (routing.py).
    route_by: str | None = None
    # The post-processors' specs (kafka_mongo_etl.processors), in order; None: none.
    processors: tuple[Any, ...] | None = None
    # write_mode cdc: the sub-millisecond time types (cdc.TIME_MODES), and whether _cdc is kept.
    cdc_times: str = "exact"
    cdc_keep_source: bool = True
    # How record values are encoded (schema_formats): "json", or a Schema Registry format whose
    # registry is the Airflow connection schema_registry_conn_id.
    value_format: str = "json"
    # How record keys are encoded (schema_formats), for the key _id, key routing and key processors.
    key_format: str = "json"
    schema_registry_conn_id: str = "schema_registry_default"

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


def consume_job(
    options: Mapping[str, Any],
    *,
    kafka_conn_id: str,
    mongo_conn_id: str,
    batch: str,
    run_id: str,
    partitions: Sequence[int] | None = None,
    job_options: Mapping[str, Any] | None = None,
) -> ConsumeJob:
    """The job for the load ``options`` (by option name; missing ones take their default), the
    connections and the run. ``job_options`` sets further ``ConsumeJob`` fields by name, as given;
    a field that a load option sets must be passed as that option instead."""
    job_class = ConsumeJob  # looked up at call time: a test may stand in a subclass
    named = job_values(options)
    defaults = {field.name: field.default for field in dataclasses.fields(job_class)}
    for nested in [name for name, value in named.items() if isinstance(value, dict)]:
        # A dotted job_field ("drain.batch_size") sets one field of the nested settings.
        named[nested] = dataclasses.replace(defaults[nested], **named[nested])
    named.update(
        kafka_conn_id=kafka_conn_id,
        mongo_conn_id=mongo_conn_id,
        batch=batch,
        run_id=run_id,
        partitions=None if partitions is None else tuple(int(p) for p in partitions),
    )
    extra = dict(job_options or {})
    unknown = sorted(set(extra) - set(defaults))
    if unknown:
        raise ValueError(
            f"job_options {unknown} are not ConsumeJob fields; the fields are {', '.join(sorted(defaults))}"
        )
    shadowed = sorted(set(extra) & set(named))
    if shadowed:
        raise ValueError(f"pass {shadowed} as operator arguments, not in job_options")
    return job_class(**named, **extra)
