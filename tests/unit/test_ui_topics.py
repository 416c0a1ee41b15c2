"""The ETL page with a topic map: a run that drained several topics into one target has a row
per topic, each adding up its own drains."""

from __future__ import annotations

import datetime as dt
import re

from kafka_mongo_etl_ui.page import PageData, render_page
from kafka_mongo_etl_ui.runs import DeadLetters, Target, run_rows

RUN = "manual__2026-03-01T12:00:00+00:00"
T0 = dt.datetime(2026, 3, 1, 12, 0)


def drain(topic: str, scope: str, records: int, **fields) -> dict:
    """One drain's audit document as a topic-map run writes it (``<batch>/<topic><scope>``)."""
    return {
        "_id": f"kafka_to_mongo/{RUN}/{topic}{scope}",
        "dag_run_id": RUN,
        "topic": topic,
        "group_id": "kafka_to_mongo.shop.orders",
        "target": "shop.orders",
        "records": records,
        "loaded": records,
        "dead_letters": 0,
        "seconds": 2.0,
        "state": "success",
        "updated_at": T0,
        **fields,
    }


def page(rows: list) -> str:
    data = PageData(
        target=Target("shop", "orders"),
        targets=["shop.orders"],
        runs=rows,
        limit=50,
        source=None,
        lag=None,
        dead_letters=DeadLetters("orders_dlq", exists=False),
    )
    return render_page(data, nonce="n0nce")


def test_a_run_of_two_topics_into_one_target_has_a_row_per_topic() -> None:
    documents = [
        drain("orders", "", 40),
        drain("returns", ":0", 7, seconds=1.0),
        drain("returns", ":1", 5, dead_letters=1, state="failed", error="1 dead letters"),
    ]
    rows = run_rows(documents)
    assert [(row.run_id, row.topic, row.drains, row.loaded, row.state) for row in rows] == [
        (RUN, "orders", 1, 40, "success"),
        (RUN, "returns", 2, 12, "failed"),
    ]
    html = page(rows)
    assert re.findall(r'<tr class="run" data-run-id="[^"]+" data-topic="([^"]*)">', html) == [
        "orders",
        "returns",
    ]
    assert re.findall(r'<td class="topic">([^<]*)</td>', html) == ["orders", "returns"]


def test_a_run_recorded_without_a_topic_shows_a_dash() -> None:
    document = drain("orders", "", 3)
    del document["topic"]
    (row,) = run_rows([document])
    assert row.topic is None
    assert '<td class="topic">–</td>' in page([row])


def test_the_other_topics_of_a_target_have_their_lag_shown() -> None:
    from kafka_mongo_etl_ui.lag import ConsumerLag, PartitionLag
    from kafka_mongo_etl_ui.runs import more_run_sources, run_source

    documents = [
        drain("orders", "", 40),
        drain("returns", ":0", 7, group_id="returns-group"),
        drain("returns", ":1", 5, group_id="returns-group"),
        drain("orders", "", 3),
    ]
    target = Target("shop", "orders")
    assert run_source(documents, target).topic == "orders"
    (more,) = more_run_sources(documents, target)
    assert (more.topic, more.group_id) == ("returns", "returns-group")
    assert more_run_sources(documents[:1], target) == []

    lags = (
        ConsumerLag("returns", "returns-group", (PartitionLag(0, 4, 0, 10), PartitionLag(1, 2, 0, 3))),
        ConsumerLag("refunds", "g", error="broker away"),
    )
    html = render_page(
        PageData(target=target, targets=[], runs=run_rows(documents), limit=50, more_lags=lags), nonce="n"
    )
    assert re.findall(
        r'<tr class="topic-lag" data-topic="([^"]+)">.*?<td class="num lag">([^<]*)</td>', html
    ) == [
        ("returns", "7"),
        ("refunds", "broker away"),
    ]
