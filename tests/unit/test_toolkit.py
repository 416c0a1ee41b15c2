"""The toolkit's pure parts: asset URIs, the drain plan, how operator options become a ConsumeJob."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kafka_mongo_etl.lineage import Lineage, collection_uri, topic_uri
from kafka_mongo_etl.operators import KafkaToMongoOperator
from kafka_mongo_etl.parallelism import ONE_TASK, PER_PARTITION, drain_scopes


@pytest.mark.parametrize(
    ("servers", "uri"),
    [
        ("127.0.0.1:9092", "kafka://127.0.0.1:9092/orders"),
        ("b1:9092, b2:9092", "kafka://b1:9092/orders"),
        ("SASL_SSL://broker.example:9093", "kafka://broker.example:9093/orders"),
    ],
)
def test_the_topic_is_named_by_its_first_bootstrap_server(servers: str, uri: str) -> None:
    assert topic_uri(servers, "orders") == uri


@pytest.mark.parametrize(
    ("host", "port", "uri"),
    [
        ("127.0.0.1", 27017, "mongodb://127.0.0.1:27017/sales/orders"),
        ("cluster0.example.net", None, "mongodb://cluster0.example.net:27017/sales/orders"),
        ("m1:27018,m2:27018", None, "mongodb://m1:27018/sales/orders"),
    ],
)
def test_the_collection_is_named_by_its_first_host_and_port(host: str, port: int | None, uri: str) -> None:
    assert collection_uri(host, port, "sales", "orders") == uri


def test_an_address_that_names_nothing_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="no bootstrap server"):
        topic_uri("", "orders")
    with pytest.raises(ValueError, match="no host"):
        collection_uri("", None, "sales", "orders")


def test_openlineage_datasets_follow_the_providers_naming() -> None:
    lineage = Lineage(inputs=("kafka://b1:9092/orders",), outputs=("mongodb://m1:27017/sales/orders",))
    reported = lineage.openlineage(output_rows=42)
    assert [(d.namespace, d.name) for d in reported.inputs] == [("kafka://b1:9092", "orders")]
    assert [(d.namespace, d.name) for d in reported.outputs] == [("mongodb://m1:27017", "sales.orders")]
    assert reported.outputs[0].outputFacets["outputStatistics"].rowCount == 42


@given(st.sets(st.integers(min_value=0, max_value=500), min_size=1))
def test_per_partition_plans_one_drain_for_each_partition(partitions: set[int]) -> None:
    scopes = drain_scopes(PER_PARTITION, partitions)
    assert scopes == [[p] for p in sorted(partitions)]


def test_one_task_plans_one_drain_of_everything_and_other_words_are_refused() -> None:
    assert drain_scopes(ONE_TASK, [0, 1, 2]) == [None]
    with pytest.raises(ValueError, match="needs the topic's partitions"):
        drain_scopes(PER_PARTITION, [])
    with pytest.raises(ValueError, match="unknown parallelism 'per broker'"):
        drain_scopes("per broker", [0])


CONTEXT = {"dag": type("Dag", (), {"dag_id": "orders_dag"})(), "run_id": "manual__1"}


def operator(**options) -> KafkaToMongoOperator:
    return KafkaToMongoOperator(
        task_id="load", topic="orders", mongo_db="sales", mongo_collection="orders", **options
    )


def test_the_operators_defaults_are_the_libraries() -> None:
    from kafka_mongo_etl.job import ConsumeJob

    job = operator().consume_job(CONTEXT)
    library = ConsumeJob(
        kafka_conn_id="kafka_default",
        mongo_conn_id="mongo_default",
        topic="orders",
        mongo_db="sales",
        mongo_collection="orders",
        batch="orders_dag/manual__1",
        run_id="manual__1",
    )
    assert job == library


def test_options_reach_the_job_and_further_fields_pass_through_job_options(monkeypatch) -> None:
    from kafka_mongo_etl import job as job_module

    @dataclasses.dataclass(frozen=True)
    class JobWithAFieldAddedLater(job_module.ConsumeJob):
        added_later: str = "default"

    monkeypatch.setattr(job_module, "ConsumeJob", JobWithAFieldAddedLater)
    job = operator(
        partitions=[2, 0],
        stall_timeout="5",
        max_dead_letters=None,
        on_retention_gap="skip",
        id_strategy="fields",
        id_fields=["region", "order"],
        job_options={"added_later": "given"},
    ).consume_job(CONTEXT)
    assert (job.partitions, job.drain.stall_timeout, job.dead_letter_policy.max_count) == ((2, 0), 5.0, None)
    assert job.scope == ":0,2" and job.on_retention_gap == "skip" and job.added_later == "given"
    assert job.id_fields == ("region", "order")


def test_job_options_that_are_not_consume_job_fields_or_shadow_an_argument_are_refused() -> None:
    fields = {field.name for field in dataclasses.fields(__import__("kafka_mongo_etl.job").job.ConsumeJob)}
    assert "no_such_option" not in fields
    with pytest.raises(ValueError, match=r"job_options \['no_such_option'\] are not ConsumeJob fields"):
        operator(job_options={"no_such_option": 1}).consume_job(CONTEXT)
    with pytest.raises(ValueError, match=r"pass \['write_mode'\] as operator arguments"):
        operator(job_options={"write_mode": "insert"}).consume_job(CONTEXT)
