"""Pure logic: record decoding by MongoDB's rules, _id identity, where a drain starts, the
dead-letter policy."""

from __future__ import annotations

import json

import bson
import pytest
from bson.raw_bson import RawBSONDocument
from confluent_kafka import KafkaError, Message, TopicPartition

from kafka_mongo_etl import records
from kafka_mongo_etl.drain import start_offsets
from kafka_mongo_etl.errors import OffsetAboveWatermarkError, RetentionGapError
from kafka_mongo_etl.ids import batch_id, id_function, record_key
from kafka_mongo_etl.records import (
    BAD_RECORD_CODES,
    MAX_DOCUMENT_BYTES,
    MAX_NESTING,
    BadRecordError,
    id_identity,
    json_document,
)
from kafka_mongo_etl.tasks import DeadLetterPolicy, default_group_id


def message(value: bytes | None, key: bytes | None = b"k", offset: int = 7) -> Message:
    return Message(topic="t", partition=2, offset=offset, key=key, value=value)


def test_keys_are_stable_per_run_and_number() -> None:
    batch = batch_id("kafka_to_mongo", "backfill__2026-01-01T00:00:00+00:00")
    assert record_key(batch, 3) == "kafka_to_mongo/backfill__2026-01-01T00:00:00+00:00/3"
    assert record_key(batch, 3) != record_key(batch_id("kafka_to_mongo", "manual__x"), 3)


def test_id_strategies() -> None:
    value = {"num": 5, "order": "A-1"}
    assert id_function("key")(message(b"{}"), value) == "k"
    assert id_function("coordinates")(message(b"{}"), value) == "t:2:7"
    assert id_function("field", "order")(message(b"{}"), value) == "A-1"
    with pytest.raises(ValueError, match="id_field"):
        id_function("field")
    with pytest.raises(ValueError, match="unknown id_strategy 'uuid'"):
        id_function("uuid")


def test_json_document_keeps_the_value_and_where_it_came_from() -> None:
    to_document = json_document(id_function("key"))
    document = to_document(message(b'{"num": 1, "_id": "ignored"}'))
    assert document.id == "k"
    assert bson.decode(document.body.raw) == {
        "_id": "k",
        "num": 1,
        "_kafka": {"topic": "t", "partition": 2, "offset": 7, "applied": {"t:2": 7}},
    }


@pytest.mark.parametrize(
    ("value", "key", "code"),
    [
        (None, b"k", "tombstone"),
        (b"\xff\xfe", b"k", "not_utf8"),
        (b"{oops", b"k", "not_json"),
        (b"42", b"k", "not_object"),
        (b'{"$inc": {"num": 1}}', b"k", "invalid_field"),
        (b'{"num": 1}', None, "no_id"),
    ],
)
def test_json_document_refuses_what_cannot_be_a_document(value, key, code) -> None:
    with pytest.raises(BadRecordError, match=r"t\[2\]@7|record") as err:
        json_document(id_function("key"))(message(value, key=key))
    assert err.value.code == code


def test_over_16_mib_is_refused_and_under_is_not() -> None:
    to_document = json_document(id_function("key"))
    just_under = json.dumps({"blob": "x" * (16 * 1024 * 1024 - 64 * 1024)}).encode()
    assert to_document(message(just_under)).id == "k"
    over = json.dumps({"blob": "x" * (16 * 1024 * 1024)}).encode()
    with pytest.raises(BadRecordError) as err:
        to_document(message(over))
    assert err.value.code == "too_large"


def test_dead_letter_policy() -> None:
    assert DeadLetterPolicy().breach(0, 100) is None
    assert DeadLetterPolicy().breach(1, 100) == "1 dead letters, more than the limit of 0"
    assert DeadLetterPolicy(max_count=5).breach(5, 10) is None
    assert DeadLetterPolicy(max_count=None, max_ratio=0.1).breach(10, 100) is None
    assert "11.0%" in DeadLetterPolicy(max_count=None, max_ratio=0.1).breach(11, 100)
    assert DeadLetterPolicy(max_count=None, max_ratio=None).breach(10**6, 10**6) is None


def test_default_group_names_the_target() -> None:
    assert default_group_id("testnum", "testnum") == "kafka_to_mongo.testnum.testnum"


def test_utf16_json_is_not_taken_for_utf8() -> None:
    utf16 = '{"num": 1}'.encode("utf-16")
    with pytest.raises(BadRecordError) as err:
        json_document(id_function("key"))(message(utf16))
    assert err.value.code == "not_utf8"


def refused(value: bytes | None, key: bytes | None = b"k", strategy: str = "key", **ids) -> BadRecordError:
    with pytest.raises(BadRecordError) as err:
        json_document(id_function(strategy, **ids))(message(value, key=key))
    assert "t[2]@7" in str(err.value)
    assert err.value.code in BAD_RECORD_CODES
    return err.value


def loaded(value: bytes, key: bytes | None = b"k", strategy: str = "key", **ids) -> dict:
    document = json_document(id_function(strategy, **ids))(message(value, key=key))
    return bson.decode(document.body.raw)


def nested(levels: int, leaf: str = "1", container: str = "object") -> bytes:
    """A JSON object of ``levels`` levels of nesting, counted as MongoDB does (the document is 1)."""
    text = leaf
    for _ in range(levels - 1):
        text = f'{{"a": {text}}}' if container == "object" else f"[{text}]"
    return f'{{"a": {text}}}'.encode() if levels > 1 else b'{"a": 1}'


@pytest.mark.parametrize(
    ("value", "code"),
    [
        # The four records of issue 10 that were valid UTF-8 JSON objects and wedged the pipeline.
        (b'{"num": 9223372036854775808}', "number_out_of_range"),
        (b'{"num": "\\ud800"}', "invalid_string"),
        (b'{"a\\u0000b": 1}', "invalid_field"),
        (nested(MAX_NESTING + 1), "too_deep"),
        # And their relatives.
        (b'{"num": -9223372036854775809}', "number_out_of_range"),
        (b'{"num": ' + b"7" * 5000 + b"}", "number_out_of_range"),
        (b'{"num": 1e400}', "number_out_of_range"),
        (b'{"num": -1.5e309}', "number_out_of_range"),
        (b'{"\\udfff": 1}', "invalid_string"),
        (b'{"a": {"b\\u0000": 1}}', "invalid_field"),
        (b'{"a": [{"\\u0000": 1}]}', "invalid_field"),
        (b"[" * 5000 + b"]" * 5000, "too_deep"),
        (b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}", "too_deep"),
        (nested(MAX_NESTING + 1, container="array"), "too_deep"),
        (b'{"num": 1, "$set": {"num": 2}}', "invalid_field"),
        (json.dumps({"." * 254: 1}).encode(), "invalid_field"),
        (b"", "not_json"),
        (b"{} {}", "not_json"),
        (b'"\\ud800"', "not_object"),
        (b"\xed\xa0\x80", "not_utf8"),  # a surrogate written as UTF-8 bytes
    ],
    ids=lambda v: v[:40] if isinstance(v, bytes) else v,
)
def test_records_mongodb_would_refuse_are_bad_records(value: bytes, code: str) -> None:
    assert refused(value).code == code


@pytest.mark.parametrize(
    "value",
    [
        b'{"num": 9223372036854775807, "low": -9223372036854775808}',
        b'{"tiny": 1e-400, "big": 1.7976931348623157e308, "neg_zero": -0.0}',
        b'{"nan": NaN, "inf": Infinity, "minus": -Infinity}',
        b'{"a": {"$inc": 1, "$id": 2}, "b": [{"$ref": "x"}]}',  # nested $-names: stored since 5.0
        b'{"price.usd": 1, "a": {"b.c": 2}}',  # dotted names: stored since 5.0
        json.dumps({"." * 253: 1}).encode(),  # 254 parts: the most MongoDB takes
        b'{"": 1, "a": {"": 2}}',
        b'{"s": "nul \\u0000 inside a string is fine", "emoji": "\\ud83d\\ude00"}',
        nested(MAX_NESTING),
        nested(MAX_NESTING - 1, leaf="{}"),
        nested(MAX_NESTING, container="array"),
    ],
    ids=lambda v: v[:40],
)
def test_records_mongodb_takes_are_loaded_as_they_are(value: bytes) -> None:
    document = loaded(value)
    expected = {
        "_id": "k",
        **json.loads(value),
        "_kafka": {"topic": "t", "partition": 2, "offset": 7, "applied": {"t:2": 7}},
    }
    assert bson.encode(document) == bson.encode(expected)


def test_nesting_is_counted_as_mongodb_counts_it() -> None:
    assert nested(1) == b'{"a": 1}'
    assert nested(2) == b'{"a": {"a": 1}}'
    loaded(nested(MAX_NESTING))
    # An empty container at the last level is a level too.
    assert refused(nested(MAX_NESTING, leaf="[]")).code == "too_deep"


def test_duplicate_names_keep_the_last_value() -> None:
    assert loaded(b'{"num": 1, "num": 2}')["num"] == 2


def test_the_value_s_own_id_and_kafka_fields_give_way() -> None:
    document = loaded(b'{"_kafka": "mine", "_id": "theirs", "num": 1}')
    assert list(document) == ["_id", "_kafka", "num"]
    assert document["_id"] == "k" and document["_kafka"] == {
        "topic": "t",
        "partition": 2,
        "offset": 7,
        "applied": {"t:2": 7},
    }


def test_a_field_name_is_refused_every_time_however_often_good_names_were_seen() -> None:
    # check_fields remembers top-level names that passed; a refused one is never remembered.
    for _ in range(3):
        assert loaded(b'{"num": 1, "region": "eu"}')["num"] == 1
        assert refused(b'{"num": 1, "$set": 2}').code == "invalid_field"
        assert refused(b'{"num": 1, "a\\u0000b": 2}').code == "invalid_field"
        assert refused(b'{"num": {"b\\u0000": 1}}').code == "invalid_field"
        assert refused(b'{"region": ' + b"[" * 200 + b"]" * 200 + b"}").code == "too_deep"


def test_the_encoded_body_is_a_raw_bson_document_like_any_other() -> None:
    body = json_document(id_function("key"))(message(b'{"num": 1, "a": {"b": [1, 2]}}')).body
    plain = RawBSONDocument(body.raw)
    assert isinstance(body, RawBSONDocument)
    assert (body.raw, dict(body.items()), body["a"], list(body), len(body)) == (
        plain.raw,
        dict(plain.items()),
        plain["a"],
        list(plain),
        len(plain),
    )
    assert body == plain
    # pymongo sends it as raw bytes, embedded too (the fence's $literal), as it sends the plain one.
    assert bson.encode({"d": body}) == bson.encode({"d": plain})


def test_a_large_key_counts_towards_16_mib() -> None:
    # The case: neither the key nor the value is over the limit alone.
    half = 8 * 1024 * 1024
    err = refused(json.dumps({"blob": "x" * half}).encode(), key=b"k" * half)
    assert err.code == "too_large" and "16 MiB" in str(err)


def test_16_mib_is_exact_with_id_and_kafka_included() -> None:
    frame = len(
        bson.encode(
            {
                "_id": "k",
                "blob": "",
                "_kafka": {"topic": "t", "partition": 2, "offset": 7, "applied": {"t:2": 7}},
            }
        )
    )
    fits = json.dumps({"blob": "x" * (MAX_DOCUMENT_BYTES - frame)}).encode()
    document = json_document(id_function("key"))(message(fits))
    assert len(document.body.raw) == MAX_DOCUMENT_BYTES
    over = json.dumps({"blob": "x" * (MAX_DOCUMENT_BYTES - frame + 1)}).encode()
    assert f"{MAX_DOCUMENT_BYTES + 1}-byte document" in str(refused(over))


def test_reasons_are_short_and_always_storable() -> None:
    for value in (
        b'{"' + b"\\ud800" * 10_000 + b'": 1}',
        b'{"$' + b"x" * 1_000_000 + b'": 1}',
        b'{"n": ' + b"9" * 100_000 + b"}",
    ):
        reason = str(refused(value))
        assert len(reason) < 600
        bson.encode({"reason": reason})


@pytest.mark.parametrize(
    ("value", "code", "words"),
    [
        (b'{"id": [1, 2]}', "invalid_id", "cannot be an array"),
        (b'{"id": {"$gt": 1}}', "invalid_id", "'$gt'"),
        (b'{"id": {"a": {"$ref": "x", "$id": 1}}}', "invalid_id", "'$ref'"),
        (b'{"id": {"a.b": 1}}', "invalid_id", "'a.b'"),
        (b'{"id": {"a": [{"b.c": 1}]}}', "invalid_id", "'b.c'"),
        (b'{"id": null}', "no_id", "is null"),
        (b'{"other": 1}', "no_id", "is missing"),
        (b'{"id": {"a\\u0000": 1}}', "invalid_field", "NUL"),
    ],
)
def test_field_ids_mongodb_refuses_are_bad_records(value: bytes, code: str, words: str) -> None:
    err = refused(value, strategy="field", field="id")
    assert err.code == code and words in str(err)


@pytest.mark.parametrize(
    "value",
    [
        b'{"id": {"region": "eu", "n": 1}}',
        b'{"id": {"a": [1, {"b": 2}]}}',
        b'{"id": 7.5}',
        b'{"id": true}',
        b'{"id": ""}',
    ],
)
def test_field_ids_of_any_type_mongodb_takes_are_kept(value: bytes) -> None:
    document = loaded(value, strategy="field", field="id")
    assert document["_id"] == json.loads(value)["id"]
    assert document["id"] == document["_id"]


def test_business_key_ids_are_embedded_documents_in_id_fields_order() -> None:
    document = loaded(
        b'{"order": 7, "region": "eu", "num": 1}', strategy="fields", fields=["region", "order"]
    )
    assert list(document["_id"].items()) == [("region", "eu"), ("order", 7)]
    assert refused(b'{"order": 7}', strategy="fields", fields=["region", "order"]).code == "no_id"


def test_a_business_key_id_nests_one_level_deeper_than_its_fields() -> None:
    # {"id": X} is within the limit as a value; the _id {"id": X} holds X one level deeper.
    inner = nested(MAX_NESTING - 1).decode()
    value = f'{{"id": {inner}}}'.encode()
    loaded(value, strategy="field", field="id")
    assert refused(value, strategy="fields", fields=["id"]).code == "too_deep"
    inner = nested(MAX_NESTING - 2).decode()
    loaded(f'{{"id": {inner}}}'.encode(), strategy="fields", fields=["id"])


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1, 1.0),
        (0, -0.0),
        (2**62, float(2**62)),
        (float("nan"), float("nan")),
        ({"a": 1}, {"a": 1.0}),
        ({"a": [1, {"b": 2}]}, {"a": [1.0, {"b": 2.0}]}),
        ("x", "x"),
        (None, None),
    ],
    ids=repr,
)
def test_ids_mongodb_takes_for_one_have_one_identity(a, b) -> None:
    assert id_identity(a) == id_identity(b)
    assert hash(id_identity(a)) == hash(id_identity(b))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (True, 1),
        (False, 0),
        (False, None),
        ("1", 1),
        ("null", None),
        (2**53 + 1, float(2**53)),  # int64 and double compare exactly, not as doubles
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),  # embedded documents compare field order
        ({"a": 1}, {"b": 1}),
        ({"a": True}, {"a": 1}),
        ({"a": [1]}, {"a": 1}),
        ({"a": {"b": 1}}, {"a": [1]}),
        ({}, []),
        ("a", ("string", "a")),
    ],
    ids=repr,
)
def test_ids_mongodb_keeps_apart_have_different_identities(a, b) -> None:
    assert id_identity(a) != id_identity(b)


def test_a_batch_keeps_the_later_of_two_records_mongodb_takes_for_one_id() -> None:
    to_document = json_document(id_function("field", "id"))
    batch = {}
    for offset, value in enumerate(
        [b'{"id": 1, "v": "a"}', b'{"id": true, "v": "b"}', b'{"id": 1.0, "v": "c"}']
    ):
        document = to_document(message(value, offset=offset))
        batch[document.identity] = document
    assert sorted(bson.decode(d.body.raw)["v"] for d in batch.values()) == ["b", "c"]


def committed(*offsets: int) -> list[TopicPartition]:
    return [TopicPartition("t", p, offset) for p, offset in enumerate(offsets)]


def test_a_drain_starts_at_the_committed_offset_or_the_earliest_without_one() -> None:
    progress = start_offsets(committed(5, -1001, 10), {0: (0, 9), 1: (3, 8), 2: (10, 10)})
    assert [(p.start, p.end, p.committed, p.lost) for p in progress.values()] == [
        (5, 9, 5, 0),
        (3, 8, 3, 0),
        (10, 10, 10, 0),
    ]
    assert progress[2].done and not progress[0].done


def test_a_committed_offset_below_the_low_watermark_fails_by_default_naming_what_was_lost() -> None:
    watermarks = {0: (20, 30), 1: (0, 5), 2: (7, 9)}
    with pytest.raises(RetentionGapError) as err:
        start_offsets(committed(10, 5, 4), watermarks)
    message = str(err.value)
    assert "partition 0: 10 records (offsets 10..19)" in message
    assert "partition 2: 3 records (offsets 4..6)" in message
    assert "partition 1" not in message and "on_retention_gap='skip'" in message
    from airflow.sdk.exceptions import AirflowFailException

    assert isinstance(err.value, AirflowFailException)


def test_skip_starts_at_the_low_watermark_and_counts_the_loss() -> None:
    progress = start_offsets(committed(10, 5), {0: (20, 30), 1: (0, 5)}, on_retention_gap="skip")
    assert (progress[0].start, progress[0].committed, progress[0].lost) == (20, 20, 10)
    assert (progress[1].start, progress[1].lost) == (5, 0) and progress[1].done


def test_a_committed_offset_above_the_high_watermark_fails_saying_how_to_reset() -> None:
    with pytest.raises(OffsetAboveWatermarkError) as err:
        start_offsets(committed(3, 50), {0: (0, 9), 1: (0, 40)}, on_retention_gap="skip", group_id="g1")
    message = str(err.value)
    assert "partition 1: committed 50, high watermark 40" in message
    assert "--group g1 --topic t:1 --reset-offsets" in message


def test_unknown_gap_policy_and_group_errors_are_raised() -> None:
    with pytest.raises(ValueError, match="on_retention_gap 'ignore'; choose one of fail, skip"):
        start_offsets(committed(0), {0: (0, 1)}, on_retention_gap="ignore")

    class Refused:
        topic, partition, offset = "t", 0, 0
        error = KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED)

    from confluent_kafka import KafkaException

    with pytest.raises(KafkaException, match="Group authorization failed"):
        start_offsets([Refused()], {0: (0, 1)})


def test_kafka_position_keys_the_fence_by_each_records_own_topic_and_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The fence keys are cached by (topic, partition): records of other topics and partitions,
    # in any order, each get their own key, and past the cache's bound the keys are still made.
    monkeypatch.setattr(records, "_FENCE_KEYS", {})
    monkeypatch.setattr(records, "_FENCE_KEYS_MAX", 3)
    coordinates = [("a", 0, 5), ("a", 1, 6), ("b", 0, 7), ("a", 0, 8), ("c", 2, 9), ("b", 0, 1), ("d", 3, 2)]
    for topic, partition, offset in coordinates * 2:
        message = Message(topic=topic, partition=partition, offset=offset, key=b"k", value=b"{}")
        assert records.kafka_position(message) == {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "applied": {f"{topic}:{partition}": offset},
        }
    assert len(records._FENCE_KEYS) == 3


def test_a_batch_over_a_chunk_is_built_chunk_by_chunk_as_record_by_record() -> None:
    """``build_documents`` encodes about 1 MiB of values at a time; a chunk with a bad record
    goes record by record, and the others still build at once. Every document's bytes are its
    own (never a view into a chunk's encoding, which would keep the whole chunk alive)."""
    batch = [
        Message(
            topic="t",
            partition=n % 3,
            offset=n,
            key=f"k{n % 40}".encode(),  # versions of one key: every one is kept, in order
            value=json.dumps({"num": n, "blob": "x" * (5000 + n)}).encode(),
        )
        for n in range(600)
    ]
    batch[450] = message(b'{"$set": 1}', offset=450)
    batch[451] = message(None, offset=451)
    to_document = json_document(id_function("key"))
    documents, refused = records.build_documents(to_document, batch)
    assert [(m.offset(), err.code) for m, err in refused] == [(450, "invalid_field"), (451, "tombstone")]
    one_by_one = [to_document(m) for m in batch if m.offset() not in (450, 451)]
    assert [d.message for d in documents] == [d.message for d in one_by_one]
    assert [(d.id, d.identity, d.body.raw) for d in documents] == [
        (d.id, d.identity, d.body.raw) for d in one_by_one
    ]
    assert {type(d.body.raw) for d in documents} == {bytes}
    assert len(list(records._chunks([m.value() for m in batch]))) > 2


def test_a_batch_of_another_id_strategy_builds_as_record_by_record() -> None:
    batch = [
        Message(topic="t", partition=1, offset=n, key=None, value=json.dumps(value).encode())
        for n, value in enumerate([{"id": 1}, {"id": 1.0}, {"id": {"a": 2}}, {"id": "x", "b": [1, {"c": 2}]}])
    ]
    to_document = json_document(id_function("field", "id"))
    # The batch path takes it (numbers, an embedded document, an array in the value)...
    assert to_document._chunk(batch, [m.value() for m in batch]) is not None
    # ... and makes what the record path makes of each record.
    documents, refused = records.build_documents(to_document, batch)
    assert refused == []
    assert [(d.id, d.identity, d.body.raw) for d in documents] == [
        (d.id, d.identity, d.body.raw) for d in map(to_document, batch)
    ]
    assert documents[0].identity == documents[1].identity  # 1 and 1.0: one _id to MongoDB


def test_names_a_batch_brings_first_are_screened_there_and_remembered() -> None:
    to_document = json_document(id_function("key"))

    def batch(name: str) -> list[Message]:
        return [message(json.dumps({name: n}).encode(), key=b"k%d" % n, offset=n) for n in range(3)]

    fresh = batch("never_seen_before_in_this_process")
    assert "never_seen_before_in_this_process" not in records._GOOD_NAMES
    assert to_document._chunk(fresh, [m.value() for m in fresh]) is not None
    assert "never_seen_before_in_this_process" in records._GOOD_NAMES
    dollar = batch("$never_seen")
    assert to_document._chunk(dollar, [m.value() for m in dollar]) is None
    documents, refused = records.build_documents(to_document, dollar)
    assert documents == [] and [err.code for _, err in refused] == ["invalid_field"] * 3
    assert "$never_seen" not in records._GOOD_NAMES


def test_an_empty_batch_builds_nothing() -> None:
    to_document = json_document(id_function("key"))
    assert records.build_documents(to_document, []) == ([], [])
    assert records._documents([], [], []) == []


def test_an_id_function_s_own_refusal_is_the_record_s_in_a_batch_too() -> None:
    """An id function may refuse a record itself (a registry key decoder's ``BadRecordError``):
    the batch is built record by record, and only that record is refused."""

    def by_key_unless_bad(msg: Message, _value: dict) -> str:
        if msg.key() == b"bad":
            raise BadRecordError("unknown_schema", f"record {records.where(msg)}: no such schema")
        return msg.key().decode()

    batch = [message(b'{"num": %d}' % n, key=b"bad" if n == 1 else b"k%d" % n, offset=n) for n in range(3)]
    documents, refused = records.build_documents(json_document(by_key_unless_bad), batch)
    assert [d.id for d in documents] == ["k0", "k2"]
    assert [(m.offset(), err.code) for m, err in refused] == [(1, "unknown_schema")]
