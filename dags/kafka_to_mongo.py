"""Kafka -> MongoDB batch ETL: ``produce`` a numbered batch, ``consume`` the topic to its high
watermark into MongoDB, in one task or one mapped task per partition (``drains`` plans them).
The operators and the logic live in ``plugins/kafka_mongo_etl``; this file is the shape."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import dag, get_current_context, task

from kafka_mongo_etl.lineage import loads_alias
from kafka_mongo_etl.operators import KafkaToMongoOperator, ProduceNumberedBatchOperator
from kafka_mongo_etl.options import (
    DAG_DEFAULT_ARGS,
    check_options,
    drain_options,
    form_params,
    produce_option_names,
    with_current_names,
)

DOC_MD = """
### Kafka → MongoDB, exactly once in effect

**produce** ensures the topic exists (with `partitions` partitions), then sends `count` records
`{"num": n, "batch": <dag_id>/<run_id>}` for n in `start … start+count−1`, keyed
`<dag_id>/<run_id>/<n>`, through an idempotent producer. It fails, naming how many, if any
record is not acknowledged.

**consume** snapshots every partition's high watermark, then drains from the consumer group's
committed offsets (earliest when there are none) up to that snapshot — records produced later
stay for the next run. It writes unordered bulk upserts keyed by `_id` (default: the record
key) and commits offsets synchronously, only after MongoDB acknowledged the write. It records
the run in `<mongo_db>.etl_runs`.

With `parallelism` = *per partition*, `drains` lists the topic's partitions and `consume` is
mapped over them: one task per partition, each under the lease of its partition, each committing
only its own partition's offsets. The ETL page sums a run's drains into one row.

**Many topics.** A `topics` map (`{"orders": "shop.orders", "returns": {"collection":
"shop.returns", "write_mode": "update"}}`) drains each of its topics instead of `topic`, into its
own collection, with per-topic overrides of the consume options: one drain per topic (and per
partition when asked), each with its own consumer group, leases and audit. `produce` still
writes to `topic` only.

**Dead letters.** A record that cannot become a document by MongoDB's rules (not UTF-8, not
JSON, not an object, a tombstone, a number beyond int64 or double, a lone surrogate, a refused
field name, more than 100 levels of nesting, an `_id` MongoDB refuses, over 16 MiB with `_id`
and `_kafka`, or refused by MongoDB at the write) is kept with its raw bytes, headers and reason
in `<mongo_collection>_dlq` before its offset is committed; good records still load. By default
any dead letter fails the run once everything else is loaded (`max_dead_letters`), without a
retry, so that it is seen.

**Gaps.** Records deleted by retention before they were loaded fail the run by default, naming
how many per partition (`on_retention_gap=skip` loads on and counts them in the audit).

**Guarantees.** Nothing is lost: an offset is committed only after its record is in MongoDB.
Nothing is doubled: a retry, a cleared run or a repeated backfill date re-sends the same keys,
and a re-read overwrites the same `_id`; a late or older write never overwrites newer content
(every write is fenced by the record's partition and offset). One drain per partition and
consumer group runs at a time, whatever the parallelism (a lease per partition in
`<mongo_db>.etl_leases`); a second one waits for it.

**Assets.** After each successful load, `consume` records an asset event on its collection,
`mongodb://<host>:<port>/<mongo_db>/<mongo_collection>` (through the asset alias
`kafka_mongo_etl.loads`), and `produce` one on its topic, `kafka://<bootstrap server>/<topic>`,
when a DAG is scheduled on that asset: that DAG then runs after every load.

Connections: `kafka_default` (librdkafka settings in the extra) and `mongo_default`.
Each run's figures, the consumer lag and the latest dead letters are on the **ETL** page in the
navigation.
"""


def _refuse_conflicting_params(context: Any) -> None:
    """Fail the run at once, without retries, when its options cannot work together (Airflow
    validates each param alone; see ``kafka_mongo_etl.options``)."""
    check_options(with_current_names(context["params"]))


def build_kafka_to_mongo(
    dag_id: str = "kafka_to_mongo",
    kafka_conn_id: str = "kafka_default",
    mongo_conn_id: str = "mongo_default",
    schedule: str | None = "@hourly",
) -> Any:
    """The DAG; call it again with other connection ids to run the same ETL elsewhere."""

    @dag(
        dag_id=dag_id,
        schedule=schedule,
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        max_active_runs=4,
        params=form_params(),
        doc_md=DOC_MD,
        tags=["kafka", "mongodb", "etl"],
        default_args=DAG_DEFAULT_ARGS,
    )
    def kafka_to_mongo() -> None:
        produce = ProduceNumberedBatchOperator(
            task_id="produce",
            kafka_conn_id=kafka_conn_id,
            **{name: "{{ params." + name + " }}" for name in produce_option_names()},
            # Params that cannot work together fail the run here, before anything is sent.
            pre_execute=_refuse_conflicting_params,
            execution_timeout=dt.timedelta(hours=2),
        )

        @task(execution_timeout=dt.timedelta(minutes=10))
        def drains() -> list[dict[str, Any]]:
            """The consume options from the params, once per drain: per topic (one, or each of
            the topic map's), and per topic all partitions, or one each."""
            from kafka_mongo_etl.parallelism import PER_PARTITION, drain_scopes, topic_partitions

            params = with_current_names(get_current_context()["params"])
            planned = []
            for options in drain_options(params):
                parallelism = options.pop("parallelism")
                per_partition = parallelism == PER_PARTITION
                listed = topic_partitions(kafka_conn_id, options["topic"]) if per_partition else []
                drain = dict(options)
                if params.get("topics") is not None:
                    # Each topic's drain has its own audit document: the run's batch and the topic.
                    drain["batch"] = "{{ dag.dag_id }}/{{ run_id }}/" + options["topic"]
                planned += [{**drain, "partitions": scope} for scope in drain_scopes(parallelism, listed)]
            return planned

        planned = drains()
        produce >> planned
        KafkaToMongoOperator.partial(
            task_id="consume",
            kafka_conn_id=kafka_conn_id,
            mongo_conn_id=mongo_conn_id,
            produced=produce.output,
            outlets=[loads_alias()],
            execution_timeout=dt.timedelta(hours=4),
            map_index_template="{{ task.topic }}: {{ task.drain_label }}",
        ).expand_kwargs(planned)

    return kafka_to_mongo()


kafka_to_mongo = build_kafka_to_mongo()
