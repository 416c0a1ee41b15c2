"""The load options: defined once in ``kafka_mongo_etl.options``, the same at every hop (the DAG's
form, the ``drains`` plan, the operator, the drain's ``ConsumeJob``), and checked together once."""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from kafka_mongo_etl import options
from kafka_mongo_etl.ids import ID_STRATEGIES
from kafka_mongo_etl.operators import KafkaToMongoOperator, ProduceNumberedBatchOperator
from kafka_mongo_etl.options import (
    LOAD_OPTIONS,
    REQUIRED,
    check_options,
    consume_options,
    form_params,
    job_values,
    key_ids_problem,
    option_problems,
    with_current_names,
)
from kafka_mongo_etl.parallelism import PARALLELISM

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = {"dag": type("Dag", (), {"dag_id": "orders_dag"})(), "run_id": "manual__1"}
WHERE = {"topic": "orders", "mongo_db": "sales", "mongo_collection": "orders"}


def _job_field(job: Any, path: str) -> Any:
    for name in path.split("."):
        job = getattr(job, name)
    return job


def test_names_are_unique_and_choices_come_from_the_registries() -> None:
    from kafka_mongo_etl.drain import RETENTION_GAP_POLICIES
    from kafka_mongo_etl.write_models import WRITE_MODELS

    names = [found.name for found in LOAD_OPTIONS]
    assert len(names) == len(set(names))
    choices = {found.name: list(found.choices or ()) for found in LOAD_OPTIONS}
    assert choices["write_mode"] == list(WRITE_MODELS)
    assert choices["id_strategy"] == list(ID_STRATEGIES)
    assert choices["on_retention_gap"] == list(RETENTION_GAP_POLICIES)
    assert choices["parallelism"] == list(PARALLELISM)


def test_every_option_in_the_form_has_its_default_title_and_allowed_values() -> None:
    params = form_params()
    assert list(params) == [found.name for found in LOAD_OPTIONS if found.in_form]
    for found in LOAD_OPTIONS:
        if not found.in_form:
            continue
        param = params[found.name]
        expected = found.form_default if found.default is REQUIRED else found.default
        assert param.value == expected, found.name
        assert param.schema["title"] == found.title and param.description == found.description
        if found.choices:
            assert param.schema["enum"] == list(found.choices)
            assert param.schema["values_display"] == dict(found.choices)


def test_every_consume_option_is_an_operator_argument_with_the_same_default() -> None:
    signature = inspect.signature(KafkaToMongoOperator.__init__)
    for found in consume_options():
        parameter = signature.parameters[found.name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
        expected = inspect.Parameter.empty if found.default is REQUIRED else found.default
        assert parameter.default == expected, found.name
    with pytest.raises(TypeError, match="missing keyword arguments 'mongo_collection', 'mongo_db'"):
        KafkaToMongoOperator(task_id="load", topic="orders")


def test_the_produce_options_are_the_produce_operators_arguments() -> None:
    signature = inspect.signature(ProduceNumberedBatchOperator.__init__)
    for name in options.produce_option_names():
        assert name in signature.parameters
        # The operator may require what the form defaults (count); a default it has is the form's.
        assert signature.parameters[name].default in (inspect.Parameter.empty, options.option(name).default)


def _distinct(found: options.LoadOption) -> Any:
    """A value of the option other than its default, made from its schema (so that a new option
    needs no edit here)."""
    if found.choices:
        return next(choice for choice in found.choices if choice != found.default)
    kinds = found.schema["type"] if isinstance(found.schema["type"], list) else [found.schema["type"]]
    if "array" in kinds:
        return ["region", "order"]
    if "boolean" in kinds:
        return not found.default
    if "integer" in kinds:
        return (found.default or 0) + 1
    if "number" in kinds:
        return (found.default or 0) + 0.25
    return f"{found.name}-2"


def test_every_consume_option_given_to_the_operator_reaches_the_job() -> None:
    given = {found.name: _distinct(found) for found in consume_options()}
    job = KafkaToMongoOperator(task_id="load", **given).consume_job(CONTEXT)
    for found in consume_options():
        value = given[found.name]
        expected = found.to_job(value) if found.to_job else value
        assert _job_field(job, found.job_field) == expected, found.name


def test_the_forms_defaults_make_the_libraries_default_job() -> None:
    """The defaults agree at every hop: the form's, the operator's and ConsumeJob's own."""
    from kafka_mongo_etl.job import ConsumeJob

    from_form = {name: param.value for name, param in form_params().items()}
    planned = {found.name: from_form[found.name] for found in consume_options() if found.in_form}
    job = KafkaToMongoOperator(task_id="load", **{**planned, **WHERE}).consume_job(CONTEXT)
    assert job == ConsumeJob(
        kafka_conn_id="kafka_default",
        mongo_conn_id="mongo_default",
        batch="orders_dag/manual__1",
        run_id="manual__1",
        **WHERE,
    )


def test_templated_options_are_template_fields() -> None:
    templated = {found.name for found in consume_options() if found.templated}
    assert templated == {"topic", "mongo_db", "mongo_collection", "group_id"}
    assert templated <= set(KafkaToMongoOperator.template_fields)


def test_job_values_nest_dotted_fields_and_convert_rendered_templates() -> None:
    values = job_values({**WHERE, "stall_timeout": "5", "batch_size": "100", "group_id": ""})
    assert values["drain"] == {"stall_timeout": 5.0, "batch_size": 100}
    assert values["group_id"] is None  # an empty rendered template means the default group
    assert values["dead_letter_policy"] == {"max_count": 0, "max_ratio": None}


def test_earlier_names_are_accepted_with_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="kafka_mongo_etl.options"):
        moved = with_current_names({"consumer_group": "g", "stall_timeout_seconds": 9, "group_id": None})
    assert moved == {"group_id": "g", "stall_timeout": 9}
    assert "'consumer_group' is now called 'group_id'" in caplog.text
    # A value under the current name wins.
    assert with_current_names({"consumer_group": "old", "group_id": "new"}) == {"group_id": "new"}


def test_tombstone_deletes_need_ids_from_the_key_by_property_not_by_name() -> None:
    keyed = [name for name, strategy in ID_STRATEGIES.items() if strategy.from_key]
    for mode in options.WRITE_MODES.values():
        for strategy in ID_STRATEGIES:
            problem = key_ids_problem(mode.name, strategy)
            assert (problem is not None) == (mode.needs_key_ids and strategy not in keyed)
    assert "needs id_strategy 'key' (not 'field')" in key_ids_problem("delete_on_tombstone", "field")


def test_the_write_path_applies_the_same_rule() -> None:
    from kafka_mongo_etl.write_models import TOMBSTONE_MODES, record_builder

    assert TOMBSTONE_MODES == ("delete_on_tombstone", "cdc")
    with pytest.raises(ValueError, match="needs id_strategy 'key'"):
        record_builder("delete_on_tombstone", lambda message: message, lambda m, v: "x", "coordinates")


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"write_mode": "upsert"}, "unknown write_mode 'upsert'; choose one of replace, insert"),
        ({"on_retention_gap": "ignore"}, "unknown on_retention_gap 'ignore'"),
        ({"id_strategy": "uuid"}, "unknown id_strategy 'uuid'"),
        ({"id_strategy": "field", "write_mode": "delete_on_tombstone"}, "needs id_field"),
    ],
    ids=str,
)
def test_check_options_names_every_problem(values: dict, words: str) -> None:
    from kafka_mongo_etl.errors import ParamsRefusedError

    assert any(words in problem for problem in option_problems(values))
    with pytest.raises(ParamsRefusedError, match="Nothing was loaded; run again with other options"):
        check_options(values, done="Nothing was loaded")


def test_a_delete_on_tombstone_with_field_ids_names_both_problems() -> None:
    problems = option_problems({"id_strategy": "field", "write_mode": "delete_on_tombstone"})
    assert len(problems) == 2 and "needs id_field" in problems[0] and "tombstone" in problems[1]


def test_the_option_reference_in_docs_is_current() -> None:
    written = (ROOT / "docs" / "options.md").read_text()
    assert written == options.reference_markdown(), (
        "docs/options.md is out of date: PYTHONPATH=plugins .venv/bin/python -m kafka_mongo_etl.options "
        "> docs/options.md"
    )


NEW_OPTION = textwrap.dedent(
    """
    import importlib.util, inspect, json, sys
    from kafka_mongo_etl import options

    # The one edit: a new entry in the table (poll_timeout is a DrainSettings field).
    options.LOAD_OPTIONS.append(
        options.LoadOption(
            "poll_timeout", 1.0, {"type": "number", "minimum": 0.1}, "Poll timeout (s)",
            "How long one consume call waits.", readers=(options.CONSUME,),
            section=options.KAFKA_SECTION, job_field="drain.poll_timeout", to_job=float,
        )
    )
    spec = importlib.util.spec_from_file_location("kafka_to_mongo_dag", sys.argv[1])
    dag_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dag_module)
    dag = dag_module.kafka_to_mongo
    form = {name: dag.params[name] for name in dag.params}
    form["poll_timeout"] = 2.5
    # The drains task, with the run's params as the form would give them.
    dag_module.get_current_context = lambda: {"params": form}
    (planned,) = dag.get_task("drains").python_callable()
    from kafka_mongo_etl.operators import KafkaToMongoOperator
    operator = KafkaToMongoOperator(task_id="load", **planned)
    context = {"dag": dag, "run_id": "manual__1"}
    print(json.dumps({
        "form_default": dag.params.get_param("poll_timeout").value,
        "form_section": dag.params.get_param("poll_timeout").schema.get("section"),
        "planned": planned.get("poll_timeout"),
        "signature": str(inspect.signature(KafkaToMongoOperator.__init__).parameters["poll_timeout"]),
        "job": operator.consume_job(context).drain.poll_timeout,
    }))
    """
)


def test_a_new_option_reaches_the_form_the_plan_the_operator_and_the_job_without_further_edits() -> None:
    """Adding a load option is one entry in LOAD_OPTIONS (plus its behaviour): run in a fresh
    interpreter, where the entry is added before the operator and the DAG are imported."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", NEW_OPTION, str(ROOT / "dags" / "kafka_to_mongo.py")],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reached = json.loads(done.stdout.strip().splitlines()[-1])
    assert reached == {
        "form_default": 1.0,
        "form_section": options.KAFKA_SECTION,
        "planned": 2.5,
        "signature": "poll_timeout=1.0",
        "job": 2.5,
    }
