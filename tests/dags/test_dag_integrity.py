"""The DAG folder imports cleanly and kafka_to_mongo has the shape the README promises."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import ParamValidationError

DAGS = Path(__file__).resolve().parents[2] / "dags"
ALLOWED_TAGS = {"kafka", "mongodb", "etl"}


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def dag(dagbag: DagBag):
    return dagbag.dags["kafka_to_mongo"]


def test_dag_folder_has_no_import_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dag_ids) == [
        "kafka_to_mongo",
        "kafka_to_mongo_after_load",
        "kafka_to_mongo_on_arrival",
        "kafka_to_mongo_replay",
    ]


def test_every_dag_survives_serialization(dagbag: DagBag) -> None:
    """The scheduler and the workers see the serialized DAG: mapped kwargs and aliases included."""
    from airflow.serialization.serialized_objects import DagSerialization

    for dag_id, dag in dagbag.dags.items():
        restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        assert sorted(restored.task_ids) == sorted(dag.task_ids), dag_id


def test_tasks_and_edges(dag) -> None:
    assert sorted(dag.task_ids) == ["consume", "drains", "produce"]
    assert dag.get_task("produce").downstream_task_ids == {"drains", "consume"}
    assert dag.get_task("drains").downstream_task_ids == {"consume"}
    assert dag.get_task("consume").upstream_task_ids == {"produce", "drains"}


def test_the_tasks_are_the_packages_operators_and_consume_is_mapped_over_the_drains(dag) -> None:
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    from kafka_mongo_etl.operators import KafkaToMongoOperator, ProduceNumberedBatchOperator

    produce, consume = dag.get_task("produce"), dag.get_task("consume")
    assert isinstance(produce, ProduceNumberedBatchOperator)
    assert isinstance(consume, MappedOperator) and consume.operator_class is KafkaToMongoOperator
    assert consume.partial_kwargs["kafka_conn_id"] == "kafka_default"
    assert consume.partial_kwargs["mongo_conn_id"] == "mongo_default"
    assert produce.topic == "{{ params.topic }}" and produce.count == "{{ params.count }}"


def test_consume_reports_its_collection_and_produce_its_topic_through_asset_aliases(dag) -> None:
    from airflow.sdk import AssetAlias

    from kafka_mongo_etl.lineage import LOADS_ALIAS, PRODUCED_ALIAS

    assert dag.get_task("consume").outlets == [AssetAlias(LOADS_ALIAS)]
    assert dag.get_task("produce").outlets == [AssetAlias(PRODUCED_ALIAS)]


def test_schedule_retries_and_tags(dag) -> None:
    assert dag.catchup is False
    assert dag.schedule == "@hourly"
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id
        assert task.retry_exponential_backoff, task.task_id
        assert task.execution_timeout is not None, task.task_id
    assert set(dag.tags) <= ALLOWED_TAGS and dag.tags
    assert "exactly once" in (dag.doc_md or "").lower()


def _validated(dag, conf: dict) -> dict:
    params = copy.deepcopy(dag.params)
    params.update(conf)
    return params.validate()


def test_default_params_are_the_tutorials(dag) -> None:
    values = _validated(dag, {})
    assert {k: values[k] for k in ("topic", "count", "start", "mongo_db", "mongo_collection")} == {
        "topic": "testnum",
        "count": 500,
        "start": 0,
        "mongo_db": "testnum",
        "mongo_collection": "testnum",
    }


def test_every_param_has_a_title_and_description(dag) -> None:
    for name in dag.params:
        param = dag.params.get_param(name)
        assert param.schema.get("title") and param.description, name


@pytest.mark.parametrize(
    "conf",
    [
        {"count": 0},
        {"count": -1},
        {"count": 10_000_001},
        {"count": "many"},
        {"topic": "with space"},
        {"topic": ".."},
        {"topic": "x" * 250},
        {"mongo_collection": "system.users"},
        {"mongo_collection": "a$b"},
        {"mongo_db": "a.b"},
        {"start": -5},
        {"start": 2**63 - 10_000_000 + 1},
        {"id_strategy": "uuid"},
        {"id_field": ""},
        {"id_fields": []},
        {"id_fields": ["a", "a"]},
        {"id_fields": ["$a"]},
        {"id_fields": ["a.b"]},
        {"id_fields": [""]},
        {"id_fields": "region"},
        {"id_fields": [f"f{n}" for n in range(17)]},
        {"on_retention_gap": "ignore"},
    ],
    ids=str,
)
def test_params_schema_rejects_bad_input(dag, conf: dict) -> None:
    with pytest.raises(ParamValidationError):
        _validated(dag, conf)


def test_params_schema_accepts_good_input(dag) -> None:
    values = _validated(dag, {"count": 10_000_000, "topic": "orders.v1-eu_2", "start": 7})
    assert (values["count"], values["topic"], values["start"]) == (10_000_000, "orders.v1-eu_2", 7)


def test_dag_factory_takes_connection_ids() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("kafka_to_mongo_dagfile", DAGS / "kafka_to_mongo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    other = module.build_kafka_to_mongo(
        dag_id="kafka_to_mongo_eu", kafka_conn_id="kafka_eu", mongo_conn_id="mongo_eu", schedule=None
    )
    assert other.dag_id == "kafka_to_mongo_eu"
    assert other.start_date == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("conf", "words"),
    [
        ({"topic": "bad topic"}, "letters, digits"),
        ({"mongo_db": "a.b"}, "at most 63 characters"),
        ({"mongo_collection": "system.x"}, "does not start with"),
        ({"count": 0}, "minimum of 1"),
    ],
    ids=str,
)
def test_validation_errors_say_what_is_allowed(dag, conf: dict, words: str) -> None:
    with pytest.raises(ParamValidationError, match=words):
        _validated(dag, conf)


def test_new_params_accept_what_works(dag) -> None:
    values = _validated(
        dag,
        {
            "start": 2**63 - 10_000_000,
            "count": 10_000_000,
            "id_strategy": "fields",
            "id_fields": ["region", "order_id"],
            "on_retention_gap": "skip",
        },
    )
    assert values["id_fields"] == ["region", "order_id"] and values["on_retention_gap"] == "skip"
    assert _validated(dag, {})["on_retention_gap"] == "fail"
    assert _validated(dag, {})["id_fields"] is None


@pytest.mark.parametrize(
    ("conf", "words"),
    [
        ({"id_strategy": "field"}, "id_strategy 'field' needs id_field"),
        ({"id_strategy": "fields"}, "id_strategy 'fields' needs id_fields"),
        ({"id_strategy": "fields", "id_field": "order"}, "needs id_fields"),
        ({"start": 2**63 - 10_000_000, "count": 10_000_000}, None),
        ({"mongo_db": "d" * 63, "mongo_collection": "c" * 200}, "dead-letter namespace"),
        ({"mongo_db": "é" * 40}, "80 bytes in UTF-8"),
        ({"write_mode": "delete_on_tombstone", "id_strategy": "coordinates"}, "needs id_strategy 'key'"),
        ({"write_mode": "delete_on_tombstone"}, None),
    ],
    ids=str,
)
def test_params_that_cannot_work_together_fail_the_run_at_once(dag, conf: dict, words: str | None) -> None:
    """JSON schema in Airflow 3.3 validates one param at a time; the rest is check_options, which the
    run calls before producing, and which fails without retries."""
    from airflow.sdk.exceptions import AirflowFailException

    from kafka_mongo_etl.errors import ParamsRefusedError
    from kafka_mongo_etl.options import check_options

    values = _validated(dag, conf)  # each param alone is fine
    if words is None:
        check_options(values)
        return
    with pytest.raises(ParamsRefusedError, match=words) as err:
        check_options(values)
    assert isinstance(err.value, AirflowFailException)
    assert "Nothing was produced" in str(err.value)


def test_the_last_number_must_fit_int64_exactly() -> None:
    # The form's bound on start holds for any count; the exact rule is option_problems'.
    from kafka_mongo_etl.options import option_problems

    assert option_problems({"start": 2**63 - 11, "count": 11}) == []
    (problem,) = option_problems({"start": 2**63 - 10, "count": 11})
    assert "is beyond int64" in problem and f"at most {2**63 - 11} for 11 records" in problem


def test_airflow_has_no_schema_across_params() -> None:
    """The reason for check_options: a DAG's params are validated one by one, each by its own schema
    (if Airflow grows a cross-param schema, this fails and the conditional can move to the form)."""
    import inspect

    from airflow.sdk.definitions.param import ParamsDict

    source = inspect.getsource(ParamsDict.validate)
    assert "v.resolve(" in source and "schema" not in source


def test_parallelism_is_one_task_by_default_and_per_partition_on_request(dag) -> None:
    assert _validated(dag, {})["parallelism"] == "one task"
    assert _validated(dag, {"parallelism": "per partition"})["parallelism"] == "per partition"
    with pytest.raises(ParamValidationError):
        _validated(dag, {"parallelism": "per broker"})


def test_produce_refuses_conflicting_params_before_it_sends(dag) -> None:
    from kafka_mongo_etl.errors import ParamsRefusedError

    hook = dag.get_task("produce")._pre_execute_hook
    hook({"params": _validated(dag, {})})  # the defaults work together
    with pytest.raises(ParamsRefusedError, match="needs id_field"):
        hook({"params": _validated(dag, {"id_strategy": "field"})})


def test_the_form_reads_top_down(dag) -> None:
    assert list(dag.params)[:5] == ["count", "start", "topic", "mongo_db", "mongo_collection"]


def test_on_arrival_watches_testnum_and_shares_the_lease_of_kafka_to_mongo(dagbag: DagBag, dag) -> None:
    from kafka_mongo_etl.arrivals import NewRecordsTrigger
    from kafka_mongo_etl.ids import default_group_id
    from kafka_mongo_etl.operators import KafkaToMongoOperator

    on_arrival = dagbag.dags["kafka_to_mongo_on_arrival"]
    (watched,) = on_arrival.timetable.asset_condition.objects
    (watcher,) = watched.watchers
    assert isinstance(watcher.trigger, NewRecordsTrigger)
    classpath, kwargs = watcher.trigger.serialize()
    assert classpath == "kafka_mongo_etl.arrivals.NewRecordsTrigger"
    assert (kwargs["topic"], kwargs["kafka_conn_id"]) == ("testnum", "kafka_default")
    # The trigger watches the lag of the very group the drain commits for; the scheduled DAG's
    # default group for the same target is the same, so both take the same lease.
    assert kwargs["group_id"] == default_group_id("testnum", "testnum")
    assert _validated(dag, {})["group_id"] is None  # kafka_to_mongo: the default group
    (consume,) = on_arrival.tasks
    assert isinstance(consume, KafkaToMongoOperator)
    assert (consume.topic, consume.mongo_db, consume.mongo_collection) == ("testnum", "testnum", "testnum")
    assert consume.group_id == kwargs["group_id"]
    assert on_arrival.max_active_runs == 1
    assert consume.retries >= 2 and consume.execution_timeout is not None


def test_after_load_is_scheduled_on_the_collections_asset(dagbag: DagBag) -> None:
    after_load = dagbag.dags["kafka_to_mongo_after_load"]
    uris = [asset.uri for asset in after_load.timetable.asset_condition.objects]
    assert uris == ["mongodb://127.0.0.1:27017/testnum/testnum"]


def test_the_operators_in_a_dag_of_someone_elses_serialize_with_their_templates_and_mappings() -> None:
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    from kafka_mongo_etl.operators import KafkaToMongoOperator, ProduceNumberedBatchOperator

    with DAG("theirs", schedule="@daily", start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)) as theirs:
        produce = ProduceNumberedBatchOperator(
            task_id="make", topic="{{ ds_nodash }}_orders", count=10, kafka_conn_id="kafka_eu"
        )
        whole = KafkaToMongoOperator(
            task_id="load",
            topic="{{ ds_nodash }}_orders",
            mongo_db="sales",
            mongo_collection="orders",
            kafka_conn_id="kafka_eu",
            mongo_conn_id="mongo_eu",
            produced=produce.output,
        )
        per_partition = KafkaToMongoOperator.partial(
            task_id="load_each", topic="orders", mongo_db="sales", mongo_collection="orders_by_partition"
        ).expand(partitions=[[0], [1], [2]])
        produce >> per_partition

    restored = DagSerialization.from_dict(DagSerialization.to_dict(theirs))
    assert sorted(restored.task_ids) == ["load", "load_each", "make"]
    assert restored.get_task("load").upstream_task_ids == {"make"}
    assert {"topic", "mongo_db", "mongo_collection", "kafka_conn_id", "mongo_conn_id"} <= set(
        restored.get_task("load").template_fields
    )
    assert whole.topic == "{{ ds_nodash }}_orders" and whole.kafka_conn_id == "kafka_eu"
    assert per_partition.expand_input.value["partitions"] == [[0], [1], [2]]


def test_a_conf_with_the_old_option_names_still_reaches_the_drains(dag, monkeypatch) -> None:
    """consumer_group and stall_timeout_seconds are now group_id and stall_timeout (the operator's
    names); a run's conf with the old names loads as it did, with a warning."""
    import sys

    values = _validated(dag, {"consumer_group": "orders-loader", "stall_timeout_seconds": 90})
    drains = dag.get_task("drains")
    monkeypatch.setattr(
        sys.modules[drains.python_callable.__module__], "get_current_context", lambda: {"params": values}
    )
    (planned,) = drains.python_callable()
    assert (planned["group_id"], planned["stall_timeout"]) == ("orders-loader", 90)
    assert "consumer_group" not in planned and "stall_timeout_seconds" not in planned


@pytest.fixture(scope="module")
def replay_dag(dagbag: DagBag):
    return dagbag.dags["kafka_to_mongo_replay"]


def test_replay_is_triggered_by_hand_with_retries_and_allowed_tags(replay_dag) -> None:
    assert replay_dag.schedule is None
    assert replay_dag.task_ids == ["replay"]
    (task,) = replay_dag.tasks
    assert task.retries >= 2 and task.retry_exponential_backoff and task.execution_timeout is not None
    assert set(replay_dag.tags) <= ALLOWED_TAGS and replay_dag.tags
    assert "exactly once" in (replay_dag.doc_md or "").lower()


def test_the_replay_form_reuses_the_load_options(replay_dag) -> None:
    from kafka_mongo_etl.options import option

    for name in ("mongo_db", "mongo_collection", "write_mode", "id_strategy", "id_field", "id_fields"):
        ours, theirs = replay_dag.params.get_param(name).schema, option(name).param().schema
        assert {k: v for k, v in ours.items() if k != "section"} == {
            k: v for k, v in theirs.items() if k != "section"
        }, name
    for name in replay_dag.params:
        param = replay_dag.params.get_param(name)
        assert param.schema.get("title") and param.description, name
    values = _validated(replay_dag, {})
    assert (values["mongo_conn_id"], values["write_mode"], values["run_id"], values["codes"]) == (
        "mongo_default",
        "replace",
        None,
        None,
    )
    picked = _validated(replay_dag, {"codes": ["rejected"], "ids": ["t:0:1"], "failed_after": "2026-12-06"})
    assert (picked["codes"], picked["ids"]) == (["rejected"], ["t:0:1"])


@pytest.mark.parametrize(
    "conf",
    [{"codes": []}, {"codes": "rejected"}, {"ids": [""]}, {"write_mode": "upsert"}, {"batch_size": 0}],
    ids=str,
)
def test_the_replay_form_rejects_bad_input(replay_dag, conf: dict) -> None:
    with pytest.raises(ParamValidationError):
        _validated(replay_dag, conf)


def test_the_replay_task_refuses_an_empty_selection_without_retries(replay_dag) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from kafka_mongo_etl.replay import run_replay

    with pytest.raises(AirflowFailException, match="no dead letters selected"):
        run_replay(_validated(replay_dag, {}))
