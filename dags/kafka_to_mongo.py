"""Kafka -> MongoDB batch ETL: ``produce`` a numbered batch, ``consume`` the topic to its high
watermark into MongoDB, in one task or one mapped task per partition (``drains`` plans them).
The operators and the logic live in ``plugins/kafka_mongo_etl``; this file is the shape."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from kafka_mongo_etl.lineage import loads_alias
from kafka_mongo_etl.operators import KafkaToMongoOperator, ProduceNumberedBatchOperator

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
and a re-read overwrites the same `_id`. One drain per topic and consumer group runs at a time
(a lease in `<mongo_db>.etl_leases`); a second one waits for it.

**Assets.** After each successful load, `consume` records an asset event on its collection,
`mongodb://<host>:<port>/<mongo_db>/<mongo_collection>` (through the asset alias
`kafka_mongo_etl.loads`), and `produce` one on its topic, `kafka://<bootstrap server>/<topic>`,
when a DAG is scheduled on that asset: that DAG then runs after every load.

Connections: `kafka_default` (librdkafka settings in the extra) and `mongo_default`.
Each run's figures, the consumer lag and the latest dead letters are on the **ETL** page in the
navigation.
"""

# Kafka's rule for topic names (legal characters, at most 249 of them; "." and ".." are not).
TOPIC_PATTERN = r"^(?!\.{1,2}$)[a-zA-Z0-9._-]{1,249}$"
# MongoDB: database names have none of /\. "$*<>:|? and at most 63 characters;
# collection names do not start with "system." and contain no "$" or NUL.
MONGO_DB_PATTERN = r'^[^/\\. "$*<>:|?]{1,63}$'
MONGO_COLLECTION_PATTERN = r"^(?!system\.)[^$\x00]{1,200}$"
MAX_COUNT = 10_000_000
# {"num": n} must fit MongoDB's int64 for every n up to start + count - 1, whatever the count.
MAX_START = 2**63 - MAX_COUNT
# A business-key field is a field name inside the _id document: not empty, no "." or NUL, not
# starting with "$" (kafka_mongo_etl.ids.ID_FIELD_NAME_PATTERN; the DAG file imports no ETL code).
ID_FIELD_NAME_PATTERN = r"^[^$.\x00][^.\x00]*$"
MAX_ID_FIELDS = 16


def _params() -> dict[str, Param]:
    """The trigger form, top-down: how many records, where to, then the finer settings."""
    return {
        "count": Param(
            500,
            type="integer",
            minimum=1,
            maximum=MAX_COUNT,
            title="Records to produce",
            description="How many numbered records this run produces (1 … 10,000,000).",
        ),
        "start": Param(
            0,
            type="integer",
            minimum=0,
            maximum=MAX_START,
            title="First number",
            description=(
                'The first record is {"num": start}; the last is start + count − 1, which must fit '
                "int64 (start ≤ 2^63 − 10,000,000)."
            ),
        ),
        "topic": Param(
            "testnum",
            type="string",
            pattern=TOPIC_PATTERN,
            # Printed with a validation error: the pattern alone does not say it in words.
            **{"$comment": "Use letters, digits, dots, underscores and hyphens only (at most 249)."},
            title="Kafka topic",
            description="Topic to produce to and drain. Letters, digits, '.', '_' and '-'; at most 249.",
        ),
        "mongo_db": Param(
            "testnum",
            type="string",
            pattern=MONGO_DB_PATTERN,
            **{"$comment": 'Use at most 63 characters, none of them a space or / \\ . " $ * < > : | ?'},
            title="MongoDB database",
            description='Target database. Up to 63 characters; not allowed: space / \\ . " $ * < > : | ?',
        ),
        "mongo_collection": Param(
            "testnum",
            type="string",
            pattern=MONGO_COLLECTION_PATTERN,
            **{"$comment": "Use a name without '$' that does not start with 'system.'."},
            title="MongoDB collection",
            description=(
                "Target collection (no '$', must not start with 'system.'). Dead letters go to <name>_dlq."
            ),
        ),
        "partitions": Param(
            3,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Partitions for a new topic",
            description="Used only when produce creates the topic; an existing topic keeps its own.",
            section="Kafka topic and consumer",
        ),
        "consumer_group": Param(
            None,
            type=["null", "string"],
            title="Consumer group",
            description=(
                "Empty: kafka_to_mongo.<database>.<collection>, one group per target. A new group "
                "starts at the earliest offset, so its first run reads the whole topic (safe, slower)."
            ),
            section="Kafka topic and consumer",
        ),
        "stall_timeout_seconds": Param(
            30,
            type="integer",
            minimum=1,
            maximum=3600,
            title="Stall timeout (s)",
            description=(
                "How long consume waits on a partition that gets no records below its snapshot "
                "before it fails the task, naming the partition and offset (everything loaded is "
                "committed first; the retry goes on from there)."
            ),
            section="Kafka topic and consumer",
        ),
        "on_retention_gap": Param(
            "fail",
            type="string",
            enum=["fail", "skip"],
            values_display={
                "fail": "Fail, loading nothing (the default)",
                "skip": "Skip the deleted records, count them in the audit, and go on",
            },
            title="Records deleted by retention before they were loaded",
            description=(
                "When the group's committed offset is below the earliest record still on the topic, "
                "the records between were lost to retention. Fail says so and loads nothing; skip "
                "loads from the earliest record left and records how many were lost per partition."
            ),
            section="Kafka topic and consumer",
        ),
        "parallelism": Param(
            "one task",
            type="string",
            enum=["one task", "per partition"],
            values_display={
                "one task": "One task drains every partition",
                "per partition": "One mapped task per partition (dynamic task mapping)",
            },
            title="Drains per run",
            description=(
                "One consume task for the whole topic, or one per partition, each under the lease of "
                "its partition. Both load each record exactly once; per partition spreads the work "
                "over workers. Keep one choice per topic and group (the two hold different leases)."
            ),
            section="Kafka topic and consumer",
        ),
        "id_strategy": Param(
            "key",
            type="string",
            enum=["key", "coordinates", "field", "fields"],
            values_display={
                "key": "Record key (exactly once across re-sent batches)",
                "coordinates": "topic:partition:offset",
                "field": "A field of the value",
                "fields": "Several fields of the value (a business key)",
            },
            title="Document _id",
            description=(
                "Where each document's _id comes from. Do not change it on a collection that "
                "already holds data: the same records would load again under new ids."
            ),
            section="Document _id",
        ),
        "id_field": Param(
            None,
            type=["null", "string"],
            minLength=1,
            title="_id field (only when Document _id is 'A field of the value')",
            description=(
                "The value field used as _id; required with that strategy (the run fails before "
                "producing without it). A record without the field, or with null, is a dead letter."
            ),
            section="Document _id",
        ),
        "id_fields": Param(
            None,
            type=["null", "array"],
            items={"type": "string", "pattern": ID_FIELD_NAME_PATTERN},
            minItems=1,
            maxItems=MAX_ID_FIELDS,
            uniqueItems=True,
            **{"$comment": "Use 1 to 16 distinct field names without '.', NUL or a leading '$'."},
            title="_id fields (only when Document _id is 'Several fields of the value')",
            description=(
                'The value fields of a business key, in order: the _id is {"<field>": value, …}. '
                "Required with that strategy. 1–16 names without '.' or a leading '$'."
            ),
            section="Document _id",
        ),
        "write_mode": Param(
            "replace",
            type="string",
            enum=["replace", "insert", "update", "delete_on_tombstone"],
            values_display={
                "replace": "Replace (insert, replace the _ids that exist; the latest version wins)",
                "insert": "Insert, keep existing _ids (for records that never change)",
                "update": "Update ($set the record's fields; keeps fields a new version lacks; timestamps)",
                "delete_on_tombstone": "Replace, and a tombstone deletes its key's document (id: key)",
            },
            title="Write mode",
            description=(
                "Every mode loads each record exactly once. Insert keeps the first version of an _id, so "
                "use it only when a record with a given _id never changes; delete_on_tombstone needs "
                "Document _id 'Record key'."
            ),
            section="Document _id",
        ),
        "max_dead_letters": Param(
            0,
            type=["null", "integer"],
            minimum=0,
            title="Dead letters allowed per run",
            description=(
                "Records that cannot be loaded go to <collection>_dlq. The run fails (without "
                "retrying, after loading and committing everything else) when there are more than "
                "this many. Empty: no count limit."
            ),
            section="Dead letters",
        ),
        "max_dead_letter_ratio": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=1,
            title="Dead-letter share allowed per run",
            description=(
                "Fail when more than this share of the drained records are dead letters "
                "(0–1, e.g. 0.01 = 1%)."
            ),
            section="Dead letters",
        ),
    }


def _refuse_conflicting_params(context: Any) -> None:
    """Fail the run at once, without retries, when its params cannot work together (Airflow
    validates each param alone; see ``kafka_mongo_etl.params``)."""
    from kafka_mongo_etl.params import check_params

    check_params(context["params"])


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
        params=_params(),
        doc_md=DOC_MD,
        tags=["kafka", "mongodb", "etl"],
        default_args={
            "retries": 3,
            "retry_delay": dt.timedelta(seconds=15),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": dt.timedelta(minutes=10),
        },
    )
    def kafka_to_mongo() -> None:
        produce = ProduceNumberedBatchOperator(
            task_id="produce",
            kafka_conn_id=kafka_conn_id,
            topic="{{ params.topic }}",
            partitions="{{ params.partitions }}",
            start="{{ params.start }}",
            count="{{ params.count }}",
            # Params that cannot work together fail the run here, before anything is sent.
            pre_execute=_refuse_conflicting_params,
            execution_timeout=dt.timedelta(hours=2),
        )

        @task(execution_timeout=dt.timedelta(minutes=10))
        def drains() -> list[dict[str, Any]]:
            """The consume options from the params, once per drain: all partitions, or one each."""
            from kafka_mongo_etl.parallelism import PER_PARTITION, drain_scopes, topic_partitions

            params = get_current_context()["params"]
            per_partition = params["parallelism"] == PER_PARTITION
            listed = topic_partitions(kafka_conn_id, params["topic"]) if per_partition else []
            options = {
                "topic": params["topic"],
                "mongo_db": params["mongo_db"],
                "mongo_collection": params["mongo_collection"],
                "group_id": params["consumer_group"] or None,
                "id_strategy": params["id_strategy"],
                "id_field": params["id_field"],
                "id_fields": params["id_fields"],
                "on_retention_gap": params["on_retention_gap"],
                "write_mode": params["write_mode"],
                "stall_timeout": params["stall_timeout_seconds"],
                "max_dead_letters": params["max_dead_letters"],
                "max_dead_letter_ratio": params["max_dead_letter_ratio"],
            }
            return [{**options, "partitions": scope} for scope in drain_scopes(params["parallelism"], listed)]

        planned = drains()
        produce >> planned
        KafkaToMongoOperator.partial(
            task_id="consume",
            kafka_conn_id=kafka_conn_id,
            mongo_conn_id=mongo_conn_id,
            produced=produce.output,
            outlets=[loads_alias()],
            execution_timeout=dt.timedelta(hours=4),
            map_index_template="{{ task.drain_label }}",
        ).expand_kwargs(planned)

    return kafka_to_mongo()


kafka_to_mongo = build_kafka_to_mongo()
