"""The topic map (``topics``): one run drains many topics into many collections, each with its
own options; checked once, with errors that name the topic and what to change."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from kafka_mongo_etl.errors import ParamsRefusedError
from kafka_mongo_etl.options import (
    LOAD_OPTIONS,
    TOPIC_MAP_SETS,
    check_options,
    drain_options,
    form_params,
    option_problems,
    topic_overridable,
)

ROOT = Path(__file__).resolve().parents[2]
RUN = {"topic": "demo", "mongo_db": "demo", "mongo_collection": "demo", "parallelism": "one task"}


def test_without_a_map_the_run_drains_its_one_topic() -> None:
    (drain,) = drain_options({**RUN, "count": 5, "batch_size": 7})
    assert drain == {**RUN, "batch_size": 7}


def test_each_topic_gets_its_target_and_its_overrides_over_the_runs_options() -> None:
    topics = {
        "orders": "shop.orders",
        "returns.v2": {
            "collection": "shop.returns.v2",
            "write_mode": "update",
            "id_strategy": "field",
            "id_field": "order",
            "parallelism": "per partition",
        },
    }
    values = {**RUN, "write_mode": "replace", "batch_size": 100, "topics": topics}
    assert option_problems(values) == []
    orders, returns = drain_options(values)
    assert orders == {
        "topic": "orders",
        "mongo_db": "shop",
        "mongo_collection": "orders",
        "write_mode": "replace",
        "batch_size": 100,
        "parallelism": "one task",
    }
    # A database name holds no '.', so the collection is everything after the first one.
    assert returns == {
        "topic": "returns.v2",
        "mongo_db": "shop",
        "mongo_collection": "returns.v2",
        "write_mode": "update",
        "id_strategy": "field",
        "id_field": "order",
        "batch_size": 100,
        "parallelism": "per partition",
    }


def test_every_drain_and_plan_option_can_be_set_per_topic_but_the_target() -> None:
    overridable = topic_overridable()
    assert {"write_mode", "id_strategy", "id_field", "id_fields", "group_id", "parallelism"} <= set(
        overridable
    )
    assert not set(overridable) & {*TOPIC_MAP_SETS, "topics", "count", "start", "partitions"}
    # Generic over the table: an option appended later is overridable without an edit here.
    assert overridable == [
        found.name
        for found in LOAD_OPTIONS
        if {"consume", "plan"} & set(found.readers) and found.name not in (*TOPIC_MAP_SETS, "topics")
    ]


@pytest.mark.parametrize(
    ("topics", "words"),
    [
        ({"orders": "orders"}, "topics['orders']: the target must be \"<database>.<collection>\""),
        ({"orders": {"write_mode": "update"}}, "the target must be"),
        ({"orders": 3}, 'give "<database>.<collection>" or an object, not 3'),
        ({"bad topic": "a.b"}, "topics['bad topic']: not a Kafka topic name"),
        ({"orders": "a b.c"}, "'a b' is not a usable mongo_db"),
        ({"orders": "shop.system.x"}, "'system.x' is not a usable mongo_collection"),
        ({"orders": {"collection": "a.b", "color": 1}}, "'color' cannot be set per topic; the options a"),
        (
            {"orders": {"collection": "a.b", "topic": "x"}},
            "'topic' cannot be set per topic (the entry's target",
        ),
        ({"orders": {"collection": "a.b", "write_mode": "upsert"}}, "write_mode 'upsert' is not allowed"),
        ({"orders": {"collection": "a.b", "batch_size": 0}}, "batch_size 0 is not allowed"),
        (
            {
                "orders": {
                    "collection": "a.b",
                    "write_mode": "delete_on_tombstone",
                    "id_strategy": "field",
                    "id_field": "x",
                }
            },
            "topics['orders']: write_mode 'delete_on_tombstone' deletes the document of a tombstone's key",
        ),
        ({"orders": {"collection": "a.b", "id_strategy": "field"}}, "topics['orders']: "),
        ({}, "topics must be an object"),
        (["orders"], "topics must be an object"),
    ],
)
def test_a_bad_map_is_refused_naming_the_topic_and_the_fix(topics: Any, words: str) -> None:
    with pytest.raises(ParamsRefusedError) as refused:
        check_options({**RUN, "topics": topics})
    assert words in str(refused.value)
    assert "Nothing was produced or loaded" in str(refused.value)


def test_every_bad_entry_is_named_at_once() -> None:
    problems = option_problems({**RUN, "topics": {"a": "x", "b": {"collection": "d.c", "write_mode": "no"}}})
    assert [problem.split(":")[0] for problem in problems] == ["topics['a']", "topics['b']"]


def test_the_form_offers_the_map_in_its_own_section() -> None:
    param = form_params()["topics"]
    assert param.value is None
    assert param.schema["section"] == "Many topics"
    param.resolve({"orders": "shop.orders", "returns": {"collection": "shop.returns"}})
    with pytest.raises(ValueError):
        param.resolve({"bad topic": "shop.orders"})


def _plan(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The DAG's ``drains`` task, run with ``params`` as the form would give them."""
    spec = importlib.util.spec_from_file_location("kafka_to_mongo_plan", ROOT / "dags" / "kafka_to_mongo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.kafka_to_mongo
    form = {name: dag.params[name] for name in dag.params}
    module.get_current_context = lambda: {"params": {**form, **params}}
    return dag.get_task("drains").python_callable()


def test_the_plan_maps_one_drain_per_topic_each_with_its_own_audit() -> None:
    planned = _plan(
        {
            "topics": {
                "orders": "shop.orders",
                "returns": {"collection": "shop.returns", "write_mode": "update"},
            }
        }
    )
    assert [(d["topic"], d["mongo_db"], d["mongo_collection"], d["write_mode"]) for d in planned] == [
        ("orders", "shop", "orders", "replace"),
        ("returns", "shop", "returns", "update"),
    ]
    assert [d["batch"] for d in planned] == [
        "{{ dag.dag_id }}/{{ run_id }}/orders",
        "{{ dag.dag_id }}/{{ run_id }}/returns",
    ]
    assert all(d["partitions"] is None and d["group_id"] is None for d in planned)


def test_without_a_map_the_plan_is_what_it_was() -> None:
    (planned,) = _plan({})
    assert "batch" not in planned and planned["topic"] == "testnum" and planned["partitions"] is None
