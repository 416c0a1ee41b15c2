"""Bench-only DAGs. The harness copies this file, with the project's dags/kafka_to_mongo.py,
into a temporary dags folder of its own Airflow; it is never in the project's dags/.

- ``bench_whole_run``: the project's DAG itself (``build_kafka_to_mongo``), unscheduled, so a
  triggered run is the only run.
- ``bench_drain_one_task``: one task drains every partition (``run_consume``).
- ``bench_drain_mapped_p1/p2/p4``: one mapped task instance per partition (dynamic task mapping),
  each ``run_consume`` with ``partitions=(p,)`` (its own lease and audit document).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from kafka_to_mongo import build_kafka_to_mongo

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _params() -> dict[str, Param]:
    return {
        "topic": Param("bench", type="string"),
        "mongo_db": Param("bench", type="string"),
        "mongo_collection": Param("bench", type="string"),
        "group": Param("bench", type="string"),
    }


def _consume(partitions: tuple[int, ...] | None) -> dict[str, Any]:
    """The consume task's code on the run's params; ``partitions=None`` drains them all."""
    from kafka_mongo_etl.tasks import ConsumeJob, run_consume

    context = get_current_context()
    params = context["params"]
    job = ConsumeJob(
        kafka_conn_id="kafka_default",
        mongo_conn_id="mongo_default",
        topic=params["topic"],
        mongo_db=params["mongo_db"],
        mongo_collection=params["mongo_collection"],
        batch=f"bench/{context['run_id']}",
        run_id=context["run_id"],
        group_id=params["group"],
        partitions=partitions,
    )
    result = run_consume(job)
    return {"records": result["records"], "seconds": result["seconds"]}


bench_whole_run = build_kafka_to_mongo(dag_id="bench_whole_run", schedule=None)


@dag(dag_id="bench_drain_one_task", schedule=None, start_date=START, catchup=False, params=_params())
def bench_drain_one_task() -> None:
    @task
    def consume() -> dict[str, Any]:
        return _consume(None)

    consume()


bench_drain_one_task_dag = bench_drain_one_task()


def _mapped(partitions: int) -> Any:
    @dag(
        dag_id=f"bench_drain_mapped_p{partitions}",
        schedule=None,
        start_date=START,
        catchup=False,
        params=_params(),
    )
    def bench_drain_mapped() -> None:
        @task
        def consume_partition(partition: int) -> dict[str, Any]:
            return _consume((partition,))

        consume_partition.expand(partition=list(range(partitions)))

    return bench_drain_mapped()


bench_drain_mapped_p1 = _mapped(1)
bench_drain_mapped_p2 = _mapped(2)
bench_drain_mapped_p4 = _mapped(4)
