"""The benchmark harness end to end on a tiny N: every produce and load contender moves exactly
the records it was given, the memory probe loads them all in its own interpreter, the scale
section drains every size, each peer (the sink connector, Bento, ours) loads exactly the topic,
and the results have the shape results.json and BENCHMARKS.md need.

No timing is asserted: a benchmark reports, it does not pass or fail on speed. The peers' test
builds Bento from the Go module proxy and starts Kafka Connect, minutes on a fresh machine, so
`make test` leaves it out; `BENCH_PEERS=1 .venv/bin/python -m pytest
tests/integration/test_bench_smoke.py` runs it (`make bench` runs the peers anyway).
"""

from __future__ import annotations

import json
import os

import pytest

from bench import harness, peers, report
from bench.services import BenchServices

N = 200


def test_every_contender_moves_exactly_n_records_and_the_report_shows_the_targets(
    tmp_path, connections, kafka_broker, mongo_server, airflow_home
) -> None:
    services = BenchServices(tmp_path, kafka_broker, mongo_server, airflow_home)
    options = harness.Options(
        n=N,
        reps=1,
        tutorial_cap=120.0,
        warm_up=False,
        sections=frozenset({"produce", "load", "memory", "scale"}),
    )

    results = harness.run(services, options)

    for section, size in (("produce", N), ("produce_10n", 10 * N)):
        assert set(results[section]) == {"ours", "raw", "tutorial"}
        for name, entry in results[section].items():
            assert [d["on_topic"] for d in entry["detail"]] == [size], (section, name)
    contenders = {c.name for c in harness.load_contenders(tutorial_cap=1.0)}
    assert set(results["load"]) == contenders
    for name in contenders - {"null_sink", "raw_decode"}:
        detail = results["load"][name]["detail"]
        assert [(d["records"], d["in_mongo"]) for d in detail] == [(N, N)], name
    assert results["load"]["tutorial"]["detail"][0]["capped_at_seconds"] is None
    for name in ("null_sink", "raw_decode"):
        assert [d["records"] for d in results["load"][name]["detail"]] == [N], name
    memory = results["memory"]
    assert (memory["n"]["in_mongo"], memory["10n"]["in_mongo"]) == (N, 10 * N)
    assert memory["10n"]["peak_rss_kb"] > memory["10n"]["rss_before_consume_kb"] > 0

    scale = results["scale"]
    assert [(scale[f"{f}n"]["records"], scale[f"{f}n"]["in_mongo"]) for f in harness.SCALE] == [
        (f * N, 0) for f in harness.SCALE
    ]
    assert all(entry["peak_rss_kb"] > entry["rss_before_consume_kb"] > 0 for entry in scale.values())
    for factor in harness.SCALE:
        runs = scale[f"{factor}n"]["runs"]
        assert [(run["records"], run["in_mongo"]) for run in runs] == [(factor * N, 0)] * options.reps

    ratios = results["ratios"]
    assert set(report.TARGETS) <= set(ratios)
    not_run = {key for key, (a, _) in report.RATIOS.items() if a.startswith("peers.")}
    assert {key for key, value in ratios.items() if value is None} == not_run, ratios
    # A share of wall time is a difference of two timings: at this N, on a busy machine, the
    # drain with the null sink can take longer than the one that writes, and the share go below 0.
    assert all(ratios[key] < 1 for key in report.SHARES), ratios
    assert all(value > 0 for key, value in ratios.items() if key not in not_run | set(report.SHARES)), ratios
    report.write_json(results, tmp_path / "results.json")
    report.write_chart(results, tmp_path / "results.png")
    report.write_markdown(results, tmp_path / "BENCHMARKS.md")
    assert json.loads((tmp_path / "results.json").read_text())["ratios"] == ratios
    assert (tmp_path / "results.png").stat().st_size > 0
    markdown = (tmp_path / "BENCHMARKS.md").read_text()
    for key in report.TARGETS:
        assert f"| `{key}` | {report._fmt(ratios[key])} | " in markdown, key
    assert "(not run in this benchmark)" in markdown  # the Airflow section


def test_a_capped_tutorial_reports_the_records_it_moved_not_n(
    connections, kafka_broker, mongo_server
) -> None:
    from bench import load

    # More records than one insert_one per message can move in the cap on any server.
    records = 20_000
    topic = harness.fill_topic(kafka_broker.bootstrap_servers, "bench_cap", records)
    target = load.LoadTarget(kafka_broker.bootstrap_servers, mongo_server.uri, topic, expected=records)
    tutorial = next(c for c in harness.load_contenders(tutorial_cap=0.5) if c.name == "tutorial")

    sample = load.measure(tutorial, target)

    assert sample.detail["capped_at_seconds"] == 0.5
    assert 0 < sample.records == sample.detail["in_mongo"] < records


@pytest.mark.skipif(
    not os.environ.get("BENCH_PEERS"), reason="builds Bento and starts Connect: set BENCH_PEERS=1 to run it"
)
@pytest.mark.timeout(1800)  # the first run builds Bento from the Go module proxy (minutes)
def test_each_peer_loads_exactly_the_topic_and_reports_its_start_up(
    connections, kafka_broker, mongo_server, airflow_home
) -> None:
    # More than two of the batches every contender writes (5,000), so that each one's documents
    # arrive over time and it has a rate from its first document to its last.
    n = 12_000
    bs = kafka_broker.bootstrap_servers
    topic = harness.fill_topic(bs, "bench_peers", n)

    measured, unavailable = harness.run_peers(bs, mongo_server.uri, topic, n, reps=1)

    assert unavailable == {}
    assert set(measured) == {peer.name for peer in peers.PEERS_RUN}
    for name, entry in measured.items():
        [detail] = entry["detail"]
        assert (detail["records"], detail["in_mongo"]) == (n, n), name
        assert detail["startup_seconds"] > 0, name
        assert entry["records"] == [n - detail["documents_at_first_sight"]] != [0], name
