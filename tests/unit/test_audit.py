"""The run audit's merge of tries (``kafka_mongo_etl.audit``), without a server: what every try
saw stays in the document, a try written twice counts once, and the totals add up."""

from __future__ import annotations

import datetime as dt
import random

from hypothesis import given
from hypothesis import strategies as st

from kafka_mongo_etl.audit import TryAudit, merged_document, run_totals

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
RUN = {
    "dag_run_id": "manual__1",
    "topic": "t",
    "group_id": "g",
    "target": "db.c",
    "dead_letter_collection": "db.c_dlq",
    "produced": {"count": 30},
}


def summary(records: int, dead: dict[str, int] | None = None, lost: dict[int, tuple[int, int]] | None = None):
    """A DrainSummary.as_dict() of one partition-0 drain (``lost``: partition -> (start, lost))."""
    dead = dead or {}
    partitions = {"0": {"start": 0, "end": records, "committed": records, "records": records, "lost": 0}}
    for partition, (start, count) in (lost or {}).items():
        partitions[str(partition)] = {"start": start, "end": start, "committed": start, "lost": count}
    return {
        "topic": "t",
        "group_id": "g",
        "partitions": partitions,
        "records": records,
        "loaded": records - sum(dead.values()),
        "seconds": 1.0,
        "dead_letters": sum(dead.values()),
        "dead_letter_reasons": dict(dead),
        "lost_to_retention": {str(p): count for p, (_, count) in (lost or {}).items()},
        "stalled": {},
    }


def a_try(number: int | None, state: str, summary_=None, error=None, dead=None, minute: int = 0) -> TryAudit:
    attempt = TryAudit(
        attempt=f"try-{number}/{minute}",
        try_number=number,
        started_at=T0 + dt.timedelta(minutes=minute),
        state=state,
        error=error,
        summary=summary_,
    )
    attempt.dead_letter_reasons = dict(dead or {})
    return attempt


def write(document, attempt: TryAudit, minute: int = 0):
    now = T0 + dt.timedelta(minutes=minute, seconds=30)
    return merged_document(document, RUN, attempt.entry(now), now)


def test_a_retry_that_succeeds_keeps_the_dead_letters_of_the_try_that_failed() -> None:
    first = a_try(1, "failed", summary(20, {"not_json": 3}), error="3 dead letters, more than the limit of 0")
    second = a_try(2, "success", summary(0), minute=1)

    document = write(write(None, first), second, minute=1)

    assert (document["state"], "error" in document) == ("success", False)
    assert (document["dead_letters"], document["dead_letter_reasons"]) == (3, {"not_json": 3})
    assert document["totals"] == {
        "tries": 2,
        "failures": 1,
        "records": 20,
        "loaded": 17,
        "dead_letters": 3,
        "dead_letter_reasons": {"not_json": 3},
        "lost_to_retention": {},
    }
    assert [(t["try"], t["state"], t["dead_letters"]) for t in document["tries"]] == [
        (1, "failed", 3),
        (2, "success", 0),
    ]
    assert document["tries"][0]["error"] == "3 dead letters, more than the limit of 0"
    # The top level describes the latest try's drain, as before tries were kept.
    assert (document["records"], document["loaded"], document["dag_run_id"]) == (0, 0, "manual__1")
    assert document["revision"] == 2


def test_a_try_that_failed_midway_counts_the_dead_letters_it_wrote() -> None:
    failed = a_try(1, "failed", error="MongoDB connection 'mongo_default': timeout", dead={"not_json": 2})
    document = write(None, failed)

    assert (document["state"], document["dead_letters"]) == ("failed", 2)
    assert "records" not in document and "loaded" not in document  # its drain did not end
    assert document["totals"]["records"] is None

    document = write(document, a_try(2, "success", summary(10)), minute=1)
    assert (document["state"], document["dead_letters"], document["totals"]["failures"]) == ("success", 2, 1)
    assert (document["totals"]["records"], document["totals"]["loaded"]) == (10, 10)


def test_a_try_written_twice_counts_once_and_its_last_word_wins() -> None:
    attempt = a_try(1, "success", summary(10, {"not_json": 1}))
    document = write(None, attempt)
    # Its success audit was applied but not confirmed; it writes its failure over it.
    attempt.state, attempt.error = "failed", "MongoDB connection 'mongo_default': no answer"
    document = write(document, attempt)

    assert [t["state"] for t in document["tries"]] == ["failed"]
    assert (document["state"], document["dead_letters"], document["totals"]["tries"]) == ("failed", 1, 1)


def test_a_late_write_of_an_older_try_does_not_take_the_state_of_the_run() -> None:
    retry = a_try(2, "success", summary(10), minute=5)
    zombie = a_try(1, "failed", error="lease lost", dead={"too_large": 1})

    document = write(write(None, retry, minute=5), zombie, minute=9)

    assert (document["state"], "error" in document) == ("success", False)
    assert [t["try"] for t in document["tries"]] == [1, 2]
    assert document["dead_letters"] == 1


def test_retention_losses_add_up_once_per_offset() -> None:
    # Try 1 skipped offsets 90..99 of partition 1 and failed before committing there; try 2
    # finds a gap that has grown to 90..119; the run lost 30 offsets, not 40.
    first = a_try(1, "failed", summary(5, lost={1: (100, 10)}), error="stalled")
    second = a_try(2, "success", summary(5, lost={1: (120, 30)}), minute=1)
    document = write(write(None, first), second, minute=1)
    assert document["lost_to_retention"] == {"1": 30}

    # A later gap of the same partition in the same run is another loss.
    third = a_try(3, "success", summary(0, lost={1: (300, 50)}), minute=2)
    assert write(document, third, minute=2)["lost_to_retention"] == {"1": 80}


def test_a_document_written_before_tries_were_kept_becomes_the_first_try() -> None:
    legacy = {
        "_id": "kafka_to_mongo/manual__1",
        **RUN,
        "state": "failed",
        "dead_letters": 4,
        "dead_letter_reasons": {"not_json": 4},
        "records": 10,
        "loaded": 6,
        "partitions": {"0": {"start": 0, "end": 10, "committed": 10, "records": 10, "lost": 0}},
        "updated_at": (T0 - dt.timedelta(days=1)).replace(tzinfo=None),
    }

    document = write(legacy, a_try(2, "success", summary(3), minute=1), minute=1)

    assert [(t["attempt"], t["state"]) for t in document["tries"]] == [
        ("before-tries", "failed"),
        ("try-2/1", "success"),
    ]
    assert (document["dead_letters"], document["totals"]["loaded"]) == (4, 9)
    assert "dag_run_id" not in document["tries"][0] and "_id" not in document["tries"][0]


tries_st = st.lists(
    st.tuples(
        st.sampled_from(["success", "failed"]),
        st.integers(min_value=0, max_value=50),
        st.dictionaries(
            st.sampled_from(["not_json", "too_large", "rejected"]), st.integers(1, 9), max_size=3
        ),
        st.booleans(),  # the drain ended (a summary) or the try failed midway
    ),
    min_size=1,
    max_size=6,
)


@given(tries=tries_st, seed=st.integers(0, 2**16), rewrites=st.integers(0, 3))
def test_totals_are_the_sum_over_tries_whatever_order_and_how_often_they_are_written(
    tries, seed, rewrites
) -> None:
    attempts = [
        a_try(
            number,
            state,
            summary(records, dead) if ended else None,
            error=None if state == "success" else "boom",
            dead=None if ended else dead,
            minute=number,
        )
        for number, (state, records, dead, ended) in enumerate(tries, start=1)
    ]
    writes = attempts + random.Random(seed).choices(attempts, k=rewrites)
    random.Random(seed).shuffle(writes)

    document = None
    seen_dead_letters = 0
    for attempt in writes:
        document = write(document, attempt, minute=attempt.try_number)
        # A write never reports fewer dead letters than the tries written so far produced.
        assert document["dead_letters"] >= seen_dead_letters
        seen_dead_letters = document["dead_letters"]

    assert document is not None
    expected_dead = sum(sum(dead.values()) for _, _, dead, _ in tries)
    assert document["dead_letters"] == expected_dead == document["totals"]["dead_letters"]
    assert document["totals"]["tries"] == len(tries)
    assert document["totals"]["failures"] == sum(state == "failed" for state, *_ in tries)
    assert [t["try"] for t in document["tries"]] == list(range(1, len(tries) + 1))
    assert document["state"] == tries[-1][0]
    ended = [records for _, records, _, done in tries if done]
    assert document["totals"]["records"] == (sum(ended) if ended else None)
    assert run_totals(document["tries"]) == document["totals"]
