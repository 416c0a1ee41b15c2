"""The parts of ``kafka_mongo_etl.replay`` that need no server: which dead letters a selection
picks, which dead letters hold their whole record, and that a dead letter as the drain stores it
(``mongo_sink.MongoDeadLetterSink``, through BSON) gives back the record it came from.
tests/integration/test_replay.py replays against the real server (hence this file's other name)."""

from __future__ import annotations

import datetime as dt

import bson
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from kafka_mongo_etl.mongo_sink import MAX_STORED_VALUE_BYTES, MongoDeadLetterSink
from kafka_mongo_etl.records import DeadLetter
from kafka_mongo_etl.replay import DeadLetterSelection, as_message, unreplayable_reason

NOW = dt.datetime(2026, 12, 6, 23, 0, tzinfo=dt.UTC)


def stored(message: Message) -> dict:
    """The dead letter of ``message`` as MongoDB gives it back (BSON: naive UTC times, bytes)."""
    sink = MongoDeadLetterSink(None, run_id="run-1", group_id="g")  # type: ignore[arg-type]
    return bson.decode(bson.encode(sink.document(DeadLetter(message, "not_json", "bad", "decode"), NOW)))


names = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)
payloads = st.one_of(st.none(), st.binary(max_size=300))


@settings(max_examples=200, deadline=None, database=None)
@given(
    key=payloads,
    value=payloads,
    headers=st.lists(st.tuples(names, payloads), max_size=5),
    offset=st.integers(0, 2**40),
    stamp_ms=st.integers(1, 2**42),
)
def test_a_stored_dead_letter_gives_back_the_record_it_came_from(
    key: bytes | None, value: bytes | None, headers: list, offset: int, stamp_ms: int
) -> None:
    message = Message(
        topic="orders",
        partition=3,
        offset=offset,
        key=key,
        value=value,
        headers=headers or None,
        timestamp=(TIMESTAMP_CREATE_TIME, stamp_ms),
    )
    letter = stored(message)
    assert unreplayable_reason(letter) is None
    again = as_message(letter)
    assert (again.topic(), again.partition(), again.offset()) == ("orders", 3, offset)
    assert (again.key(), again.value()) == (key, value)
    assert (again.headers() or []) == headers
    assert again.timestamp() == (TIMESTAMP_CREATE_TIME, stamp_ms)


@pytest.mark.parametrize("part", ["key", "value"])
def test_a_dead_letter_that_kept_only_part_of_the_record_is_not_replayable(part: str) -> None:
    big = b"x" * (MAX_STORED_VALUE_BYTES + 1)
    message = Message(topic="orders", partition=0, offset=1, **{"key": b"k", "value": b"{}", part: big})
    reason = unreplayable_reason(stored(message))
    assert reason is not None and f"part of the record's {part} (cut to its bounds)" in reason


def test_a_minimal_dead_letter_is_not_replayable() -> None:
    sink = MongoDeadLetterSink(None, run_id="run-1", group_id="g")  # type: ignore[arg-type]
    message = Message(topic="orders", partition=0, offset=1, key=b"k", value=b"{}")
    minimal = sink.minimal(DeadLetter(message, "rejected", "refused", "write"), NOW, "too big")
    assert "kept_minimal" in (unreplayable_reason(minimal) or "")


def test_each_criterion_of_a_selection_narrows_the_query() -> None:
    query = DeadLetterSelection(
        run_id="run-1",
        codes=("not_json", "rejected"),
        failed_after="2026-12-06",
        failed_before=dt.datetime(2026, 12, 7, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        ids=("orders:0:5",),
    ).query()
    assert query == {
        "run_id": "run-1",
        "code": {"$in": ["not_json", "rejected"]},
        "_id": {"$in": ["orders:0:5"]},
        # A time without a zone is UTC, the zone failed_at is stored in.
        "failed_at": {
            "$gte": dt.datetime(2026, 12, 6, tzinfo=dt.UTC),
            "$lt": dt.datetime(2026, 12, 6, 23, tzinfo=dt.UTC),
        },
    }


def test_an_empty_or_impossible_selection_is_refused_with_what_to_give() -> None:
    with pytest.raises(ValueError, match="give at least one of run_id, codes"):
        DeadLetterSelection().query()
    with pytest.raises(ValueError, match="is not before failed_before"):
        DeadLetterSelection(failed_after="2026-12-07", failed_before="2026-12-07").query()
    with pytest.raises(
        ValueError, match=r"failed_after 'yesterday' is not an ISO 8601 date.*e\.g\. 2026-12-06"
    ):
        DeadLetterSelection(failed_after="yesterday").query()
