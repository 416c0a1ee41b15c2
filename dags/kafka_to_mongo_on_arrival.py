"""Event-driven Kafka -> MongoDB: drain the topic to its watermark whenever records arrive.

An ``AssetWatcher`` runs ``NewRecordsTrigger`` in the triggerer: it watches the lag of the drain's
consumer group on the topic (read-only, it commits nothing) and records an asset event when new
records wait. Each event queues a run of this DAG, whose one task is the same drain as
``kafka_to_mongo``'s ``consume``. The logic lives in ``plugins/kafka_mongo_etl``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher

from kafka_mongo_etl.arrivals import NewRecordsTrigger
from kafka_mongo_etl.ids import default_group_id
from kafka_mongo_etl.operators import KafkaToMongoOperator
from kafka_mongo_etl.options import DAG_DEFAULT_ARGS

DOC_MD = """
### Kafka → MongoDB on arrival

Runs when records arrive on the topic, not on a clock. The triggerer looks at the consumer
group's lag every few seconds (admin API only: it never joins the group or commits an offset)
and records an event on the asset `{asset}` when records wait that it has not reported yet.

- **Coalescing.** Events that arrive before a run starts make one run; with one run at a time,
  a burst of any size makes few runs. Each run drains *everything* up to the watermarks it sees
  at start, so records that arrive during a drain wait for the next run, which their arrival
  starts.
- **Leftovers.** Records a failed run left behind start a run too, without new arrivals: when
  the lag has not moved for {quiet} s (then twice that, and so on, while nothing drains it).
- **Exactly once,** as for `kafka_to_mongo`: the drain commits offsets only after MongoDB
  acknowledged the writes, and every `_id` is deterministic.
- **One drain at a time.** It uses the consumer group `{group}`, the same as `kafka_to_mongo`
  for this target, so the two DAGs share one lease and never drain at once.

The DAG starts paused, like every new DAG: unpause it to start watching.
"""


def build_on_arrival(
    dag_id: str = "kafka_to_mongo_on_arrival",
    topic: str = "testnum",
    mongo_db: str = "testnum",
    mongo_collection: str = "testnum",
    kafka_conn_id: str = "kafka_default",
    mongo_conn_id: str = "mongo_default",
    group_id: str | None = None,
    poll_interval: float = 5.0,
    quiet_interval: float = 120.0,
    is_paused_upon_creation: bool | None = None,
    **options: Any,
) -> DAG:
    """The DAG for one topic and target; ``options`` are further ``KafkaToMongoOperator`` arguments."""
    group = group_id or default_group_id(mongo_db, mongo_collection)
    arrivals = Asset(
        name=f"{dag_id}.arrivals",
        uri=f"x-kafka-arrivals://{kafka_conn_id}/{topic}",
        watchers=[
            AssetWatcher(
                name=f"{dag_id}.lag",
                trigger=NewRecordsTrigger(
                    topic=topic,
                    group_id=group,
                    kafka_conn_id=kafka_conn_id,
                    poll_interval=poll_interval,
                    quiet_interval=quiet_interval,
                ),
            )
        ],
    )
    with DAG(
        dag_id=dag_id,
        schedule=[arrivals],
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        is_paused_upon_creation=is_paused_upon_creation,
        # One drain at a time: events during a run queue the next one, which coalesces them.
        max_active_runs=1,
        doc_md=DOC_MD.format(asset=arrivals.name, group=group, quiet=f"{quiet_interval:g}"),
        tags=["kafka", "mongodb", "etl"],
        default_args=DAG_DEFAULT_ARGS,
    ) as on_arrival:
        KafkaToMongoOperator(
            task_id="consume",
            topic=topic,
            mongo_db=mongo_db,
            mongo_collection=mongo_collection,
            kafka_conn_id=kafka_conn_id,
            mongo_conn_id=mongo_conn_id,
            group_id=group,
            execution_timeout=dt.timedelta(hours=4),
            **options,
        )
    return on_arrival


kafka_to_mongo_on_arrival = build_on_arrival()
