"""The _id strategies: what each makes of a record, and the settings each refuses."""

from __future__ import annotations

import pytest
from confluent_kafka import Message

from kafka_mongo_etl.ids import ID_STRATEGIES, check_id_fields, default_group_id, id_function


def message(key: bytes | None = b"k") -> Message:
    return Message(topic="t", partition=2, offset=7, key=key, value=b"{}")


def test_every_strategy_is_named_and_says_what_it_needs() -> None:
    assert tuple(ID_STRATEGIES) == ("key", "coordinates", "field", "fields")
    assert all(name == strategy.name for name, strategy in ID_STRATEGIES.items())
    # Only the key survives a tombstone (a record without a value).
    assert [name for name, strategy in ID_STRATEGIES.items() if strategy.from_key] == ["key"]
    assert {name: strategy.needs for name, strategy in ID_STRATEGIES.items()} == {
        "key": (),
        "coordinates": (),
        "field": ("id_field",),
        "fields": ("id_fields",),
    }


def test_the_default_group_is_one_per_target() -> None:
    assert default_group_id("shop", "orders") == "kafka_to_mongo.shop.orders"
    assert default_group_id("shop", "orders") != default_group_id("shop", "returns")


def test_key_and_coordinates() -> None:
    assert id_function("key")(message(), {}) == "k"
    assert id_function("key")(message("é".encode()), {}) == "é"
    assert id_function("coordinates")(message(None), {}) == "t:2:7"
    with pytest.raises(ValueError, match="no key; use id_strategy 'coordinates', 'field' or 'fields'"):
        id_function("key")(message(None), {})
    with pytest.raises(UnicodeDecodeError):
        id_function("key")(message(b"\xff"), {})


@pytest.mark.parametrize("found", ["A-1", 7, 7.5, True, {"region": "eu", "n": 1}, [1, 2], ""], ids=repr)
def test_field_takes_the_value_whatever_its_type(found) -> None:
    # An array is returned as well: the record path refuses it as an _id (invalid_id).
    assert id_function("field", "order")(message(), {"order": found, "num": 1}) == found


@pytest.mark.parametrize(
    ("value", "words"), [({"num": 1}, "'order' is missing"), ({"order": None}, "'order' is null")]
)
def test_field_without_a_value_is_refused(value, words) -> None:
    with pytest.raises(ValueError, match=words):
        id_function("field", "order")(message(), value)


def test_fields_make_an_embedded_document_in_the_order_given() -> None:
    by_region_then_order = id_function("fields", fields=["region", "order"])
    _id = by_region_then_order(message(), {"order": 7, "num": 1, "region": "eu"})
    assert list(_id.items()) == [("region", "eu"), ("order", 7)]
    # Types are kept apart: a joined string would make these one _id.
    assert by_region_then_order(message(), {"region": "1", "order": 2}) != by_region_then_order(
        message(), {"region": 1, "order": 2}
    )
    assert id_function("fields", fields=("a|b", "c"))(message(), {"a|b": "x", "c": "y"}) != id_function(
        "fields", fields=("a", "b|c")
    )(message(), {"a": "x", "b|c": "y"})


def test_fields_without_a_value_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match=r"\['region', 'day'\] are missing or null"):
        id_function("fields", fields=["region", "order", "day"])(message(), {"order": 1, "day": None})


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (None, "needs id_fields"),
        ([], "needs id_fields"),
        ("region", "needs id_fields"),
        (["a", "a"], "names a field twice"),
        (["$a"], "cannot be field names in an _id"),
        (["a.b"], "cannot be field names in an _id"),
        ([""], "cannot be field names in an _id"),
        (["a\x00"], "cannot be field names in an _id"),
        ([f"f{n}" for n in range(17)], "at most 16"),
    ],
    ids=repr,
)
def test_fields_settings_that_cannot_work_are_refused(fields, words) -> None:
    with pytest.raises(ValueError, match=words):
        id_function("fields", fields=fields)
    with pytest.raises(ValueError, match=words):
        check_id_fields(fields)


def test_field_needs_its_field_and_unknown_strategies_are_refused() -> None:
    with pytest.raises(ValueError, match="id_field"):
        id_function("field")
    with pytest.raises(
        ValueError, match="unknown id_strategy 'uuid'; choose one of key, coordinates, field, fields"
    ):
        id_function("uuid")
