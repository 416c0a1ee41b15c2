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
    assert sorted(dagbag.dag_ids) == ["kafka_to_mongo"]


def test_tasks_and_edge(dag) -> None:
    assert sorted(dag.task_ids) == ["consume", "produce"]
    assert dag.get_task("produce").downstream_task_ids == {"consume"}
    assert dag.get_task("consume").upstream_task_ids == {"produce"}


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
    """JSON schema in Airflow 3.3 validates one param at a time; the rest is check_params, which the
    run calls before producing, and which fails without retries."""
    from airflow.sdk.exceptions import AirflowFailException

    from kafka_mongo_etl.errors import ParamsRefusedError
    from kafka_mongo_etl.params import check_params

    values = _validated(dag, conf)  # each param alone is fine
    if words is None:
        check_params(values)
        return
    with pytest.raises(ParamsRefusedError, match=words) as err:
        check_params(values)
    assert isinstance(err.value, AirflowFailException)
    assert "Nothing was produced" in str(err.value)


def test_the_last_number_must_fit_int64_exactly() -> None:
    # The form's bound on start holds for any count; the exact rule is check_params'.
    from kafka_mongo_etl.params import param_problems

    assert param_problems({"start": 2**63 - 11, "count": 11}) == []
    (problem,) = param_problems({"start": 2**63 - 10, "count": 11})
    assert "is beyond int64" in problem and f"at most {2**63 - 11} for 11 records" in problem


def test_airflow_has_no_schema_across_params() -> None:
    """The reason for check_params: a DAG's params are validated one by one, each by its own schema
    (if Airflow grows a cross-param schema, this fails and the conditional can move to the form)."""
    import inspect

    from airflow.sdk.definitions.param import ParamsDict

    source = inspect.getsource(ParamsDict.validate)
    assert "v.resolve(" in source and "schema" not in source


def test_the_form_reads_top_down(dag) -> None:
    assert list(dag.params)[:5] == ["count", "start", "topic", "mongo_db", "mongo_collection"]
