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

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import AssetAlias, BaseOperator

from kafka_mongo_etl.lineage import Lineage, loads_alias, produced_alias
from kafka_mongo_etl.options import consume_options, option

if TYPE_CHECKING:
    from airflow.sdk import Context

    from kafka_mongo_etl.job import ConsumeJob

log = logging.getLogger(__name__)


def _take_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop every consume load option from ``kwargs``, with its default when not given."""
    missing = [found.name for found in consume_options() if found.required and found.name not in kwargs]
    if missing:
        raise TypeError(f"KafkaToMongoOperator needs the keyword arguments {missing}")
    return {found.name: kwargs.pop(found.name, found.default) for found in consume_options()}


def _signature_with_options(init: Any) -> inspect.Signature:
    """``init``'s signature with each consume load option as a keyword-only argument."""
    signature = inspect.signature(init)
    *given, rest = signature.parameters.values()
    options = [
        inspect.Parameter(
            found.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=inspect.Parameter.empty if found.required else found.default,
        )
        for found in consume_options()
    ]
    required = [p for p in options if p.default is inspect.Parameter.empty]
    optional = [p for p in options if p.default is not inspect.Parameter.empty]
    return signature.replace(parameters=[given[0], *required, *given[1:], *optional, rest])


def _batch(context: Context, batch: str | None) -> str:
    from kafka_mongo_etl.ids import batch_id

    return batch or batch_id(context["dag"].dag_id, context["run_id"])


def _emit(context: Context, outlets: Sequence[Any], uris: Sequence[str], extra: dict[str, Any]) -> None:
    """Record an event on each asset through every asset alias among ``outlets``.

    Only assets Airflow knows get an event: one that a DAG is scheduled on or declares. The
    alias could create an unknown one, but two tasks that create the same new asset at once
    fail in Airflow 3.3 (a unique-key violation marks the second task failed after its work
    was done), so an unknown asset is skipped with a note instead. An asset event matters to
    Airflow only when a DAG is scheduled on the asset anyway, and that declares it.
    """
    from airflow.sdk import Asset
    from airflow.sdk.exceptions import AirflowRuntimeError

    aliases = [outlet for outlet in outlets if isinstance(outlet, AssetAlias)]
    for uri in uris if aliases else ():
        try:
            for alias in aliases:
                context["outlet_events"][alias].add(Asset.ref(uri=uri), extra=extra)
        except AirflowRuntimeError:
            log.info("No DAG declares the asset %s, so no asset event for it (schedule a DAG on it)", uri)
            continue
        log.info("Asset event for %s through %s", uri, ", ".join(alias.name for alias in aliases))


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
        start: int | str = option("start").default,
        partitions: int | str = option("partitions").default,
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
    every ``_id`` is deterministic, every write is fenced by its record's position, and one drain
    per partition and consumer group runs at a time (a lease per partition in
    ``<mongo_db>.etl_leases``). Records that cannot be loaded go to
    ``<mongo_collection>_dlq``; more than the dead-letter limits fail the task, without a retry,
    after everything else is loaded. Writes the run's audit to ``<mongo_db>.etl_runs`` and
    returns the drain summary.

    Its keyword arguments are the load options that ``consume`` reads, by the same names and with
    the same defaults as the ``kafka_to_mongo`` trigger form (``kafka_mongo_etl.options``; their
    reference is docs/options.md): ``topic``, ``mongo_db`` and ``mongo_collection`` (required),
    ``group_id``, ``id_strategy``, ``id_field``, ``id_fields``, ``write_mode``, ``stall_timeout``,
    ``batch_size``, ``on_retention_gap``, ``max_dead_letters``, ``max_dead_letter_ratio``,
    ``lease_wait``. Besides them:

    :param partitions: drain only these partitions (``None``: all); a mapped task per partition
        passes one each (``KafkaToMongoOperator.partial(...).expand(partitions=...)``).
    :param job_options: further ``ConsumeJob`` fields by name, passed as they are.
    :param produced: the upstream produce summary (an XCom), kept in the audit document.
    :param batch: the audit id and lease owner; default ``<dag_id>/<run_id>``.
    """

    template_fields: Sequence[str] = (
        *(found.name for found in consume_options() if found.templated),
        "kafka_conn_id",
        "mongo_conn_id",
        "batch",
        "produced",
    )
    ui_color = "#e3f4e8"

    def __init__(
        self,
        *,
        kafka_conn_id: str = "kafka_default",
        mongo_conn_id: str = "mongo_default",
        partitions: Sequence[int] | None = None,
        job_options: Mapping[str, Any] | None = None,
        produced: dict[str, Any] | None = None,
        batch: str | None = None,
        **kwargs: Any,
    ) -> None:
        options = _take_options(kwargs)
        # Without outlets of its own, the task reports its collection through the toolkit's alias.
        if kwargs.get("outlets") is None:
            kwargs["outlets"] = [loads_alias()]
        super().__init__(**kwargs)
        for name, value in options.items():
            setattr(self, name, value)
        self.kafka_conn_id = kafka_conn_id
        self.mongo_conn_id = mongo_conn_id
        self.partitions = partitions
        self.job_options = dict(job_options or {})
        self.produced = produced
        self.batch = batch
        self._lineage: Lineage | None = None
        self._loaded: int | None = None

    # The load options are keyword arguments in the signature Airflow reads (for partial(),
    # expand_kwargs() and default_args), though __init__ takes them through **kwargs.
    __init__.__signature__ = _signature_with_options(__init__)  # type: ignore[attr-defined]

    def consume_job(self, context: Context) -> ConsumeJob:
        """The library's job for this task, made from its load options."""
        from kafka_mongo_etl.job import consume_job

        return consume_job(
            {found.name: getattr(self, found.name) for found in consume_options()},
            kafka_conn_id=self.kafka_conn_id,
            mongo_conn_id=self.mongo_conn_id,
            batch=_batch(context, self.batch),
            run_id=context["run_id"],
            partitions=self.partitions,
            job_options=self.job_options,
        )

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
