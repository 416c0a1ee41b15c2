"""The headline comparisons of a results dict: rate(ours) / rate(other), None where a section
was not run. Pure, so ``python -m bench --report-only`` can recompute them."""

from __future__ import annotations

from typing import Any

from bench.timing import ratio


def _rate(results: dict[str, Any], section: str, name: str) -> float | None:
    return results.get(section, {}).get(name, {}).get("median_records_per_second")


def _secs(results: dict[str, Any], section: str, name: str) -> float | None:
    return results.get(section, {}).get(name, {}).get("median_seconds")


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """The headline comparisons; None where a section was not run."""
    ours_load = _rate(results, "load", "ours")
    out: dict[str, float | None] = {
        "produce_vs_raw": ratio(_rate(results, "produce", "ours"), _rate(results, "produce", "raw")),
        "produce_vs_tutorial": ratio(
            _rate(results, "produce", "ours"), _rate(results, "produce", "tutorial")
        ),
        "produce_10n_vs_raw": ratio(
            _rate(results, "produce_10n", "ours"), _rate(results, "produce_10n", "raw")
        ),
        "produce_10n_vs_tutorial": ratio(
            _rate(results, "produce_10n", "ours"), _rate(results, "produce_10n", "tutorial")
        ),
        "drain_vs_raw": ratio(ours_load, _rate(results, "load", "raw_upsert")),
        "drain_vs_raw_insert": ratio(ours_load, _rate(results, "load", "raw_insert")),
        "drain_vs_provider": ratio(ours_load, _rate(results, "load", "provider")),
        "drain_vs_provider_without_idle": ratio(ours_load, _rate(results, "load", "provider_without_idle")),
        "drain_vs_tutorial": ratio(ours_load, _rate(results, "load", "tutorial")),
        "drain_vs_tutorial_at_n": ratio(ours_load, _rate(results, "load", "tutorial_at_n")),
        "proposed_produce_vs_raw": ratio(
            _rate(results, "produce", "proposed"), _rate(results, "produce", "raw")
        ),
        "proposed_produce_10n_vs_raw": ratio(
            _rate(results, "produce_10n", "proposed"), _rate(results, "produce_10n", "raw")
        ),
        "null_sink_vs_drain": ratio(_rate(results, "load", "null_sink"), ours_load),
        "mongo_share_of_drain_time": None,
        "rss_10n_vs_n": None,
        "rss_growth_10n_vs_n": None,
        "write_model_insert_vs_upsert": ratio(
            _rate(results, "write_model", "insert_skip_first_load"),
            _rate(results, "write_model", "upsert_first_load"),
        ),
        "write_model_insert_vs_upsert_redelivery": ratio(
            _rate(results, "write_model", "insert_skip_redelivery"),
            _rate(results, "write_model", "upsert_redelivery"),
        ),
        "proposed_produce_speedup_500": ratio(
            _secs(results, "fixed_costs", "produce"), _secs(results, "fixed_costs", "produce_metadata_first")
        ),
        "proposed_drain_speedup_500": ratio(
            _secs(results, "fixed_costs", "drain_null_sink"),
            _secs(results, "fixed_costs", "drain_null_sink_capped"),
        ),
    }
    provider = results.get("load", {}).get("provider_without_idle")
    if provider and ours_load:
        # The same run with the operator's default poll_timeout: its work plus a 60 s idle tail.
        projected = provider["median_seconds"] + 60.0
        out["drain_vs_provider_default_poll_projected"] = ratio(ours_load, provider["records"][0] / projected)
    null_s, ours_s = _secs(results, "load", "null_sink"), _secs(results, "load", "ours")
    if null_s and ours_s:
        out["mongo_share_of_drain_time"] = round(1 - null_s / ours_s, 3)
    rss = results.get("memory")
    if rss:
        out["rss_10n_vs_n"] = ratio(rss["10n"]["peak_rss_kb"], rss["n"]["peak_rss_kb"])
        out["rss_growth_10n_vs_n"] = ratio(
            rss["10n"]["peak_rss_kb"] - rss["10n"]["rss_before_consume_kb"],
            rss["n"]["peak_rss_kb"] - rss["n"]["rss_before_consume_kb"],
        )
        if "proposed_10n" in rss:
            out["proposed_rss_10n_vs_n"] = ratio(
                rss["proposed_10n"]["peak_rss_kb"], rss["proposed_n"]["peak_rss_kb"]
            )
    in_process = results.get("partitions", {}).get("one_task_in_process", {})
    if in_process:
        out["partitions_4_vs_1_one_task"] = ratio(
            in_process["ours_p4"]["median_records_per_second"],
            in_process["ours_p1"]["median_records_per_second"],
        )
    airflow = results.get("airflow", {}).get("partitions", {})
    for p, one in airflow.get("one_task", {}).items():
        mapped = airflow.get("mapped", {}).get(p)
        if mapped:
            # a wall-time ratio: above 1 means the mapped shape finished sooner
            out[f"airflow_one_task_vs_mapped_wall_p{p}"] = ratio(
                one["median_trigger_to_success"], mapped["median_trigger_to_success"]
            )
    return out
