"""Assets and lineage of a real DAG run: the asset events Airflow records for the topic and the
collection, and the OpenLineage events the operators' facets end up in (the OpenLineage
provider's listener, writing to its file transport)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kafka_mongo_etl.lineage import LOADS_ALIAS, PRODUCED_ALIAS, collection_uri, topic_uri

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.airflow

# One run of our DAG in its own interpreter, so that the OpenLineage provider reads the transport
# set for it here (it caches its configuration per process).
RUN_DAG = """
import datetime as dt, json, sys
from airflow.dag_processing.dagbag import DagBag

dag = DagBag(dag_folder=sys.argv[1]).dags["kafka_to_mongo"]
run = dag.test(run_conf=json.loads(sys.argv[2]), logical_date=dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
print("RESULT " + json.dumps({"run_id": run.run_id, "state": str(run.state)}))
"""


@pytest.fixture
def lineage_run(airflow_db, connections, kafka_broker, topic, mongo_db, tmp_path) -> dict:
    events = tmp_path / "openlineage.jsonl"
    env = {
        **os.environ,
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "kafka_mongo_etl_tests",
    }
    conf = {"topic": topic, "count": 120, "mongo_db": mongo_db}
    result = subprocess.run(
        [sys.executable, "-c", RUN_DAG, str(REPO / "dags"), json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    run = json.loads(line.removeprefix("RESULT "))
    assert run["state"] == "success", result.stderr[-4000:]
    lines = events.read_text().splitlines() if events.exists() else []
    return {**run, "openlineage": [json.loads(line) for line in lines if line.strip()]}


def asset_events(uri: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri == uri)
        ).all()
        return [
            {
                "dag_id": e.source_dag_id,
                "task_id": e.source_task_id,
                "run_id": e.source_run_id,
                "map_index": e.source_map_index,
                "extra": e.extra,
                "aliases": sorted(alias.name for alias in e.source_aliases),
            }
            for e in rows
        ]


def test_a_load_records_asset_events_on_its_collection_and_its_topic(
    lineage_run, kafka_broker, mongo_server, topic, mongo_db
) -> None:
    collection = collection_uri(mongo_server.host, mongo_server.port, mongo_db, "testnum")
    source = topic_uri(kafka_broker.bootstrap_servers, topic)
    assert collection == f"mongodb://{mongo_server.host}:{mongo_server.port}/{mongo_db}/testnum"

    loads = asset_events(collection)
    assert len(loads) == 1
    (load,) = loads
    assert (load["dag_id"], load["task_id"], load["run_id"], load["map_index"]) == (
        "kafka_to_mongo",
        "consume",
        lineage_run["run_id"],
        0,
    )
    assert load["aliases"] == [LOADS_ALIAS]
    assert {k: load["extra"][k] for k in ("records", "loaded", "dead_letters", "source", "partitions")} == {
        "records": 120,
        "loaded": 120,
        "dead_letters": 0,
        "source": source,
        "partitions": "all partitions",
    }

    produced = asset_events(source)
    assert [(e["task_id"], e["aliases"], e["extra"]["count"]) for e in produced] == [
        ("produce", [PRODUCED_ALIAS], 120)
    ]


def test_the_operators_report_their_openlineage_datasets(
    lineage_run, kafka_broker, mongo_server, topic, mongo_db
):
    complete = {
        event["job"]["name"]: event
        for event in lineage_run["openlineage"]
        if event.get("eventType") == "COMPLETE" and event["job"]["name"].startswith("kafka_to_mongo.")
    }
    assert {"kafka_to_mongo.produce", "kafka_to_mongo.consume"} <= set(complete), sorted(complete)
    kafka_namespace = "kafka://" + kafka_broker.bootstrap_servers.split(",")[0]
    mongo_namespace = f"mongodb://{mongo_server.host}:{mongo_server.port}"

    consume = complete["kafka_to_mongo.consume"]
    assert [(d["namespace"], d["name"]) for d in consume["inputs"]] == [(kafka_namespace, topic)]
    assert [(d["namespace"], d["name"]) for d in consume["outputs"]] == [
        (mongo_namespace, f"{mongo_db}.testnum")
    ]
    assert consume["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 120

    produce = complete["kafka_to_mongo.produce"]
    assert produce["inputs"] == []
    assert [(d["namespace"], d["name"]) for d in produce["outputs"]] == [(kafka_namespace, topic)]
