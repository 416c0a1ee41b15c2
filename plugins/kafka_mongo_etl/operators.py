"""Airflow operators for the ETL: produce a numbered batch, and drain a topic into MongoDB.

Both follow the shape of Airflow's transfer operators: ``template_fields`` for what a user
templates (topic, database, collection, connection ids), an ``__init__`` that only stores its
arguments, and an ``execute`` that calls the library (``kafka_mongo_etl.tasks``), where the
clients are built from the provider hooks. They return the same XCom summaries as the
``kafka_to_mongo`` DAG's tasks always did, and report what they read and wrote as Airflow asset
events and OpenLineage datasets (see ``kafka_mongo_etl.lineage``).

The library is imported when a task runs, not when a DAG file is parsed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from airflow.sdk import AssetAlias, BaseOperator

from kafka_mongo_etl.lineage import Lineage, loads_alias, produced_alias

if TYPE_CHECKING:
    from airflow.sdk import Context

    from kafka_mongo_etl.tasks import ConsumeJob

log = logging.getLogger(__name__)


def _batch(context: Context, batch: str | None) -> str:
    from kafka_mongo_etl.ids import batch_id

    return batch or batch_id(context["dag"].dag_id, context["run_id"])


def _emit(context: Context, outlets: Sequence[Any], uris: Sequence[str], extra: dict[str, Any]) -> None:
    """Attach the concrete assets to every asset alias among ``outlets``: Airflow records one event
    per asset once the task has succeeded (and creates the asset the first time)."""
    aliases = [outlet for outlet in outlets if isinstance(outlet, AssetAlias)]
    for alias in aliases:
        for asset in Lineage().assets(tuple(uris)):
            context["outlet_events"][alias].add(asset, extra=extra)
    if aliases:
        log.info("Asset events for %s through %s", ", ".join(uris), ", ".join(a.name for a in aliases))


class ProduceNumberedBatchOperator(BaseOperator):
    """Send ``count`` records ``{"num": n, "batch": <batch>}`` for n in ``start … start+count−1``.

    Ensures the topic exists (``partitions`` partitions when it creates it), keys every record
    ``<batch>/<n>`` so that a retry re-sends the same keys, and fails naming how many records were
    not acknowledged. ``batch`` defaults to ``<dag_id>/<run_id>``. Numbers may be templated
    (``"{{ params.count }}"``); they are read as integers. Returns the produce summary.
    """

    template_fields: Sequence[str] = ("topic", "kafka_conn_id", "count", "start", "partitions", "batch")
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        topic: str,
        count: int | str,
        start: int | str = 0,
        partitions: int | str = 3,
        kafka_conn_id: str = "kafka_default",
        batch: str | None = None,
        **kwargs: Any,
    ) -> None:
        # Without outlets of its own, the task reports its topic through the toolkit's alias.
        if kwargs.get("outlets") is None:
            kwargs["outlets"] = [produced_alias()]
        super().__init__(**kwargs)
        self.topic = topic
        self.count = count
        self.start = start
        self.partitions = partitions
        self.kafka_conn_id = kafka_conn_id
        self.batch = batch
        self._lineage: Lineage | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        from kafka_mongo_etl.lineage import kafka_topic_uri
        from kafka_mongo_etl.tasks import run_produce

        summary = run_produce(
            kafka_conn_id=self.kafka_conn_id,
            topic=self.topic,
            partitions=int(self.partitions),
            batch=_batch(context, self.batch),
            start=int(self.start),
            count=int(self.count),
        )
        self._lineage = Lineage(outputs=(kafka_topic_uri(self.kafka_conn_id, self.topic),))
        _emit(
            context,
            self.outlets,
            self._lineage.outputs,
            {"batch": summary["batch"], "count": summary["count"]},
        )
        return summary

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The topic as the output dataset (needs the OpenLineage provider, imported only here)."""
        return self._lineage.openlineage() if self._lineage is not None else None


class KafkaToMongoOperator(BaseOperator):
    """Drain ``topic`` up to the high watermarks seen at start into ``mongo_db.mongo_collection``.

    Exactly once in effect: offsets are committed only after MongoDB acknowledged the writes,
    every ``_id`` is deterministic, and one drain per topic, consumer group and set of partitions
    runs at a time (a lease in ``<mongo_db>.etl_leases``). Records that cannot be loaded go to
    ``<mongo_collection>_dlq``; more than the dead-letter limits fail the task, without a retry,
    after everything else is loaded. Writes the run's audit to ``<mongo_db>.etl_runs`` and
    returns the drain summary.

    The options are ``kafka_mongo_etl.tasks.ConsumeJob``'s, and default as it does:

    :param group_id: consumer group; default ``kafka_to_mongo.<mongo_db>.<mongo_collection>``.
    :param partitions: drain only these partitions (``None``: all); a mapped task per partition
        passes one each (``KafkaToMongoOperator.partial(...).expand(partitions=...)``).
    :param id_strategy: ``key`` (record key), ``coordinates`` (topic:partition:offset) or ``field``.
    :param id_field: the value field used as ``_id`` with ``id_strategy="field"``.
    :param write_mode: ``replace`` (upsert, the latest version wins) or ``insert`` (skip existing).
    :param stall_timeout: seconds to wait on a partition held below its snapshot before stopping.
    :param batch_size: records per bulk write and offset commit.
    :param max_dead_letters: dead letters allowed per run (``None``: no count limit).
    :param max_dead_letter_ratio: share of the drained records allowed as dead letters.
    :param lease_wait: seconds to wait for another drain of the same partitions to finish.
    :param job_options: further ``ConsumeJob`` fields by name, passed as they are.
    :param produced: the upstream produce summary (an XCom), kept in the audit document.
    :param batch: the audit id and lease owner; default ``<dag_id>/<run_id>``.
    """

    template_fields: Sequence[str] = (
        "topic",
        "mongo_db",
        "mongo_collection",
        "kafka_conn_id",
        "mongo_conn_id",
        "group_id",
        "batch",
        "produced",
    )
    ui_color = "#e3f4e8"

    def __init__(
        self,
        *,
        topic: str,
        mongo_db: str,
        mongo_collection: str,
        kafka_conn_id: str = "kafka_default",
        mongo_conn_id: str = "mongo_default",
        group_id: str | None = None,
        partitions: Sequence[int] | None = None,
        id_strategy: str = "key",
        id_field: str | None = None,
        write_mode: str = "replace",
        stall_timeout: float = 30.0,
        batch_size: int = 5_000,
        max_dead_letters: int | None = 0,
        max_dead_letter_ratio: float | None = None,
        lease_wait: float = 600.0,
        job_options: Mapping[str, Any] | None = None,
        produced: dict[str, Any] | None = None,
        batch: str | None = None,
        **kwargs: Any,
    ) -> None:
        # Without outlets of its own, the task reports its collection through the toolkit's alias.
        if kwargs.get("outlets") is None:
            kwargs["outlets"] = [loads_alias()]
        super().__init__(**kwargs)
        self.topic = topic
        self.mongo_db = mongo_db
        self.mongo_collection = mongo_collection
        self.kafka_conn_id = kafka_conn_id
        self.mongo_conn_id = mongo_conn_id
        self.group_id = group_id
        self.partitions = partitions
        self.id_strategy = id_strategy
        self.id_field = id_field
        self.write_mode = write_mode
        self.stall_timeout = stall_timeout
        self.batch_size = batch_size
        self.max_dead_letters = max_dead_letters
        self.max_dead_letter_ratio = max_dead_letter_ratio
        self.lease_wait = lease_wait
        self.job_options = dict(job_options or {})
        self.produced = produced
        self.batch = batch
        self._lineage: Lineage | None = None
        self._loaded: int | None = None

    def consume_job(self, context: Context) -> ConsumeJob:
        """The library's job for this task: the one place where options become ``ConsumeJob`` fields."""
        from kafka_mongo_etl.drain import DrainSettings
        from kafka_mongo_etl.tasks import ConsumeJob, DeadLetterPolicy

        named: dict[str, Any] = {
            "kafka_conn_id": self.kafka_conn_id,
            "mongo_conn_id": self.mongo_conn_id,
            "topic": self.topic,
            "mongo_db": self.mongo_db,
            "mongo_collection": self.mongo_collection,
            "batch": _batch(context, self.batch),
            "run_id": context["run_id"],
            "group_id": self.group_id or None,
            "id_strategy": self.id_strategy,
            "id_field": self.id_field or None,
            "write_mode": self.write_mode,
            "lease_wait": float(self.lease_wait),
            "drain": DrainSettings(stall_timeout=float(self.stall_timeout), batch_size=int(self.batch_size)),
            "dead_letter_policy": DeadLetterPolicy(
                max_count=None if self.max_dead_letters is None else int(self.max_dead_letters),
                max_ratio=None if self.max_dead_letter_ratio is None else float(self.max_dead_letter_ratio),
            ),
            "partitions": None if self.partitions is None else tuple(int(p) for p in self.partitions),
        }
        known = {field.name for field in fields(ConsumeJob)}
        unknown = sorted(set(self.job_options) - known)
        if unknown:
            raise ValueError(
                f"job_options {unknown} are not ConsumeJob fields; the fields are {', '.join(sorted(known))}"
            )
        shadowed = sorted(set(self.job_options) & set(named))
        if shadowed:
            raise ValueError(f"pass {shadowed} as operator arguments, not in job_options")
        return ConsumeJob(**named, **self.job_options)

    @property
    def drain_label(self) -> str:
        """What this drain covers, for the mapped task's name in the UI."""
        if not self.partitions:
            return "all partitions"
        return "partition " + ", ".join(str(p) for p in sorted(self.partitions))

    def execute(self, context: Context) -> dict[str, Any]:
        from kafka_mongo_etl.lineage import kafka_topic_uri, mongo_collection_uri
        from kafka_mongo_etl.tasks import run_consume

        result = run_consume(self.consume_job(context), self.produced)
        source = kafka_topic_uri(self.kafka_conn_id, self.topic)
        target = mongo_collection_uri(self.mongo_conn_id, self.mongo_db, self.mongo_collection)
        self._lineage = Lineage(inputs=(source,), outputs=(target,))
        self._loaded = result.get("loaded")
        extra = {
            "dag_run_id": context["run_id"],
            "source": source,
            "partitions": self.drain_label,
            **{key: result.get(key) for key in ("records", "loaded", "dead_letters", "seconds")},
        }
        _emit(context, self.outlets, self._lineage.outputs, extra)
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The topic as input, the collection as output with the documents loaded as its row count
        (needs the OpenLineage provider, imported only here)."""
        return self._lineage.openlineage(self._loaded) if self._lineage is not None else None
