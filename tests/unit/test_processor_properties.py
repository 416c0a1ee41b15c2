"""Generated chains of post-processors over generated records (``kafka_mongo_etl.processors``).

- **One exit.** Whatever the chain and the record — hostile names and values, user functions that
  raise or return what MongoDB refuses, keys that are not JSON — the record path returns a
  document that obeys MongoDB's rules and carries the fence (``_kafka.applied``), or raises
  ``BadRecordError`` with a listed code. Nothing else.
- **In order.** A chain gives what its steps give one after the other: the same as chaining the
  one-step chains, and the same as a plain model of each step written here.

``make test`` runs a fixed sample (derandomized); ``RECORD_PATH_PROFILE=fuzz`` (``make fuzz``)
runs many more, new ones each time.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
from typing import Any

import bson
import hypothesis.strategies as st
from confluent_kafka import Message
from hypothesis import HealthCheck, event, given, settings

from kafka_mongo_etl import processors
from kafka_mongo_etl.records import BAD_RECORD_CODES, MAX_DOCUMENT_BYTES, MAX_NESTING, BadRecordError
from kafka_mongo_etl.write_models import record_path

FUZZ = os.environ.get("RECORD_PATH_PROFILE") == "fuzz"
PROFILE = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")) if FUZZ else 600,
    derandomize=not FUZZ,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HERE = __name__


# User functions a generated chain may call (by dotted path in this module).
def identity(value: dict[str, Any], message: Any) -> dict[str, Any]:
    return value


def count_fields(value: dict[str, Any], message: Any, field: str = "n") -> dict[str, Any]:
    value[field] = len(value)
    return value


def raises(value: dict[str, Any], message: Any) -> dict[str, Any]:
    raise RuntimeError("the user's code failed")


def returns_none(value: dict[str, Any], message: Any) -> None:
    return None


def returns_dollar(value: dict[str, Any], message: Any) -> dict[str, Any]:
    return {**value, "$bad": 1}


def returns_deep(value: dict[str, Any], message: Any) -> dict[str, Any]:
    deep: dict[str, Any] = {}
    for _ in range(MAX_NESTING + 5):
        deep = {"d": deep}
    return deep


def returns_huge_int(value: dict[str, Any], message: Any) -> dict[str, Any]:
    return {"n": 2**70}


def returns_int_name(value: dict[str, Any], message: Any) -> dict[str, Any]:
    return {"a": {1: "x"}}


FUNCTIONS = ["identity", "count_fields", "raises", "returns_none", "returns_dollar", "returns_deep"]
FUNCTIONS += ["returns_huge_int", "returns_int_name"]
DETERMINISTIC_FUNCTIONS = ["identity", "count_fields"]

# Names a record's fields and a chain's paths share, so that projections and renames hit; with
# names MongoDB refuses or UTF-8 cannot encode now and then.
NAMES = ["a", "b", "c", "id", "ab", "ba"]
RISKY_NAMES = ["$d", "x.y", "", "\x00", "é", "\ud800", "_id", "_kafka"]
names = st.one_of(st.sampled_from(NAMES), st.sampled_from(NAMES), st.sampled_from(RISKY_NAMES))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=4),
)


def json_values(leaves: st.SearchStrategy, name: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        leaves,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(name, inner, max_size=4)),
        max_leaves=12,
    )


ordinary_records = st.dictionaries(
    st.sampled_from(NAMES), json_values(scalars, st.sampled_from(NAMES)), max_size=5
)
hostile_records = st.dictionaries(names, json_values(scalars, names), max_size=5)

PATH_PARTS = ["a", "b", "c", "id", "*", "a?", "[ab]"]
paths = st.lists(st.sampled_from(PATH_PARTS), min_size=1, max_size=3).map(".".join)
plain_paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(".".join)


def projection(kind: str, on: str = "value") -> st.SearchStrategy:
    return st.lists(paths, min_size=1, max_size=3).map(
        lambda fields: {"type": kind, "fields": fields, "on": on}
    )


def renames(on: str = "value", *, path: st.SearchStrategy = paths) -> st.SearchStrategy:
    return st.dictionaries(path, st.sampled_from(["a", "b", "z", "renamed"]), min_size=1, max_size=2).map(
        lambda fields: {"type": "rename", "fields": fields, "on": on}
    )


def regex_renames(on: str = "value") -> st.SearchStrategy:
    return st.builds(
        lambda pattern, replace, where: {
            "type": "rename_regex",
            "pattern": pattern,
            "replace": replace,
            "on": on,
            **({"paths": where} if where else {}),
        },
        st.sampled_from(["a", "^b$", "[ab]", "^", "a$"]),
        st.sampled_from(["", "z", "$", ".", "ab"]),
        st.sampled_from([None, r"[^.]*", r".*\.a"]),
    )


deterministic_steps = st.one_of(
    projection("allow"),
    projection("block"),
    renames(),
    regex_renames(),
    st.builds(lambda nested: {"type": "remove_nulls", "nested": nested}, st.booleans()),
    st.builds(
        lambda name, field: (
            {"type": "function", "function": f"{HERE}.{name}", "kwargs": {"field": field}}
            if name == "count_fields"
            else {"type": "function", "function": f"{HERE}.{name}"}
        ),
        st.sampled_from(DETERMINISTIC_FUNCTIONS),
        st.sampled_from(["n", "a"]),
    ),
)
any_steps = st.one_of(
    deterministic_steps,
    st.builds(
        lambda fields: {"type": "kafka_metadata", "fields": fields},
        st.lists(st.sampled_from(processors.KAFKA_FIELDS), unique=True),
    ),
    st.builds(
        lambda kind, field: {"type": kind, "field": field},
        st.sampled_from(["insert_timestamp", "modify_timestamp"]),
        st.sampled_from(["a", "ts"]),
    ),
    st.sampled_from(FUNCTIONS).map(lambda name: {"type": "function", "function": f"{HERE}.{name}"}),
)
key_steps = st.one_of(
    projection("allow", "key"), projection("block", "key"), renames("key"), regex_renames("key")
)

keys = st.one_of(
    st.just(b"k"),
    st.just(b"k"),
    st.none(),
    st.binary(max_size=6),
    hostile_records.map(lambda key: json.dumps(key).encode()),
    ordinary_records.map(lambda key: json.dumps(key).encode()),
)
headers = st.lists(
    st.tuples(st.sampled_from(["h", "trace"]), st.one_of(st.none(), st.binary(max_size=4))), max_size=3
)


def encoded(value: Any) -> bytes | None:
    if isinstance(value, bytes) or value is None:
        return value
    return json.dumps(value).encode()


values = st.one_of(
    hostile_records,
    hostile_records,
    st.sampled_from([None, b"\xff", b"[1]", b"{", b'{"a": 1e400}', b'{"a": 99999999999999999999}']),
)


def _obeys_mongodbs_rules(document: dict[str, Any], partition: int, offset: int) -> None:
    """The stored document by MongoDB's rules, checked apart from the record path's own code."""
    assert list(document)[0] == "_id" and not isinstance(document["_id"], list)
    assert document["_kafka"]["applied"] == {f"t:{partition}": offset}, "the fence is always there"
    for name in document:
        assert not name.startswith("$"), name
    stack = [(document, 1)]
    while stack:
        container, depth = stack.pop()
        assert depth <= MAX_NESTING
        children = container.values() if isinstance(container, dict) else container
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))


@PROFILE
@given(
    specs=st.lists(any_steps, max_size=5),
    key_specs=st.lists(key_steps, max_size=2),
    value=values,
    key=keys,
    record_headers=headers,
    strategy=st.sampled_from(["key", "coordinates", "field"]),
    mode=st.sampled_from(["replace", "update", "insert", "delete_on_tombstone"]),
)
def test_a_chain_makes_a_document_mongodb_stores_or_a_dead_letter(
    specs: list[dict[str, Any]],
    key_specs: list[dict[str, Any]],
    value: Any,
    key: bytes | None,
    record_headers: list[tuple[str, bytes | None]],
    strategy: str,
    mode: str,
) -> None:
    if strategy != "key" or mode == "insert":
        key_specs = []  # key processors shape key _ids only (the option check says so)
    if mode == "delete_on_tombstone":
        strategy = "key"
    field = "id" if strategy == "field" else None
    to_document, _ = record_path(mode, strategy, field, None, specs + key_specs)
    message = Message(
        topic="t", partition=3, offset=11, key=key, value=encoded(value), headers=record_headers or None
    )
    try:
        document = to_document(message)
    except BadRecordError as err:
        assert err.code in BAD_RECORD_CODES and "t[3]@11" in str(err)
        event(f"dead letter: {err.code}")
        return
    if document.body is None:
        event("tombstone")
        assert value is None and mode == "delete_on_tombstone"
        return
    event("document")
    assert len(document.body.raw) <= MAX_DOCUMENT_BYTES
    stored = bson.decode(document.body.raw)
    _obeys_mongodbs_rules(stored, 3, 11)


# A plain model of each deterministic step, written apart from the processors' own code.
def _matches(name: str, part: str) -> bool:
    return fnmatch.fnmatchcase(name, part)


def model_allow(fields: dict[str, Any], patterns: list[list[str]]) -> dict[str, Any]:
    kept = {}
    for name, value in fields.items():
        matching = [pattern for pattern in patterns if _matches(name, pattern[0])]
        if any(len(pattern) == 1 for pattern in matching):
            kept[name] = value
            continue
        rest = [pattern[1:] for pattern in matching]
        if rest and isinstance(value, dict):
            kept[name] = model_allow(value, rest)
        elif rest and isinstance(value, list):
            kept[name] = [model_allow(item, rest) for item in value if isinstance(item, dict)]
    return kept


def model_block(fields: dict[str, Any], patterns: list[list[str]]) -> dict[str, Any]:
    kept = {}
    for name, value in fields.items():
        matching = [pattern for pattern in patterns if _matches(name, pattern[0])]
        if any(len(pattern) == 1 for pattern in matching):
            continue
        rest = [pattern[1:] for pattern in matching]
        if rest and isinstance(value, dict):
            value = model_block(value, rest)
        elif rest and isinstance(value, list):
            value = [model_block(item, rest) if isinstance(item, dict) else item for item in value]
        kept[name] = value
    return kept


class Conflict(Exception):
    pass


def model_rename(fields: dict[str, Any], new_name: Any, path: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in fields.items():
        here = (*path, name)
        if isinstance(value, dict):
            value = model_rename(value, new_name, here)
        elif isinstance(value, list):
            value = [model_rename(item, new_name, here) if isinstance(item, dict) else item for item in value]
        target = new_name(name, here)
        if target in out or (target != name and target in fields):
            raise Conflict
        out[target] = value
    return out


def model_without_nulls(fields: dict[str, Any], nested: bool) -> dict[str, Any]:
    out = {}
    for name, value in fields.items():
        if value is None:
            continue
        if nested and isinstance(value, dict):
            value = model_without_nulls(value, nested)
        elif nested and isinstance(value, list):
            value = [model_without_nulls(item, nested) if isinstance(item, dict) else item for item in value]
        out[name] = value
    return out


def model_step(fields: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    kind = spec["type"]
    if kind in ("allow", "block"):
        patterns = [path.split(".") for path in spec["fields"]]
        return (model_allow if kind == "allow" else model_block)(fields, patterns)
    if kind == "rename":
        table = [(path.split("."), name) for path, name in spec["fields"].items()]

        def by_map(name: str, here: tuple[str, ...]) -> str:
            for parts, target in table:
                if len(parts) == len(here) and all(map(_matches, here, parts)):
                    return target
            return name

        return model_rename(fields, by_map)
    if kind == "rename_regex":

        def by_regex(name: str, here: tuple[str, ...]) -> str:
            if "paths" in spec and not re.fullmatch(spec["paths"], ".".join(here)):
                return name
            return re.sub(spec["pattern"], spec["replace"], name)

        return model_rename(fields, by_regex)
    if kind == "remove_nulls":
        return model_without_nulls(fields, spec["nested"])
    assert kind == "function"
    if spec["function"].endswith(".count_fields"):
        return {**fields, spec["kwargs"]["field"]: len(fields)}
    return fields


def _dollar_name(fields: dict[str, Any]) -> bool:
    # The only MongoDB rule the ordinary names and the generated steps can break: a regex
    # rename to a top-level "$..." name (nesting, sizes and types stay within the rules).
    return any(name.startswith("$") for name in fields)


def model_chain(value: dict[str, Any], specs: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
    """The value the steps make one after the other, or the code of the first refusal: a rename
    conflict; a user function handed a value MongoDB refuses (it checks what it returns); at the
    end, MongoDB's rules."""
    fields = copy.deepcopy(value)
    fields.pop("_id", None)
    for spec in specs:
        try:
            fields = model_step(fields, spec)
        except Conflict:
            return fields, "rename_conflict"
        if spec["type"] == "function" and _dollar_name(fields):
            return fields, "function_result"
    return fields, "invalid_field" if _dollar_name(fields) else None


@PROFILE
@given(specs=st.lists(deterministic_steps, min_size=1, max_size=5), value=ordinary_records)
def test_the_chain_is_its_steps_one_after_the_other(
    specs: list[dict[str, Any]], value: dict[str, Any]
) -> None:
    message = Message(topic="t", partition=0, offset=5, key=b"k", value=json.dumps(value).encode())
    # The model, step by step: the value it ends with, or the first dead-letter code.
    expected, refusal = model_chain(value, specs)
    whole, _ = record_path("replace", processors=specs)
    try:
        document = bson.decode(whole(message).body.raw)
    except BadRecordError as err:
        assert err.code == refusal, err
        event(f"dead letter {err.code}, as the model")
        return
    assert refusal is None, f"the model says {refusal}"
    event("document, compared with the model")
    del document["_id"], document["_kafka"]
    assert document == expected
    # ... and the same as the one-step chains applied one after the other.
    chained = copy.deepcopy(value)
    chained.pop("_id", None)
    for spec in specs:
        chained = processors.build_chain([spec]).apply(chained, message, lambda fields: None)
        chained.pop("_id", None)
    assert chained == document
