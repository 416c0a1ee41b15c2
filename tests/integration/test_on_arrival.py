"""Runs on arrival: the lag trigger against the real broker, then ``kafka_to_mongo_on_arrival``
with Airflow's real triggerer and scheduler (``airflow standalone`` on free ports), fed by a plain
confluent-kafka producer, and the example DAG scheduled on the collection's asset."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from devstack.airflow import AirflowHome, AirflowStandalone, local_connections
from devstack.process import free_port
from devstack.run import AirflowApi
from kafka_mongo_etl.arrivals import NewRecordsTrigger, TopicLag
from kafka_mongo_etl.lineage import collection_uri

REPO = Path(__file__).resolve().parents[2]


def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)


def send(bootstrap: str, topic: str, numbers: range) -> None:
    """A plain producer, nothing of ours: JSON values keyed ``k-<n>``."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for n in numbers:
        producer.produce(topic, key=f"k-{n}".encode(), value=json.dumps({"num": n}).encode())
    assert producer.flush(30) == 0


def test_records_a_failed_run_left_behind_fire_an_event_without_new_arrivals(
    connections, kafka_broker, mongo_client, make_job, committed_offsets
) -> None:
    """Issue 19, finding 8: the trigger used to fire only when a watermark moved."""
    from kafka_mongo_etl.arrivals import ARRIVED, LEFT_BEHIND
    from kafka_mongo_etl.clients import EtlConsumerHook
    from kafka_mongo_etl.drain import DrainSettings, drain_to_watermark, json_document
    from kafka_mongo_etl.ids import id_function
    from kafka_mongo_etl.mongo_sink import MongoSink
    from kafka_mongo_etl.tasks import run_consume

    job = make_job()
    bootstrap = kafka_broker.bootstrap_servers
    create_topic(bootstrap, job.topic, partitions=1)
    collection = mongo_client[job.mongo_db]["testnum"]

    class FailingAfterTheFirstBatch(MongoSink):
        writes = 0

        def write(self, documents):
            self.writes += 1
            if self.writes > 1:
                raise RuntimeError("the run fails after its first batch")
            return super().write(documents)

    def a_run_that_fails_midway() -> None:
        consumer = EtlConsumerHook(job.topic, job.consumer_group).get_conn
        try:
            settings = DrainSettings(batch_size=30, overlap=False)
            to_document = json_document(id_function("key"))
            sink = FailingAfterTheFirstBatch(collection)
            with pytest.raises(RuntimeError, match="after its first batch"):
                drain_to_watermark(consumer, job.topic, job.consumer_group, sink, to_document, settings)
        finally:
            consumer.close()

    trigger = NewRecordsTrigger(
        topic=job.topic, group_id=job.consumer_group, poll_interval=0.2, quiet_interval=1.0
    )

    async def scenario() -> None:
        events: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            async for event in trigger.run():
                await events.put(event.payload)

        watching = asyncio.create_task(pump())
        try:
            await asyncio.to_thread(send, bootstrap, job.topic, range(100))
            arrived = await asyncio.wait_for(events.get(), 60)
            while arrived["high_watermarks"] != {"0": 100}:
                arrived = await asyncio.wait_for(events.get(), 60)
            assert arrived["reason"] == ARRIVED

            await asyncio.to_thread(a_run_that_fails_midway)
            committed = (await asyncio.to_thread(committed_offsets, job.topic, job.consumer_group))[0]
            assert 0 < committed < 100
            # Nothing new arrives and nothing drains: the leftovers fire an event of their own.
            left = await asyncio.wait_for(events.get(), 60)
            while left["reason"] != LEFT_BEHIND:
                left = await asyncio.wait_for(events.get(), 60)
            assert (left["pending"], left["high_watermarks"]) == (100 - committed, {"0": 100})

            # The run it starts loads them (that a quiet lag of 0 never fires: tests/unit).
            assert (await asyncio.to_thread(run_consume, job))["records"] == 100 - committed
        finally:
            watching.cancel()

    asyncio.run(scenario())
    assert {d["_id"] for d in collection.find({}, {"_id": 1})} == {f"k-{n}" for n in range(100)}


def test_lag_fires_for_a_partition_whose_watermark_moved_with_records_waiting() -> None:
    lag = TopicLag(high={0: 10, 1: 5}, pending={0: 0, 1: 5})
    assert lag.total == 5
    assert lag.moved_past({})
    assert lag.moved_past({0: 10, 1: 4})
    assert not lag.moved_past({0: 9, 1: 5})  # partition 0 moved, but it has nothing waiting


def test_the_trigger_fires_once_per_burst_commits_nothing_and_sees_records_that_arrive_in_a_drain(
    connections, kafka_broker, mongo_client, make_job, committed_offsets
) -> None:
    from kafka_mongo_etl.clients import EtlConsumerHook
    from kafka_mongo_etl.drain import DrainSettings, drain_to_watermark, json_document
    from kafka_mongo_etl.ids import id_function
    from kafka_mongo_etl.mongo_sink import MongoSink
    from kafka_mongo_etl.tasks import run_consume

    job = make_job()
    bootstrap = kafka_broker.bootstrap_servers
    create_topic(bootstrap, job.topic)
    send(bootstrap, job.topic, range(1000))
    collection = mongo_client[job.mongo_db]["testnum"]

    class MoreArriveDuringTheDrain(MongoSink):
        arrived = False

        def write(self, documents):
            if not self.arrived:
                send(bootstrap, job.topic, range(1000, 1050))
                self.arrived = True
            return super().write(documents)

    def drain_while_records_arrive() -> int:
        consumer = EtlConsumerHook(job.topic, job.consumer_group).get_conn
        try:
            sink = MoreArriveDuringTheDrain(collection)
            to_document = json_document(id_function("key"))
            return drain_to_watermark(
                consumer, job.topic, job.consumer_group, sink, to_document, DrainSettings()
            ).records
        finally:
            consumer.close()

    trigger = NewRecordsTrigger(topic=job.topic, group_id=job.consumer_group, poll_interval=0.5)

    async def scenario() -> None:
        events: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            async for event in trigger.run():
                await events.put(event.payload)

        watching = asyncio.create_task(pump())
        try:
            first = await asyncio.wait_for(events.get(), 60)
            assert (first["pending"], first["group_id"]) == (1000, job.consumer_group)
            await asyncio.sleep(3)  # six more looks at an unchanged lag
            assert events.empty(), "one burst, one event"
            offsets = await asyncio.to_thread(committed_offsets, job.topic, job.consumer_group, 3)
            assert all(offset < 0 for offset in offsets.values()), f"the trigger committed {offsets}"

            assert await asyncio.to_thread(drain_while_records_arrive) == 1000
            # What arrived during the drain starts the next one. The trigger may look while the
            # 50 are still being sent (an event per watermark move, each seeing more of them)
            # and before the drain committed (pending is then 50 plus what the drain has not
            # committed yet): the last event sees all 50.
            second = await asyncio.wait_for(events.get(), 60)
            while sum(second["high_watermarks"].values()) < 1050:
                second = await asyncio.wait_for(events.get(), 60)
            assert sum(second["high_watermarks"].values()) == 1050, second
            assert 50 <= second["pending"] <= 1050, second
            assert (await asyncio.to_thread(run_consume, job))["records"] == 50
            await asyncio.sleep(3)
            assert events.empty(), "nothing waits: no event"
        finally:
            watching.cancel()

    asyncio.run(scenario())
    assert collection.count_documents({}) == 1050
    assert {d["_id"] for d in collection.find({}, {"_id": 1})} == {f"k-{n}" for n in range(1050)}


# The shipped DAGs, built for this test's topic and target, unpaused from the start.
TEST_DAGS = """
# Airflow DAGs (safe-mode discovery wants both words in the file).
import importlib.util

def load(name):
    spec = importlib.util.spec_from_file_location(f"{{name}}_for_test", "{dags}/" + name + ".py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

test_on_arrival = load("kafka_to_mongo_on_arrival").build_on_arrival(
    dag_id="test_on_arrival", topic="{topic}", mongo_db="{mongo_db}", poll_interval=2.0,
    is_paused_upon_creation=False,
)
test_after_load = load("kafka_to_mongo_after_load").build_after_load(
    dag_id="test_after_load", collection_uri="{collection}", is_paused_upon_creation=False,
)
"""


def runs_of(api: AirflowApi, dag_id: str) -> list[dict]:
    return api.call("GET", f"/dags/{dag_id}/dagRuns?limit=100&order_by=start_date")["dag_runs"]


def reported_loads(api: AirflowApi, runs: list[dict]) -> list[dict]:
    """What the example DAG's runs reported: one entry per load event that started them."""
    loads = []
    for run in runs:
        if run["state"] != "success":
            continue
        run_id = quote(run["dag_run_id"], safe="")
        path = f"/dags/test_after_load/dagRuns/{run_id}/taskInstances/report_loads/xcomEntries/return_value"
        value = api.call("GET", path)["value"]
        loads.extend(json.loads(value) if isinstance(value, str) else value)
    return loads


def wait_for(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f}s"
        time.sleep(1)


@pytest.mark.airflow
def test_records_from_a_plain_producer_land_once_and_the_asset_scheduled_dag_runs_after_the_loads(
    tmp_path, kafka_broker, mongo_server, topic, mongo_db, mongo_client
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    create_topic(bootstrap, topic)
    dags = tmp_path / "dags"
    dags.mkdir()
    collection_asset = collection_uri(mongo_server.host, mongo_server.port, mongo_db, "testnum")
    (dags / "on_arrival_test_dags.py").write_text(
        TEST_DAGS.format(dags=REPO / "dags", topic=topic, mongo_db=mongo_db, collection=collection_asset)
    )
    home = AirflowHome(tmp_path / "airflow", api_port=free_port(), dags_folder=dags)
    home.write(local_connections(bootstrap, mongo_server.host, mongo_server.port))
    standalone = AirflowStandalone(home, tmp_path)
    collection = mongo_client[mongo_db]["testnum"]
    try:
        standalone.start()
        api = AirflowApi.for_stack(standalone)
        api.wait_for_dag("test_on_arrival", 120)

        send(bootstrap, topic, range(0, 300))
        wait_for("the first burst in MongoDB", lambda: collection.count_documents({}) == 300, 240)
        wait_for(
            "the example DAG after the first load",
            lambda: any(r["state"] == "success" for r in runs_of(api, "test_after_load")),
            120,
        )
        after_first = len(runs_of(api, "test_after_load"))

        send(bootstrap, topic, range(300, 500))
        wait_for("the second burst in MongoDB", lambda: collection.count_documents({}) == 500, 240)
        wait_for(
            "every run of the on-arrival DAG done",
            lambda: all(r["state"] in ("success", "failed") for r in runs_of(api, "test_on_arrival")),
            240,
        )
        wait_for(
            "the example DAG after the second load",
            lambda: sum(r["state"] == "success" for r in runs_of(api, "test_after_load")) > after_first,
            120,
        )
        on_arrival = runs_of(api, "test_on_arrival")
        wait_for(
            "the example DAG to report every load",
            lambda: (
                {load["dag_run_id"] for load in reported_loads(api, runs_of(api, "test_after_load"))}
                >= {r["dag_run_id"] for r in on_arrival}
            ),
            120,
        )
        after_load = runs_of(api, "test_after_load")
        reported = reported_loads(api, after_load)
    finally:
        standalone.stop()

    assert {d["_id"] for d in collection.find({}, {"_id": 1})} == {f"k-{n}" for n in range(500)}
    assert collection.count_documents({}) == 500
    assert [r["state"] for r in on_arrival] == ["success"] * len(on_arrival)
    assert all(r["run_type"] == "asset_triggered" for r in on_arrival)
    # 500 records in two bursts: a handful of runs, not one per record.
    assert 2 <= len(on_arrival) <= 6, [r["dag_run_id"] for r in on_arrival]
    audit = list(mongo_client[mongo_db]["etl_runs"].find())
    assert sum(d["loaded"] for d in audit) == 500 and sum(d["records"] for d in audit) == 500
    assert {d["dag_run_id"] for d in audit} == {r["dag_run_id"] for r in on_arrival}
    assert all(r["state"] == "success" and r["run_type"] == "asset_triggered" for r in after_load)
    # Every load's asset event started the example exactly once, with the load's figures.
    assert sorted(load["dag_run_id"] for load in reported) == sorted(r["dag_run_id"] for r in on_arrival)
    assert sum(load["loaded"] for load in reported) == 500
    assert {load["source_dag_id"] for load in reported} == {"test_on_arrival"}
