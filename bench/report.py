"""The ratios, results.json, the chart (results.png) and BENCHMARKS.md, from one results dict.

BENCHMARKS.md is ``bench/BENCHMARKS.template.md`` with its ``$fields`` filled from the results:
tables and figures only, so the prose never disagrees with a new run.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from string import Template
from typing import Any

from bench import REPO
from bench.timing import ratio

RESULTS = REPO / "bench" / "results.json"
CHART = REPO / "bench" / "results.png"
MARKDOWN = REPO / "BENCHMARKS.md"
TEMPLATE = REPO / "bench" / "BENCHMARKS.template.md"

# The targets, shown beside the measured ratios (a benchmark reports; nothing fails).
TARGETS = {
    "drain_vs_raw_upsert": (">=", 2.0),
    "drain_vs_raw_insert": (">=", 0.9),
    "drain_vs_tutorial": (">=", 20.0),
    "produce_vs_raw": (">=", 0.9),
    "rss_10n_vs_n": ("<=", 1.2),
    "null_sink_vs_raw_decode": (">=", 1.0),
    "drain_vs_connector": (">=", 3.0),
    "drain_vs_bento": (">=", 1.5),
    "rate_50n_vs_n": (">=", 0.9),
    "rss_50n_vs_n": ("<=", 1.2),
}
# key: (numerator, denominator), each "section.contender": the ratio of their median rates.
RATIOS = {
    "drain_vs_raw_upsert": ("load.ours", "load.raw_upsert"),
    "drain_vs_raw_insert": ("load.ours", "load.raw_insert"),
    "drain_vs_tutorial": ("load.ours", "load.tutorial"),
    "reread_vs_first_load": ("load.ours_reread", "load.ours"),
    "overlap_vs_in_turn": ("load.ours", "load.ours_in_turn"),
    "null_sink_vs_drain": ("load.null_sink", "load.ours"),
    "null_sink_vs_raw_decode": ("load.null_sink", "load.raw_decode"),
    "drain_vs_connector": ("peers.ours", "peers.connector"),
    "drain_vs_bento": ("peers.ours", "peers.bento"),
    "drain_vs_connector_unjournaled": ("peers.ours", "peers.connector_unjournaled"),
    "drain_vs_raw_upsert_unjournaled": ("load.ours", "load.raw_upsert_unjournaled"),
    "drain_vs_raw_insert_unjournaled": ("load.ours", "load.raw_insert_unjournaled"),
    "concurrent_upsert_vs_raw_upsert": ("load.raw_upsert_concurrent", "load.raw_upsert"),
    "concurrent_insert_vs_raw_insert": ("load.raw_insert_concurrent", "load.raw_insert"),
    "produce_vs_raw": ("produce.ours", "produce.raw"),
    "produce_10n_vs_raw": ("produce_10n.ours", "produce_10n.raw"),
    "produce_vs_tutorial": ("produce.ours", "produce.tutorial"),
}
LABELS = {
    **{key: f"{a.replace('.', ': ')} / {b.split('.')[1]}" for key, (a, b) in RATIOS.items()},
    "mongo_share_of_drain_time": "load: share of ours' wall time spent writing (1 - null_sink / ours)",
    "rss_10n_vs_n": "memory: peak RSS of our consume, 10 x N / N",
    "rate_50n_vs_n": "scale: records/s of our drain (null sink), 50 x N / N",
    "rss_50n_vs_n": "scale: peak RSS of our drain (null sink), 50 x N / N",
}
# Figures derived from two measurements that are not a ratio of rates (may be 0 or negative).
SHARES = ("mongo_share_of_drain_time",)


def _rate(results: dict[str, Any], where: str) -> float | None:
    section, name = where.split(".")
    return results.get(section, {}).get(name, {}).get("median_records_per_second")


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """The headline comparisons, rate(ours) / rate(other); None where a section was not run."""
    out = {key: ratio(_rate(results, a), _rate(results, b)) for key, (a, b) in RATIOS.items()}
    load = results.get("load", {})
    null_s, ours_s = (load.get(name, {}).get("median_seconds") for name in ("null_sink", "ours"))
    out["mongo_share_of_drain_time"] = round(1 - null_s / ours_s, 3) if null_s and ours_s else None
    rss = results.get("memory")
    out["rss_10n_vs_n"] = ratio(rss["10n"]["peak_rss_kb"], rss["n"]["peak_rss_kb"]) if rss else None
    scale = results.get("scale")
    for key, field in (("rate_50n_vs_n", "records_per_second"), ("rss_50n_vs_n", "peak_rss_kb")):
        out[key] = ratio(scale["50n"][field], scale["1n"][field]) if scale else None
    return out


def write_json(results: dict[str, Any], path: Path = RESULTS) -> None:
    path.write_text(json.dumps(results, indent=1) + "\n")


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def _verdict(key: str, value: float | None) -> str:
    if key not in TARGETS:
        return ""
    op, bound = TARGETS[key]
    if value is None:
        return f"{op} {bound:g}"
    met = value >= bound if op == ">=" else value <= bound
    return f"{op} {bound:g}: {'**met**' if met else '**missed**'}"


def _rates_table(sections: dict[str, dict[str, Any]]) -> str:
    """One row per contender of ``sections`` (``{suffix: section}``), against the section's ours."""
    rows = [
        [
            f"`{name}`{suffix}",
            entry["label"],
            f"{statistics.median(entry['records']):,.0f}",
            _fmt(entry["median_seconds"], 3),
            _fmt(entry["median_records_per_second"], 0),
            _fmt(ratio(_ours_rate(section), entry["median_records_per_second"])),
        ]
        for suffix, section in sections.items()
        for name, entry in section.items()
    ]
    return _table(["contender", "what", "records", "median s", "records/s", "ours / this"], rows)


def _ours_rate(section: dict[str, Any]) -> float | None:
    """The section's ``ours`` rate; None when ``--contenders`` left it out."""
    return section.get("ours", {}).get("median_records_per_second")


def _peers_table(peers: dict[str, Any], unavailable: dict[str, str]) -> str:
    rows = [
        [
            f"`{name}`",
            entry["label"],
            f"{statistics.median(entry['records']):,.0f}",
            _fmt(entry["median_seconds"], 3),
            _fmt(entry["median_records_per_second"], 0),
            _fmt(ratio(peers["ours"]["median_records_per_second"], entry["median_records_per_second"])),
            _fmt(statistics.median(d["startup_seconds"] for d in entry["detail"]), 1),
        ]
        for name, entry in peers.items()
    ]
    header = ["contender", "what", "records after the first", "first to last s", "records/s", "ours / this"]
    notes = [f"\n\n**{name} could not run here:** {reason}" for name, reason in unavailable.items()]
    return _table([*header, "start-up s"], rows) + "".join(notes)


def _sections(results: dict[str, Any]) -> dict[str, str]:
    """The template's fields that depend on which sections ran."""
    fields = dict.fromkeys(
        ("load", "produce", "peers", "memory", "scale", "airflow", "tutorial"), "(not run in this benchmark)"
    )
    if results.get("peers") is not None:
        fields["peers"] = _peers_table(results["peers"], results.get("peers_unavailable") or {})
    if results.get("scale"):
        rows = [
            [size.replace("n", " x N"), f"{entry['records']:,}", _fmt(entry["drain_seconds"], 2)]
            + [_fmt(entry["records_per_second"], 0), f"{entry['peak_rss_kb'] / 1024:.0f}"]
            for size, entry in results["scale"].items()
        ]
        header = ["size", "records", "median drain s (client start-up aside)", "records/s", "peak RSS MiB"]
        fields["scale"] = _table(header, rows)
    if results.get("load"):
        fields["load"] = _rates_table({"": results["load"]})
        tutorial = results["load"].get("tutorial")
        if tutorial is not None:
            rates = [
                f"{r:,} records in {s:.0f} s"
                for r, s in zip(tutorial["records"], tutorial["seconds"], strict=True)
            ]
            fields["tutorial"] = ", ".join(rates)
    if results.get("produce"):
        sections = {", N": results["produce"], ", 10 x N": results["produce_10n"]}
        fields["produce"] = _rates_table(sections)
    if results.get("memory"):
        n, big = results["memory"]["n"], results["memory"]["10n"]
        fields["memory"] = (
            f"Peak RSS {n['peak_rss_kb'] / 1024:.0f} MiB draining {n['records']:,} records "
            f"({n['in_mongo']:,} in MongoDB), {big['peak_rss_kb'] / 1024:.0f} MiB draining "
            f"{big['records']:,} ({big['in_mongo']:,}); {n['rss_before_consume_kb'] / 1024:.0f} MiB "
            "before the drain."
        )
    airflow = results.get("airflow")
    if airflow:
        b = airflow["breakdown"]
        share = _fmt(100 * b["work_share"], 0)
        fields["airflow"] = (
            f"{len(airflow['runs']) - 1} runs of {airflow['count']} records after a first one (it took "
            f"{_fmt(airflow['first_run_trigger_to_success'])} s: cold imports), medians: trigger to success "
            f"**{_fmt(b['trigger_to_success'])} s**, of which the work of `produce` "
            f"{_fmt(b['produce_work'])} s and of `consume` {_fmt(b['consume_work'])} s ({share} %); the "
            "rest is Airflow: scheduling, and each task process starting and reporting back."
        )
    return fields


def _shared(meta: dict[str, Any]) -> str:
    """A sentence when the load averages say other work shared the machine during the run."""
    loads = [*meta["load_average_at_start"], *meta.get("load_average_at_end", [])]
    if max(loads, default=0) <= meta["cpus"]:
        return ""
    return (
        " **Other work shared the machine during this run** (load averages above the CPU count): "
        "the contenders took turns, so their ratios hold better than their absolute rates."
    )


def markdown(results: dict[str, Any]) -> str:
    meta, values = results["meta"], results["ratios"]
    rows = [[LABELS[key], f"`{key}`", _fmt(value), _verdict(key, value)] for key, value in values.items()]
    uncommitted = meta.get("uncommitted_code")
    versions = meta["versions"]
    return Template(TEMPLATE.read_text()).substitute(
        date=meta["date"],
        commit=meta.get("commit") or "?",
        uncommitted=f" (with uncommitted changes to {', '.join(uncommitted)})" if uncommitted else "",
        n=f"{meta['n']:,}",
        n10=f"{10 * meta['n']:,}",
        reps=meta["reps"],
        cpus=meta["cpus"],
        load_average=meta["load_average_at_start"],
        load_average_end=meta.get("load_average_at_end", "not recorded"),
        shared=_shared(meta),
        minutes=_fmt(meta.get("duration_seconds", 0) / 60, 1),
        versions=", ".join(f"{name} {version}" for name, version in versions.items()),
        cap=f"{meta['tutorial_cap_seconds']:g}",
        ratios=_table(["comparison", "key in results.json", "ratio", "issue's target"], rows),
        **_sections(results),
    )


def write_markdown(results: dict[str, Any], path: Path = MARKDOWN) -> None:
    path.write_text(markdown(results))


def write_chart(results: dict[str, Any], path: Path = CHART) -> None:
    """The drain-and-load contenders' median rates, one bar each (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta, load = results["meta"], results.get("load", {})
    names, rates = list(load)[::-1], [entry["median_records_per_second"] for entry in load.values()][::-1]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.set_title(
        f"Drain and load into MongoDB, records/s (log scale): N={meta['n']:,}, medians of {meta['reps']}, "
        f"commit {meta.get('commit') or '?'}, {meta['cpus']} CPUs",
        fontsize=10,
    )
    ax.barh(names, rates, color=["#2b6cb0" if name.startswith("ours") else "#a0aec0" for name in names])
    for y, rate in enumerate(rates):
        ax.text(rate, y, f" {rate:,.0f}", va="center", fontsize=8)
    if rates:
        ax.set_xscale("log")
    ax.margins(x=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
