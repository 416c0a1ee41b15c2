"""The operators in DAG runs (``dag.test``) against the real broker and Mongo-wire server:
our DAG with one drain per partition, and a user's own DAG with other connections."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from kafka_mongo_etl.ids import default_group_id, record_key

DAGS = Path(__file__).resolve().parents[2] / "dags"

pytestmark = pytest.mark.airflow


def ids_in(collection) -> set:
    return {doc["_id"] for doc in collection.find({}, {"_id": 1})}


def mapped_states(run, task_id: str) -> dict[int, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.map_index, TaskInstance.state).where(
                TaskInstance.dag_id == run.dag_id,
                TaskInstance.run_id == run.run_id,
                TaskInstance.task_id == task_id,
            )
        ).all()
    return {map_index: str(state) for map_index, state in rows}


def test_per_partition_maps_one_drain_per_partition_and_loads_each_record_once(
    airflow_db, connections, topic, mongo_db, mongo_client, committed_offsets
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS)).dags["kafka_to_mongo"]
    conf = {
        "topic": topic,
        "count": 600,
        "mongo_db": mongo_db,
        "partitions": 3,
        "parallelism": "per partition",
    }
    first = dag.test(run_conf=conf, logical_date=dt.datetime(2026, 4, 1, tzinfo=dt.UTC))
    assert first.state == "success"
    assert mapped_states(first, "consume") == {0: "success", 1: "success", 2: "success"}

    collection = mongo_client[mongo_db]["testnum"]
    batch = f"kafka_to_mongo/{first.run_id}"
    assert collection.count_documents({}) == 600
    assert ids_in(collection) == {record_key(batch, n) for n in range(600)}
    # One audit document per mapped drain, each covering its own partition only.
    audit = {d["_id"]: d for d in mongo_client[mongo_db]["etl_runs"].find()}
    assert set(audit) == {f"{batch}:{p}" for p in range(3)}
    assert {p: list(audit[f"{batch}:{p}"]["partitions"]) for p in range(3)} == {0: ["0"], 1: ["1"], 2: ["2"]}
    assert sum(d["loaded"] for d in audit.values()) == 600
    assert all(d["dag_run_id"] == first.run_id for d in audit.values())
    offsets = committed_offsets(topic, default_group_id(mongo_db, "testnum"), 3)
    assert sum(offsets.values()) == 600

    # A second run in the other mode drains only what came after the first's commits.
    second = dag.test(
        run_conf={**conf, "parallelism": "one task", "start": 600, "count": 60},
        logical_date=dt.datetime(2026, 4, 1, 1, tzinfo=dt.UTC),
    )
    assert second.state == "success"
    assert mapped_states(second, "consume") == {0: "success"}
    second_batch = f"kafka_to_mongo/{second.run_id}"
    assert collection.count_documents({}) == 660
    assert ids_in(collection) == {record_key(batch, n) for n in range(600)} | {
        record_key(second_batch, n) for n in range(600, 660)
    }
    whole = mongo_client[mongo_db]["etl_runs"].find_one({"_id": second_batch})
    assert (whole["records"], whole["loaded"]) == (60, 60)


USER_DAG = '''
"""A team's own DAG: its own connections, its own schedule, the toolkit's operators."""
import datetime as dt

from airflow.sdk import DAG, Param

from kafka_mongo_etl.operators import KafkaToMongoOperator, ProduceNumberedBatchOperator

with DAG(
    dag_id="orders_to_mongo",
    schedule="*/30 * * * *",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    params={"topic": Param("orders", type="string"), "database": Param("sales", type="string")},
) as dag:
    produce = ProduceNumberedBatchOperator(
        task_id="make_orders",
        kafka_conn_id="kafka_orders",
        topic="{{ params.topic }}",
        count=120,
        partitions=2,
    )
    load = KafkaToMongoOperator(
        task_id="load_orders",
        kafka_conn_id="kafka_orders",
        mongo_conn_id="mongo_sales",
        topic="{{ params.topic }}",
        mongo_db="{{ params.database }}",
        mongo_collection="orders",
        write_mode="insert",
        produced=produce.output,
    )
    produce >> load
'''


@pytest.fixture
def user_dag(tmp_path, monkeypatch, connections):
    """The DAG above in its own folder and bundle, with connections named as its team names them."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_ORDERS", json.dumps(connections["kafka_default"]))
    monkeypatch.setenv("AIRFLOW_CONN_MONGO_SALES", json.dumps(connections["mongo_default"]))
    for conn_id in ("KAFKA_DEFAULT", "MONGO_DEFAULT"):
        monkeypatch.delenv(f"AIRFLOW_CONN_{conn_id}")
    (tmp_path / "orders_to_mongo.py").write_text(USER_DAG)
    local_bundle = "airflow.dag_processing.bundles.local.LocalDagBundle"
    bundles = [
        {"name": "dags-folder", "classpath": local_bundle, "kwargs": {}},
        {"name": "user-dags", "classpath": local_bundle, "kwargs": {"path": str(tmp_path)}},
    ]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    bag = DagBag(dag_folder=str(tmp_path))
    assert bag.import_errors == {}
    return bag.dags["orders_to_mongo"]


def test_a_users_dag_with_its_own_connections_loads_exactly_its_batch(
    airflow_db, user_dag, topic, mongo_db, mongo_client
) -> None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    templated = set(user_dag.get_task("load_orders").template_fields)
    expected = {"topic", "mongo_db", "mongo_collection", "group_id", "kafka_conn_id", "mongo_conn_id"}
    assert expected <= templated
    run = user_dag.test(run_conf={"topic": topic, "database": mongo_db})
    assert run.state == "success"

    batch = f"orders_to_mongo/{run.run_id}"
    collection = mongo_client[mongo_db]["orders"]
    assert collection.count_documents({}) == 120
    assert ids_in(collection) == {record_key(batch, n) for n in range(120)}
    query = XComModel.get_many(
        run_id=run.run_id, dag_ids=run.dag_id, task_ids="load_orders", key="return_value"
    )
    with create_session() as session:
        loaded = XComModel.deserialize_value(session.scalars(query).one())
    assert (loaded["records"], loaded["loaded"], loaded["target"]) == (120, 120, f"{mongo_db}.orders")
    assert loaded["produced"]["count"] == 120 and loaded["group_id"] == default_group_id(mongo_db, "orders")

    # Run again: the topic now holds two batches, the drain takes only the new one.
    again = user_dag.test(run_conf={"topic": topic, "database": mongo_db})
    assert again.state == "success"
    assert collection.count_documents({}) == 240
