"""The ETL page's pure parts: reading audit documents, the SVG chart, the HTML (no services)."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from kafka_mongo_etl_ui.charts import compact_number, nice_ceiling, throughput_chart
from kafka_mongo_etl_ui.lag import ConsumerLag, PartitionLag
from kafka_mongo_etl_ui.page import PageData, render_page
from kafka_mongo_etl_ui.runs import DeadLetterRow, DeadLetters, RunRow, RunSource, Target, run_source

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def audit(n: int, **fields) -> dict:
    """An audit document shaped like run_consume's (tasks.py + DrainSummary.as_dict)."""
    run_id = f"manual__2026-03-01T12:{n:02d}:00+00:00"
    return {
        "_id": f"kafka_to_mongo/{run_id}",
        "dag_run_id": run_id,
        "topic": "testnum",
        "group_id": "kafka_to_mongo.testnum.testnum",
        "target": "testnum.testnum",
        "produced": {"count": 100 + n, "first": 0, "last": 99 + n, "seconds": 0.5},
        "partitions": {"0": {"start": 0, "end": 100, "committed": 100, "records": 100}},
        "records": 100 + n,
        "loaded": 100 + n,
        "skipped": 0,
        "batches": 1,
        "seconds": 2.0,
        "records_per_second": 50.0 + n,
        "stalled": {},
        "state": "success",
        "updated_at": (T0 + dt.timedelta(minutes=n)).replace(tzinfo=None),
        **fields,
    }


def test_a_run_row_reads_the_audit_document_and_links_to_the_quoted_run_page() -> None:
    row = RunRow.from_audit(audit(3, dead_letters=2))

    assert row.dag_id == "kafka_to_mongo"
    assert row.run_id == "manual__2026-03-01T12:03:00+00:00"
    assert (row.state, row.produced, row.loaded, row.dead_letters) == ("success", 103, 103, 2)
    assert (row.seconds, row.records_per_second) == (2.0, 53.0)
    assert row.updated_at == T0 + dt.timedelta(minutes=3)
    assert row.updated_at.tzinfo is dt.UTC
    assert row.run_path == "dags/kafka_to_mongo/runs/manual__2026-03-01T12%3A03%3A00%2B00%3A00"
    assert not row.stalled


def test_a_failed_run_without_summary_fields_reads_as_unknown_values() -> None:
    document = {
        "_id": "kafka_to_mongo/scheduled__x",
        "target": "testnum.testnum",
        "produced": None,
        "state": "failed",
        "error": "topic 'x' does not exist",
    }

    row = RunRow.from_audit(document)

    assert row.run_id == "scheduled__x"  # from the _id when dag_run_id is missing
    assert (row.produced, row.loaded, row.dead_letters, row.seconds, row.records_per_second) == (
        None,
        None,
        None,
        None,
        None,
    )
    assert (row.state, row.error, row.updated_at) == ("failed", "topic 'x' does not exist", None)


@pytest.mark.parametrize(
    ("value", "count"),
    [
        (7, 7),
        (0, 0),
        ({"count": 4, "reasons": {}}, 4),
        ([{"reason": "x"}] * 3, 3),
        ("many", None),
        (True, None),
    ],
)
def test_a_dead_letter_count_is_read_in_the_shapes_it_may_take(value, count) -> None:
    assert RunRow.from_audit(audit(1, dead_letters=value)).dead_letters == count


def test_dead_letter_reasons_are_read_most_frequent_first() -> None:
    row = RunRow.from_audit(audit(1, dead_letter_reasons={"b": 1, "a": 5, "c": 1, "bad": "x"}))
    assert row.dead_letter_reasons == (("a", 5), ("b", 1), ("c", 1))
    assert RunRow.from_audit(audit(1)).dead_letter_reasons == ()


def test_a_stalled_run_is_marked() -> None:
    assert RunRow.from_audit(audit(1, stalled={"2": 41})).stalled


def test_records_lost_to_retention_are_counted_and_shown() -> None:
    row = RunRow.from_audit(audit(1, lost_to_retention={"0": 10, "2": 3}))
    assert row.lost_to_retention == 13
    assert RunRow.from_audit(audit(2)).lost_to_retention == 0
    from kafka_mongo_etl_ui.page import _runs_table

    assert "13 lost to retention" in _runs_table([row])
    assert "lost to retention" not in _runs_table([RunRow.from_audit(audit(2))])


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("testnum.testnum", Target("testnum", "testnum")),
        ("db.coll.with.dots", Target("db", "coll.with.dots")),
        (" db.c ", Target("db", "c")),
    ],
)
def test_a_target_is_parsed_from_database_dot_collection(text: str, target: Target) -> None:
    assert Target.parse(text) == target
    assert str(Target.parse(text)) == text.strip()


@pytest.mark.parametrize(
    "text", ["", "testnum", ".coll", "db.", "d b.c", "db.system.views", "db.a$b", "a/b.c"]
)
def test_a_target_that_the_dag_could_not_write_to_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="target|name|collection"):
        Target.parse(text)


def test_the_default_group_and_dead_letter_collection_follow_the_target() -> None:
    target = Target("shop", "orders")
    assert target.default_group_id == "kafka_to_mongo.shop.orders"
    assert target.dead_letter_collection == "orders_dlq"


def test_the_lag_source_is_the_newest_run_that_names_a_topic() -> None:
    target = Target("testnum", "testnum")
    documents = [{"state": "failed"}, audit(2, topic="newer", group_id=None), audit(1)]

    assert run_source(documents, target) == RunSource("newer", "kafka_to_mongo.testnum.testnum")
    assert run_source([{"state": "failed"}], target) is None


def test_lag_counts_from_the_committed_offset_or_from_the_earliest_without_one() -> None:
    assert PartitionLag(0, committed=40, earliest=0, high=50).lag == 10
    assert PartitionLag(1, committed=None, earliest=5, high=50).lag == 45
    assert PartitionLag(2, committed=50, earliest=0, high=50).lag == 0
    # Committed below what retention left: the records still there, as the drain would read them.
    assert PartitionLag(3, committed=10, earliest=20, high=30).lag == 10
    lag = ConsumerLag("t", "g", (PartitionLag(0, 40, 0, 50), PartitionLag(1, None, 5, 50)))
    assert lag.total == 55


@pytest.mark.parametrize(
    ("value", "ceiling"), [(0, 1), (0.3, 0.5), (1, 1), (1.01, 2), (3, 5), (7, 10), (2400, 2500), (51, 100)]
)
def test_nice_ceiling(value: float, ceiling: float) -> None:
    assert nice_ceiling(value) == pytest.approx(ceiling)


@pytest.mark.parametrize(
    ("value", "text"), [(0, "0"), (50, "50"), (2.5, "2.5"), (1234, "1.23k"), (2.5e6, "2.5M")]
)
def test_compact_number(value: float, text: str) -> None:
    assert compact_number(value) == text


def rows(n: int) -> list[RunRow]:
    """``n`` runs, newest first, as the page lists them."""
    return [RunRow.from_audit(audit(i)) for i in reversed(range(n))]


def test_the_chart_has_one_point_and_one_bar_per_run_oldest_on_the_left() -> None:
    svg = throughput_chart(rows(5))

    points = re.findall(r'<circle class="point rate" data-run-id="([^"]+)" cx="([\d.]+)" cy="([\d.]+)"', svg)
    bars = re.findall(r'<rect class="bar loaded" data-run-id="([^"]+)"', svg)
    assert [run for run, _, _ in points] == [f"manual__2026-03-01T12:{i:02d}:00+00:00" for i in range(5)]
    assert bars == [run for run, _, _ in points]
    xs = [float(x) for _, x, _ in points]
    ys = [float(y) for _, _, y in points]
    assert xs == sorted(xs)
    # records/s grows with n, so each point sits higher (smaller y) than the one before.
    assert ys == sorted(ys, reverse=True)
    assert svg.count("<polyline") == 1
    assert "<title>manual__2026-03-01T12:04:00+00:00: 54.0 records/s</title>" in svg


def test_time_labels_are_as_precise_as_the_runs_are_close() -> None:
    minutes_apart = throughput_chart(rows(5))
    assert "12:04:00</text>" in minutes_apart and "run finished on 2026-03-01 (UTC)" in minutes_apart

    days_apart = [
        RunRow.from_audit(audit(1, updated_at=T0 + dt.timedelta(days=1))),
        RunRow.from_audit(audit(0)),
    ]
    svg = throughput_chart(days_apart)
    assert "03-02 12:00</text>" in svg and "03-01 12:00</text>" in svg
    assert "run finished (UTC)" in svg


def test_a_run_without_a_rate_breaks_the_line_and_has_no_point() -> None:
    runs = rows(5)
    failed = RunRow.from_audit({"_id": "kafka_to_mongo/failed", "state": "failed", "loaded": None})
    svg = throughput_chart([*runs[:2], failed, *runs[2:]])

    assert svg.count('class="point rate"') == 5
    assert svg.count('class="bar loaded"') == 5
    assert svg.count("<polyline") == 2


def test_the_chart_of_no_runs_says_so() -> None:
    svg = throughput_chart([])
    assert svg.startswith("<svg") and "No runs of this target yet" in svg
    assert "<circle" not in svg


def page(**overrides) -> str:
    data = {
        "target": Target("testnum", "testnum"),
        "targets": ["other.c", "testnum.testnum"],
        "runs": rows(3),
        "limit": 50,
        "source": RunSource("testnum", "kafka_to_mongo.testnum.testnum"),
        "lag": ConsumerLag(
            "testnum",
            "kafka_to_mongo.testnum.testnum",
            (PartitionLag(0, 10, 0, 12), PartitionLag(1, None, 0, 3)),
        ),
        "dead_letters": DeadLetters("testnum_dlq", exists=False),
    }
    data.update(overrides)
    return render_page(PageData(**data), nonce="n0nce")


def test_the_page_lists_runs_with_links_lag_rows_and_the_target_selector() -> None:
    html = page()

    assert re.findall(r'<tr class="run" data-run-id="([^"]+)"', html) == [
        f"manual__2026-03-01T12:{i:02d}:00+00:00" for i in (2, 1, 0)
    ]
    assert 'href="../dags/kafka_to_mongo/runs/manual__2026-03-01T12%3A02%3A00%2B00%3A00"' in html, (
        "a run links to its Airflow page, relative to the UI's base URL"
    )
    assert re.findall(r'<tr class="partition" data-partition="(\d+)">', html) == ["0", "1"]
    assert '<th class="num" id="lag-total">5</th>' in html
    assert re.findall(r"<option value=\"([^\"]+)\"( selected)?>", html) == [
        ("other.c", ""),
        ("testnum.testnum", " selected"),
    ]
    assert '<script nonce="n0nce">' in html and '<style nonce="n0nce">' in html
    assert 'id="no-dlq"' in html


def test_everything_from_the_database_is_escaped() -> None:
    hostile = '<script>alert("x")</script>'
    run = RunRow.from_audit(audit(1, dag_run_id=hostile, state=hostile, error=hostile))
    letters = DeadLetters(
        "testnum_dlq", exists=True, total=1, latest=(DeadLetterRow(None, hostile, 0, 5, hostile, hostile),)
    )

    html = page(runs=[run], targets=[hostile + ".c"], dead_letters=letters)

    assert hostile not in html
    assert "&lt;script&gt;" in html
    assert "%3Cscript%3E" in html  # the run link's path is quoted, not just escaped


def test_an_unreadable_lag_is_explained_instead_of_a_table() -> None:
    html = page(lag=ConsumerLag("testnum", "g", error="Broker transport failure"))

    assert 'id="lag-error"' in html and "Broker transport failure" in html
    assert 'class="partition"' not in html


def test_dead_letters_show_the_count_and_the_newest_reasons() -> None:
    letters = DeadLetters(
        "testnum_dlq",
        exists=True,
        total=12,
        latest=(DeadLetterRow(T0, "run-1", 2, 41, "not_json", "record testnum[2]@41 is not JSON"),),
    )
    runs = [
        RunRow.from_audit(audit(2, dead_letters=3, dead_letter_reasons={"not_json": 2, "too_large": 1})),
        RunRow.from_audit(audit(1, dead_letters=9, dead_letter_reasons={"not_json": 9})),
    ]

    html = page(dead_letters=letters, runs=runs)

    assert '<strong id="dlq-total">12</strong>' in html
    assert "record testnum[2]@41 is not JSON" in html
    assert '<strong id="dead-letters-in-runs">12</strong>' in html
    counts = re.findall(
        r'<tr class="reason-count"><td><code>(\w+)</code></td><td class="num">(\d+)</td>', html
    )
    assert counts == [("not_json", "11"), ("too_large", "1")]


def drain(n: int, partition: int, **fields) -> dict:
    """The audit document of one mapped drain (``<batch>:<partition>``) of run ``n``."""
    document = audit(n, **fields)
    document["_id"] = f"{document['_id']}:{partition}"
    document["partitions"] = {str(partition): {"start": 0, "end": 40, "committed": 40, "records": 40}}
    return document


def test_the_mapped_drains_of_a_run_become_one_row_that_adds_them_up() -> None:
    from kafka_mongo_etl_ui.runs import run_rows

    documents = [
        drain(2, 0, records=40, loaded=40, seconds=4.0, dead_letters=1, dead_letter_reasons={"not_json": 1}),
        audit(1),
        drain(2, 1, records=30, loaded=29, seconds=3.0, dead_letters=1, dead_letter_reasons={"not_json": 1}),
        drain(2, 2, records=30, loaded=30, seconds=5.0, dead_letters=0, state="failed", error="lease lost"),
    ]

    rows = run_rows(documents)

    assert [(row.run_id, row.drains) for row in rows] == [
        ("manual__2026-03-01T12:02:00+00:00", 3),
        ("manual__2026-03-01T12:01:00+00:00", 1),
    ]
    mapped = rows[0]
    assert (mapped.records, mapped.loaded, mapped.dead_letters) == (100, 99, 2)
    assert mapped.produced == 102  # every drain carries the same produce summary: counted once
    assert (mapped.seconds, mapped.records_per_second) == (5.0, 20.0)  # side by side: the longest
    assert (mapped.state, mapped.error) == ("failed", "lease lost")
    assert mapped.dead_letter_reasons == (("not_json", 2),)
    assert rows[1] == RunRow.from_audit(audit(1))

    html = page(runs=rows)
    assert re.findall(r'<tr class="run" data-run-id="([^"]+)"', html) == [row.run_id for row in rows]
    assert html.count('class="muted drains">(3 drains)') == 1


def tried(n: int, tries: list[dict], **fields) -> dict:
    """Run ``n``'s audit document after ``tries`` (``kafka_mongo_etl.audit``'s own merge)."""
    from kafka_mongo_etl.audit import merged_document

    document = None
    for number, entry in enumerate(tries, start=1):
        at = T0 + dt.timedelta(minutes=n, seconds=number)
        document = merged_document(document, {}, {"try": number, "attempt": f"a{number}", **entry}, at)
    base = audit(n)
    return {
        "_id": base["_id"],
        "dag_run_id": base["dag_run_id"],
        "target": base["target"],
        **document,
        **fields,
    }


FAILED_WITH_DEAD_LETTERS = {
    "state": "failed",
    "error": "3 dead letters, more than the limit of 0",
    "records": 40,
    "loaded": 37,
    "dead_letters": 3,
    "dead_letter_reasons": {"not_json": 3},
}
RETRY_THAT_SUCCEEDS = {"state": "success", "records": 20, "loaded": 20, "seconds": 2.0, "dead_letters": 0}


def test_a_run_row_shows_what_all_tries_added_up_to_and_how_many_there_were() -> None:
    row = RunRow.from_audit(tried(1, [FAILED_WITH_DEAD_LETTERS, RETRY_THAT_SUCCEEDS]))

    assert (row.state, row.error) == ("success", None)
    assert (row.loaded, row.dead_letters, row.dead_letter_reasons) == (57, 3, (("not_json", 3),))
    assert (row.tries, row.failed_tries) == (2, 1)
    # The rate is the latest try's drain.
    assert (row.records, row.seconds) == (20, 2.0)

    from kafka_mongo_etl_ui.page import _runs_table

    html = _runs_table([row])
    assert '<span class="muted tries">(2 tries, 1 failed)</span>' in html
    assert '<td class="num dead-letters">3</td>' in html and '<td class="num loaded">57</td>' in html
    assert "tries" not in _runs_table([RunRow.from_audit(audit(1))])


def test_a_try_that_failed_midway_adds_its_dead_letters_but_no_documents() -> None:
    midway = {"state": "failed", "error": "no answer", "dead_letters": 2, "dead_letter_reasons": {"x": 2}}
    row = RunRow.from_audit(tried(1, [midway, RETRY_THAT_SUCCEEDS]))

    assert (row.loaded, row.dead_letters, row.tries, row.failed_tries) == (20, 2, 2, 1)


def test_the_mapped_drains_of_a_run_add_up_their_tries() -> None:
    from kafka_mongo_etl_ui.runs import run_rows

    documents = [
        drain(2, 0) | tried(2, [FAILED_WITH_DEAD_LETTERS, RETRY_THAT_SUCCEEDS], _id=drain(2, 0)["_id"]),
        drain(2, 1) | tried(2, [RETRY_THAT_SUCCEEDS], _id=drain(2, 1)["_id"]),
        drain(2, 2) | tried(2, [{**RETRY_THAT_SUCCEEDS, "state": "failed"}] * 3, _id=drain(2, 2)["_id"]),
    ]

    (row,) = run_rows(documents)

    assert (row.drains, row.tries, row.failed_tries) == (3, 6, 4)
    assert (row.state, row.loaded, row.dead_letters) == ("failed", 57 + 20 + 60, 3)
    from kafka_mongo_etl_ui.page import _runs_table

    assert '(3 drains)</span> <span class="muted tries">(6 tries, 4 failed)</span>' in _runs_table([row])
