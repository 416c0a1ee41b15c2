"""What ``make run`` prints for a run, from its XComs and where its batch landed (issue 14,
item 5): the run's own records counted in MongoDB, each drain that loaded some of them named
with its share, and never "loaded 0" when the batch is there."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from devstack.run import report

RUN = "manual__2026-12-01T10:00:00+00:00"
PRODUCED = {
    "topic": "testnum",
    "batch": f"kafka_to_mongo/{RUN}",
    "count": 500,
    "first": 0,
    "last": 499,
    "records_per_second": 460.0,
}


def _consumed(records: int) -> dict:
    return {"target": "testnum.testnum", "records": records, "loaded": records, "seconds": 1.25}


def _drain(run_id: str, of_batch: int, records: int) -> dict:
    return {
        "run_id": run_id,
        "records_of_batch": of_batch,
        "loaded": records,
        "records": records,
        "seconds": 2.0,
    }


def _report(consumed: dict | None, loaded_by: list[dict] | None, in_mongo: int = 500, **extra) -> str:
    summary = {
        "run_id": RUN,
        "state": "success",
        "url": "http://ui/run",
        "produce": PRODUCED,
        "consume": consumed,
        **extra,
    }
    if loaded_by is not None:
        summary["landing"] = {
            "target": "testnum.testnum",
            "batch": PRODUCED["batch"],
            "in_mongo": in_mongo,
            "loaded_by": loaded_by,
        }
    return report(summary)


def test_the_first_make_up_reports_the_batch_loaded_by_the_scheduled_run() -> None:
    text = _report(_consumed(0), [_drain("scheduled__2026-12-01T09:00:00+00:00", 500, 1000)])

    assert text.splitlines() == [
        f"Run {RUN}: success",
        "  produced 500 records (0..499) to topic testnum at 460 records/s",
        f"  in testnum.testnum now: 500 of its 500 records (counted by batch kafka_to_mongo/{RUN})",
        "  500 of them loaded by the drain of run scheduled__2026-12-01T09:00:00+00:00 "
        "(1000 documents, 1000 records drained in 2.0s)",
        "  this run's own drain came later and found nothing left to drain",
        "  (a drain takes every record on the topic up to its snapshot: other runs' batches, such as the "
        "scheduled run's that unpausing started, land in the same drain)",
        "  see it in the UI: http://ui/run",
    ]


def test_a_run_that_loaded_its_own_batch_alone_says_so_without_the_note() -> None:
    text = _report(_consumed(500), [_drain(RUN, 500, 500)])

    assert "  500 of them loaded by this run's drain (500 documents, 500 records drained in 1.2s)" in text
    assert "other runs' batches" not in text


def test_a_drain_that_also_took_other_batches_is_explained() -> None:
    text = _report(_consumed(1000), [_drain(RUN, 500, 1000)])

    assert "  500 of them loaded by this run's drain (1000 documents, 1000 records drained in 1.2s)" in text
    assert "other runs' batches" in text


def test_a_drain_that_loaded_only_other_records_is_not_taken_for_the_batchs() -> None:
    text = _report(_consumed(300), [_drain("scheduled__x", 500, 800)])

    assert (
        "  this run's own drain loaded other records only (300 documents, 300 records drained in 1.2s)"
        in text
    )


def test_without_a_count_from_mongodb_the_drain_is_reported_with_the_reason() -> None:
    text = _report(_consumed(500), None, landing_error="ServerSelectionTimeoutError: no server")

    assert "  this run's drain: 500 documents, 500 records drained in 1.2s into testnum.testnum" in text
    assert "  could not count its records in MongoDB: ServerSelectionTimeoutError: no server" in text


def test_a_failed_consume_still_reports_what_was_produced() -> None:
    text = _report(None, None)

    assert text.splitlines()[1:] == [
        "  produced 500 records (0..499) to topic testnum at 460 records/s",
        "  see it in the UI: http://ui/run",
    ]


@given(
    shares=st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=4),
    own_share=st.integers(min_value=0, max_value=500),
    extra=st.integers(min_value=0, max_value=2000),
)
def test_every_drain_that_loaded_part_of_the_batch_is_named_with_its_share(
    shares: list[int], own_share: int, extra: int
) -> None:
    others = [_drain(f"scheduled__{i}", share, share + extra) for i, share in enumerate(shares)]
    own = [_drain(RUN, own_share, own_share + extra)] if own_share else []
    in_mongo = sum(shares) + own_share
    text = _report(_consumed(own_share + extra), others + own, in_mongo=in_mongo)

    assert f"now: {in_mongo} of its 500 records" in text
    for i, share in enumerate(shares):
        assert f"  {share} of them loaded by the drain of run scheduled__{i} " in text
    assert (f"  {own_share} of them loaded by this run's drain" in text) == bool(own_share)
    assert "loaded 0" not in text and re.search(r"(?<!\d)0 (of them|documents)", text) is None
    assert ("other runs' batches" in text) == (extra > 0 or not own_share)
