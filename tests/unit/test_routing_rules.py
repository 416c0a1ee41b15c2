"""route_by: where a record's collection name is read, and which names are refused."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Message

from kafka_mongo_etl.ids import id_function
from kafka_mongo_etl.options import option_problems
from kafka_mongo_etl.records import BadRecordError, json_document
from kafka_mongo_etl.routing import Route, routed

WHERE = {"topic": "orders", "mongo_db": "shop", "mongo_collection": "orders"}


def built(route_by: str, value: dict, key: bytes = b"k"):
    message = Message(topic="orders", partition=0, offset=3, key=key, value=json.dumps(value).encode())
    return routed(json_document(id_function("key")), route_by, "shop")(message)


@pytest.mark.parametrize(
    ("route_by", "value", "key", "collection"),
    [
        ("value.kind", {"kind": "returns"}, b"k", "returns"),
        ("value.meta.kind", {"meta": {"kind": "returns"}}, b"k", "returns"),
        ("value.kind", {"other": 1}, b"k", None),
        ("value.kind", {"kind": None}, b"k", None),
        ("value.meta.kind", {"meta": "flat"}, b"k", None),
        ("key", {}, b"returns", "returns"),
        ("key.region", {}, b'{"region": "eu"}', "eu"),
        ("key.region", {}, b"not json", None),
    ],
)
def test_the_field_names_the_collection_and_a_missing_one_keeps_the_target(
    route_by, value, key, collection
) -> None:
    assert built(route_by, value, key).collection == collection


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        (7, "int 7, not a string"),
        ("$x", "not a collection name"),
        ("system.users", "not a collection name"),
        ("", "not a collection name"),
        ("x" * 201, "over 200 characters"),
    ],
)
def test_a_field_that_names_no_usable_collection_makes_a_dead_letter(kind, words) -> None:
    with pytest.raises(BadRecordError) as refused:
        built("value.kind", {"kind": kind})
    assert (
        refused.value.code == "bad_route"
        and words in str(refused.value)
        and "orders[0]@3" in str(refused.value)
    )


@pytest.mark.parametrize("route_by", ["value", "kind", "value..kind", "key."])
def test_a_route_that_names_no_field_is_refused(route_by) -> None:
    with pytest.raises(ValueError, match="names no field"):
        Route.parse(route_by)


def test_tombstone_modes_route_by_the_key_only() -> None:
    refused = option_problems({**WHERE, "write_mode": "delete_on_tombstone", "route_by": "value.kind"})
    assert any("tombstones, which have no value to route by" in problem for problem in refused)
    assert option_problems({**WHERE, "write_mode": "delete_on_tombstone", "route_by": "key.kind"}) == []


def test_route_by_can_be_set_per_topic() -> None:
    topics = {"orders": {"collection": "shop.orders", "route_by": "value.kind"}}
    assert option_problems({**WHERE, "topics": topics}) == []
    topics["orders"]["route_by"] = "value"
    assert any(
        "route_by 'value' is not allowed" in problem
        for problem in option_problems({**WHERE, "topics": topics})
    )
