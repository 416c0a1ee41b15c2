"""The benchmark harness end to end on a tiny N: every produce and load contender moves exactly
the records it was given, and the results have the shape BENCHMARKS.md and results.json need.

No timing is asserted: a benchmark reports, it does not pass or fail on speed.
"""

from __future__ import annotations

import json

from bench import harness, report
from bench.services import BenchServices

N = 200


def test_produce_and_load_contenders_move_exactly_n_records(
    tmp_path, connections, kafka_broker, mongo_server, airflow_home
) -> None:
    services = BenchServices(tmp_path, kafka_broker, mongo_server, airflow_home)
    options = harness.Options(
        n=N,
        reps=1,
        tutorial_n=N,
        provider_poll_timeout=0.5,
        warm_up=False,
        sections=frozenset({"produce", "load"}),
    )

    results = harness.run(services, options)

    for section, size in (("produce", N), ("produce_10n", 10 * N)):
        assert set(results[section]) == {"ours", "raw", "tutorial", "proposed"}
        for name, entry in results[section].items():
            assert [d["on_topic"] for d in entry["detail"]] == [size], (section, name)
    expected_load = {"ours", "raw_upsert", "raw_insert", "provider", "tutorial", "null_sink"}
    assert expected_load <= set(results["load"])
    for name in expected_load - {"null_sink"}:
        assert [d["in_mongo"] for d in results["load"][name]["detail"]] == [N], name
    assert [d["records"] for d in results["load"]["null_sink"]["detail"]] == [N]
    assert results["load"]["provider"]["detail"][0]["idle_seconds"] is not None
    ratios = results["ratios"]
    for key in ("produce_vs_raw", "drain_vs_raw", "drain_vs_provider", "drain_vs_tutorial"):
        assert ratios[key] is not None and ratios[key] > 0, key
    assert "rss_10n_vs_n" in ratios and "write_model_insert_vs_upsert" in ratios

    report.write_json(results, tmp_path / "results.json")
    report.write_chart(results, tmp_path / "results.png")
    report.write_markdown(results, tmp_path / "BENCHMARKS.md")
    assert json.loads((tmp_path / "results.json").read_text())["ratios"] == ratios
    assert (tmp_path / "results.png").stat().st_size > 0
    markdown = (tmp_path / "BENCHMARKS.md").read_text()
    assert "drain_vs_provider" in markdown and "ConsumeFromTopicOperator" in markdown
