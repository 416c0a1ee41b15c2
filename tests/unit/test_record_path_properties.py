"""Generated records through the pure record path: it returns a document MongoDB accepts, or
raises ``BadRecordError``; nothing else, ever.

Keys, headers and values are generated: arbitrary bytes, and JSON written by hand so it can hold
what ``json.dumps`` never writes — duplicate names, lone surrogate escapes, NUL, ``$`` and ``.``
in names, numbers beyond int64 and double, nesting around MongoDB's 100 levels and far past
Python's recursion limit — under every id strategy.

``make test`` runs the ``record-path`` profile (a fixed sample: derandomized, the same examples
every run); ``make fuzz`` runs ``RECORD_PATH_PROFILE=fuzz``, many more and new ones each time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import bson
import hypothesis.strategies as st
from confluent_kafka import Message
from hypothesis import HealthCheck, assume, event, given, settings

from kafka_mongo_etl.drain import Drain, PartitionProgress
from kafka_mongo_etl.ids import id_function
from kafka_mongo_etl.records import (
    BAD_RECORD_CODES,
    MAX_DOCUMENT_BYTES,
    MAX_NAME_PARTS,
    MAX_NESTING,
    BadRecordError,
    JsonDocuments,
    _decode_exactly,
    build_documents,
    decode_json,
    id_identity,
    json_document,
    where,
)

_COMMON = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
}
settings.register_profile("record-path", max_examples=1500, derandomize=True, **_COMMON)
settings.register_profile("fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "50000")), **_COMMON)
PROFILE = settings.get_profile(os.environ.get("RECORD_PATH_PROFILE", "record-path"))
# The properties with heavier examples (a drain batch, a 16 MiB document) run fewer of them.
BATCH_PROFILE = settings(PROFILE, max_examples=max(20, PROFILE.max_examples // 10))
SIZE_PROFILE = settings(PROFILE, max_examples=max(10, PROFILE.max_examples // 100))


@dataclass(frozen=True)
class Obj:
    """A JSON object as written: its pairs in order, duplicates allowed."""

    pairs: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Raw:
    """JSON text written as it is (number literals, deep nesting)."""

    text: str


def mostly(common: st.SearchStrategy, *rare: st.SearchStrategy, odds: int = 30) -> st.SearchStrategy:
    """``common``, and one of ``rare`` about once in ``odds`` draws (``one_of`` has no weights, and
    draws its branches about evenly whatever their number)."""
    return st.sampled_from([common] * odds + list(rare)).flatmap(lambda strategy: strategy)


# Most of a generated record is ordinary; each leaf and name is risky now and then, so a record
# usually holds one risk or none, and every kind of bad record turns up, as well as good ones.
ORDINARY = st.characters(codec="utf-8", exclude_characters="$.\x00")
# Characters that matter to MongoDB or to UTF-8.
TRICKY = '$.\x00\ud800\udfff\ud83d\ude00é"\\\n\t /aZ_'
tricky_text = st.text(st.one_of(st.sampled_from(TRICKY), st.characters()), min_size=1, max_size=8)
ordinary_names = st.text(ORDINARY, max_size=8)
LONE_SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\ud83d", "x\ude00"])
names = mostly(
    ordinary_names,
    tricky_text,
    st.sampled_from(["_id", "_kafka", "id", "num", "region", "$set", "$ref", "$id", "a.b", "", "\x00"]),
    LONE_SURROGATES,
    # Around the 255-part limit for dotted names.
    st.integers(MAX_NAME_PARTS - 2, MAX_NAME_PARTS + 1).map(lambda dots: "." * dots),
    odds=60,
)
NUMBER_LITERALS = [
    "0",
    "-0",
    "-0.0",
    "1E5",
    "0.1",
    "1e-400",
    "1e400",
    "-1e400",
    "1.7976931348623157e308",
    "NaN",
    "Infinity",
    "-Infinity",
    str(2**63 - 1),
    str(2**63),
    str(-(2**63)),
    str(-(2**63) - 1),
    "123456789012345678901234567890",
]
ordinary_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(ORDINARY, max_size=12),
)
risky_scalars = st.one_of(
    st.integers(),
    st.integers(-(2**63) - 2, 2**63 + 1),
    st.sampled_from(NUMBER_LITERALS).map(Raw),
    st.integers(19, 6000).map(lambda digits: Raw("9" * digits)),
    tricky_text,
    LONE_SURROGATES,
)


def deep(depth: int, kind: str, leaf: str) -> Raw:
    opening, closing = ('{"a":', "}") if kind == "object" else ("[", "]")
    return Raw(opening * depth + leaf + closing * depth)


nesting = st.builds(
    deep,
    st.one_of(st.integers(MAX_NESTING - 3, MAX_NESTING + 2), st.integers(1, 3000)),
    st.sampled_from(["object", "array"]),
    st.sampled_from(["1", "[]", "{}", '"x"']),
)
json_values = st.recursive(
    mostly(ordinary_scalars, risky_scalars, nesting, odds=40),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(st.tuples(names, children), max_size=5).map(lambda pairs: Obj(tuple(pairs))),
    ),
    max_leaves=20,
)
# What an id field holds, when there is one: mostly strings and numbers, sometimes anything.
id_field_values = st.one_of(
    st.text(ORDINARY, max_size=6),
    st.integers(-3, 3),
    st.floats(-3, 3),
    st.booleans(),
    st.lists(ordinary_scalars, max_size=2),
    st.lists(st.tuples(st.sampled_from(["a", "$a", "a.b", "\x00"]), ordinary_scalars), max_size=2).map(
        lambda pairs: Obj(tuple(pairs))
    ),
    json_values,
)


@st.composite
def objects(draw: st.DrawFn) -> Obj:
    pairs = draw(
        st.one_of(
            st.lists(st.tuples(names, json_values), max_size=8),
            # Wide: many names at one level.
            st.lists(st.tuples(names, ordinary_scalars), min_size=50, max_size=300),
        )
    )
    # The id fields, present more often than names drawn at random would be.
    for name in draw(st.lists(st.sampled_from(["id", "num", "region"]), unique=True)):
        pairs.insert(draw(st.integers(0, len(pairs))), (name, draw(id_field_values)))
    return Obj(tuple(pairs))


def to_json(value: Any, ascii_only: bool) -> str:
    """JSON text for a generated value; ``ascii_only`` writes non-ASCII characters as escapes."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Obj):
        return (
            "{" + ",".join(f"{to_json(k, ascii_only)}:{to_json(v, ascii_only)}" for k, v in value.pairs) + "}"
        )
    if isinstance(value, list):
        return "[" + ",".join(to_json(item, ascii_only) for item in value) + "]"
    # Strings with a lone surrogate can only be written as escapes (or as invalid UTF-8 below).
    return json.dumps(value, ensure_ascii=ascii_only)


@st.composite
def values(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.sampled_from(["object"] * 6 + ["json", "bytes", "tombstone"]))
    if kind == "tombstone":
        return None
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    text = to_json(
        draw(objects() if kind == "object" else json_values),
        ascii_only=draw(st.sampled_from([True, True, True, False])),
    )
    space = draw(st.sampled_from(["", "", "", " ", "\n\t", "\ufeff"]))
    # surrogatepass writes a lone surrogate as the three bytes UTF-8 forbids: not UTF-8.
    return (space + text + space).encode("utf-8", "surrogatepass")


keys = st.one_of(
    st.text(ORDINARY, max_size=24).map(str.encode),
    st.text(ORDINARY, max_size=24).map(str.encode),
    st.none(),
    st.binary(max_size=24),
    tricky_text.map(lambda text: text.encode("utf-8", "surrogatepass")),
)
headers = st.one_of(
    st.none(),
    st.lists(st.tuples(st.text(max_size=8), st.one_of(st.none(), st.binary(max_size=16))), max_size=3),
)
id_settings = st.one_of(
    st.just(("key", {})),
    st.just(("coordinates", {})),
    st.sampled_from(["id", "num", "_id", "$set", "a.b", ""]).map(
        lambda field: ("field", {"field": field or "id"})
    ),
    st.lists(st.sampled_from(["id", "num", "region"]), min_size=1, max_size=3, unique=True).map(
        lambda fields: ("fields", {"fields": fields})
    ),
)


@st.composite
def messages(draw: st.DrawFn, partition: int | None = None, offset: int | None = None) -> Message:
    return Message(
        topic=draw(st.sampled_from(["testnum", "t.v1-eu_2"])),
        partition=draw(st.integers(0, 11)) if partition is None else partition,
        offset=draw(st.integers(0, 2**62)) if offset is None else offset,
        key=draw(keys),
        value=draw(values()),
        headers=draw(headers),
    )


def mongodb_refusal(document: dict[str, Any]) -> str | None:
    """Why MongoDB (5.0+) would refuse ``document``, checked independently of the record path."""

    def depth(value: Any) -> int:
        if isinstance(value, dict):
            return 1 + max((depth(v) for v in value.values()), default=0)
        if isinstance(value, list):
            return 1 + max((depth(v) for v in value), default=0)
        return 0

    def names_in(value: Any) -> list[str]:
        if isinstance(value, dict):
            return [*value, *(n for v in value.values() for n in names_in(v))]
        if isinstance(value, list):
            return [n for v in value for n in names_in(v)]
        return []

    if list(document)[:1] != ["_id"]:
        return "_id is not first"
    if depth(document) > MAX_NESTING:
        return "too deep"
    if any(name.startswith("$") for name in document):
        return "top-level $ name"
    if any(name.count(".") >= MAX_NAME_PARTS for name in names_in(document)):
        return "too many dotted parts"
    _id = document["_id"]
    if isinstance(_id, list):
        return "array _id"
    if any(name.startswith("$") or "." in name for name in names_in(_id)):
        return "$ or . in an embedded _id"
    return None


def expected_document(message: Message, strategy: str, ids: dict[str, Any]) -> dict[str, Any]:
    """The document the record should make, derived from the JSON as Python reads it."""
    value = json.loads(message.value().decode("utf-8"))
    if strategy == "key":
        _id = message.key().decode("utf-8")
    elif strategy == "coordinates":
        _id = f"{message.topic()}:{message.partition()}:{message.offset()}"
    elif strategy == "field":
        _id = value[ids["field"]]
    else:
        _id = {field: value[field] for field in ids["fields"]}
    fields = {name: item for name, item in value.items() if name != "_id"}
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    position = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "applied": {f"{topic}:{partition}": offset},
    }
    return {"_id": _id, **fields, "_kafka": position}


def outcome(message: Message, strategy: str, ids: dict[str, Any]) -> str:
    """Run the record path on ``message`` and check whichever way it ends; returns its code."""
    try:
        document = json_document(id_function(strategy, **ids))(message)
    except BadRecordError as err:
        reason = str(err)
        assert err.code in BAD_RECORD_CODES, err.code
        assert where(message) in reason
        # The reason is stored in the dead letter: short, and encodable whatever the record held.
        assert len(reason) < 1000
        bson.encode({"reason": reason})
        return err.code
    raw = document.body.raw
    assert len(raw) <= MAX_DOCUMENT_BYTES
    decoded = bson.decode(raw)
    assert bson.encode(decoded) == raw  # round-trips
    assert mongodb_refusal(decoded) is None, mongodb_refusal(decoded)
    assert raw == bson.encode(expected_document(message, strategy, ids))
    assert bson.encode({"_id": document.id}) == bson.encode({"_id": decoded["_id"]})
    assert document.identity == id_identity(decoded["_id"])
    return "loaded"


@PROFILE
@given(message=messages(), id_setting=id_settings)
def test_every_record_becomes_a_document_mongodb_accepts_or_a_bad_record(message, id_setting) -> None:
    strategy, ids = id_setting
    event(outcome(message, strategy, ids))


def read_as(decode: Any, message: Message) -> str | tuple[str, str]:
    """What a decoder makes of a record: the value's repr (types, order, -0.0 and NaN included),
    or the error's code and reason."""
    try:
        return repr(decode(message))
    except BadRecordError as err:
        return err.code, str(err)


@PROFILE
@given(message=messages())
def test_the_fast_decoder_reads_every_value_as_the_reference_decoder_does(message) -> None:
    """msgspec reads most records; whatever it reads, and whatever it refuses, the outcome is the
    reference decoder's (json with the int64 and double hooks), to the letter of the reason."""
    assume(message.value() is not None)
    fast = read_as(decode_json, message)
    assert fast == read_as(lambda m: _decode_exactly(m.value(), m), message)
    event("read" if isinstance(fast, str) else fast[0])


class _DeadLetters:
    def write(self, dead_letters) -> None:  # pragma: no cover - build() never writes
        raise AssertionError("build() does not write")


records = st.tuples(keys, values(), headers)


@BATCH_PROFILE
@given(batch=st.lists(records, min_size=1, max_size=16), id_setting=id_settings)
def test_a_batch_of_generated_records_is_all_accounted_for(batch, id_setting) -> None:
    """The drain's build step: every record a document or a dead letter, in read order; nothing
    raised."""
    strategy, ids = id_setting
    batch = [
        Message(topic="testnum", partition=n % 3, offset=n // 3, key=key, value=value, headers=headers)
        for n, (key, value, headers) in enumerate(batch)
    ]
    to_document = json_document(id_function(strategy, **ids))
    drain = Drain(None, "testnum", "g", None, to_document, dead_letters=_DeadLetters())
    drain.summary.partitions = {p: PartitionProgress(start=0, end=10**6, committed=0) for p in range(3)}
    built = drain.build(batch)
    assert built.records == len(batch)
    assert len(built.documents) + len(built.dead) == len(batch)
    assert all(letter.code in BAD_RECORD_CODES and letter.stage == "decode" for letter in built.dead)
    assert built.next_offsets == {m.partition(): m.offset() + 1 for m in batch}
    # Every version kept, in read order (the write model folds versions of one _id).
    loadable = []
    for message in batch:
        try:
            to_document(message)
        except BadRecordError:
            continue
        loadable.append(message)
    assert [d.message for d in built.documents] == loadable


@SIZE_PROFILE
@given(
    margin=st.integers(-300, 300),
    key_bytes=st.integers(0, 4096),
    strategy=st.sampled_from(["key", "coordinates"]),
)
def test_16_mib_is_exact_whatever_the_key(margin, key_bytes, strategy) -> None:
    key = b"k" * key_bytes
    probe = Message(topic="t", partition=1, offset=2, key=key, value=b'{"blob": ""}')
    frame = len(json_document(id_function(strategy))(probe).body.raw)
    blob = MAX_DOCUMENT_BYTES - frame + margin
    assume(blob >= 0)
    message = Message(
        topic="t", partition=1, offset=2, key=key, value=json.dumps({"blob": "x" * blob}).encode()
    )
    assert outcome(message, strategy, {}) == ("loaded" if margin <= 0 else "too_large")


id_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.integers(-5, 5),
        st.floats(),
        st.integers(-5, 5).map(float),
        st.text(max_size=3),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.sampled_from("abc"), children, max_size=3)
    ),
    max_leaves=8,
)


def mongodb_same_id(a: Any, b: Any) -> bool:
    """MongoDB's equality of two _id values, written out by its rules (the oracle)."""
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, numbers) and isinstance(b, numbers):
        return (a != a and b != b) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(mongodb_same_id(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(mongodb_same_id(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def variant(value: Any, flip: int) -> Any:
    """A value MongoDB may or may not take for the same: numbers retyped, fields reordered."""
    if isinstance(value, bool):
        return int(value) if flip % 3 == 0 else value
    if isinstance(value, int) and abs(value) < 2**53:
        return float(value) if flip % 2 else value
    if isinstance(value, dict):
        items = [(k, variant(v, flip + 1)) for k, v in value.items()]
        return dict(reversed(items) if flip % 5 == 0 else items)
    if isinstance(value, list):
        return [variant(v, flip + i) for i, v in enumerate(value)]
    return value


@PROFILE
@given(a=id_values, flip=st.integers(0, 29), other=id_values)
def test_identity_is_mongodb_s_id_equality(a, flip, other) -> None:
    for b in (a, variant(a, flip), other):
        same = mongodb_same_id(a, b)
        assert (id_identity(a) == id_identity(b)) is same, (a, b)
        if same:
            assert hash(id_identity(a)) == hash(id_identity(b))


# Ordinary records, each of which the record path loads: a batch of them takes the batch path.
ordinary_objects = st.lists(
    st.tuples(
        ordinary_names,
        st.recursive(
            ordinary_scalars,
            lambda children: st.one_of(
                st.lists(children, max_size=3), st.dictionaries(ordinary_names, children, max_size=3)
            ),
            max_leaves=6,
        ),
    ),
    max_size=6,
).map(lambda pairs: Obj(tuple(pairs)))
ordinary_records = st.tuples(
    st.text(ORDINARY, min_size=1, max_size=12).map(str.encode),
    ordinary_objects.map(lambda value: to_json(value, ascii_only=False).encode()),
    st.none(),
)


def built_as(documents: list[Any], refused: list[Any]) -> tuple[list[Any], list[Any]]:
    """What a build made, comparably: each document's message, _id, identity and bytes; each
    refusal's message, code and reason."""
    return (
        [(d.message, bson.encode({"_id": d.id}), d.identity, bytes(d.body.raw)) for d in documents],
        [(message, err.code, str(err)) for message, err in refused],
    )


@BATCH_PROFILE
@given(
    batch=st.lists(ordinary_records, min_size=1, max_size=24),
    odd_ones=st.lists(st.tuples(st.integers(0, 23), records), max_size=2),
    id_setting=id_settings,
)
def test_a_batch_builds_exactly_what_its_records_build_one_by_one(batch, odd_ones, id_setting) -> None:
    """``build_documents`` (the batch path, with its screens over the whole batch) makes the same
    documents and the same refusals, to the byte and the letter, as the record path run on each
    record; a batch of ordinary records, now and then with a generated one of any kind."""
    strategy, ids = id_setting
    for at, record in odd_ones:
        batch.insert(min(at, len(batch)), record)
    messages = [
        Message(topic="t.v1-eu_2", partition=n % 3, offset=n // 3, key=key, value=value, headers=headers)
        for n, (key, value, headers) in enumerate(batch)
    ]
    to_document = json_document(id_function(strategy, **ids))
    assert isinstance(to_document, JsonDocuments)
    fast = to_document._chunk(messages, [m.value() for m in messages]) is not None
    event("batch path" if fast else "record by record")
    one_by_one: tuple[list[Any], list[Any]] = ([], [])
    for message in messages:
        try:
            one_by_one[0].append(to_document(message))
        except BadRecordError as err:
            one_by_one[1].append((message, err))
    assert built_as(*build_documents(to_document, messages)) == built_as(*one_by_one)
