"""results.json, the chart (results.png) and BENCHMARKS.md, all from one results dict.

Every figure in BENCHMARKS.md is read from the results; the sentences that interpret them are
chosen by the figures, so a new run rewrites the whole file consistently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results.json"
CHART = REPO / "bench" / "results.png"
MARKDOWN = REPO / "BENCHMARKS.md"

# The targets, shown beside the measured ratios (a benchmark reports; nothing fails).
TARGETS = {
    "produce_vs_raw": ">= 0.9",
    "drain_vs_raw": ">= 0.9",
    "drain_vs_tutorial": ">= 20",
    "drain_vs_provider": "> 1",
    "rss_10n_vs_n": "<= 1.2",
}
RATIO_LABELS = {
    "produce_vs_raw": "produce: ours / raw confluent-kafka loop",
    "produce_vs_tutorial": "produce: ours / tutorial kafka-python",
    "produce_10n_vs_raw": "produce 10 x N: ours / raw loop",
    "produce_10n_vs_tutorial": "produce 10 x N: ours / tutorial",
    "drain_vs_raw": "drain+load: ours / raw loop, same upserts",
    "drain_vs_raw_insert": "drain+load: ours / raw loop, insert_many",
    "drain_vs_provider": "drain+load: ours / ConsumeFromTopicOperator",
    "drain_vs_provider_without_idle": "drain+load: ours / operator without its idle wait",
    "drain_vs_tutorial": "drain+load: ours / tutorial consumer (its smaller N)",
    "drain_vs_tutorial_at_n": "drain+load: ours / tutorial consumer on all N (one run)",
    "null_sink_vs_drain": "our drain with a null sink / with MongoDB",
    "mongo_share_of_drain_time": "share of our drain+load wall time spent writing",
    "rss_10n_vs_n": "peak RSS of our consume, 10 x N / N",
    "rss_growth_10n_vs_n": "RSS growth during the consume, 10 x N / N",
    "write_model_insert_vs_upsert": "write model, first load: insert-skip-duplicates / upsert",
    "write_model_insert_vs_upsert_redelivery": "write model, redelivery: insert-skip-duplicates / upsert",
    "partitions_4_vs_1_one_task": "one task, in process: 4 partitions / 1 partition",
    "proposed_produce_speedup_500": "proposed produce change, 500 records: time before / after",
    "proposed_produce_vs_raw": "proposed produce loop / raw loop",
    "proposed_produce_10n_vs_raw": "proposed produce loop, 10 x N / raw loop",
    "proposed_rss_10n_vs_n": "peak RSS with the proposed prefetch, 10 x N / N",
    "proposed_drain_speedup_500": "proposed drain change, 500 records: time before / after",
}


def write_json(results: dict[str, Any], path: Path = RESULTS) -> None:
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _rate(entry: dict[str, Any] | None) -> float | None:
    return entry.get("median_records_per_second") if entry else None


def write_chart(results: dict[str, Any], path: Path = CHART) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    meta = results["meta"]
    fig.suptitle(
        f"kafka_to_mongo benchmarks: N={meta['n']:,}, medians of {meta['reps']} (commit "
        f"{meta.get('commit') or '?'}, {meta['cpus']} CPUs)",
        fontsize=12,
    )

    def bars(
        ax: Any, title: str, rows: list[tuple[str, float | None]], xlabel: str, log: bool = False
    ) -> None:
        rows = [(label, value) for label, value in rows if value]
        if not rows:
            ax.set_axis_off()
            ax.set_title(f"{title}\n(not run)")
            return
        labels = [label for label, _ in rows][::-1]
        values = [value for _, value in rows][::-1]
        colors = [
            "#2b6cb0"
            if label.startswith("ours")
            else "#38a169"
            if label.startswith("proposed")
            else "#a0aec0"
            for label in labels
        ]
        ax.barh(labels, values, color=colors)
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:,.0f}", va="center", fontsize=8)
        if log:
            ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        ax.margins(x=0.25)

    produce, produce_10n = results.get("produce", {}), results.get("produce_10n", {})
    bars(
        axes[0][0],
        "Produce (records/s; N and 10 x N)",
        [
            *[(f"{name} (N)", _rate(produce.get(name))) for name in ("ours", "raw", "tutorial", "proposed")],
            *[
                (f"{name} (10N)", _rate(produce_10n.get(name)))
                for name in ("ours", "raw", "tutorial", "proposed")
            ],
        ],
        "records per second",
    )
    load = results.get("load", {})
    bars(
        axes[0][1],
        "Drain and load into MongoDB (records/s, log scale)",
        [
            ("ours", _rate(load.get("ours"))),
            ("ours, null sink", _rate(load.get("null_sink"))),
            ("raw upserts", _rate(load.get("raw_upsert"))),
            ("raw insert_many", _rate(load.get("raw_insert"))),
            ("operator", _rate(load.get("provider"))),
            ("operator w/o idle", _rate(load.get("provider_without_idle"))),
            ("tutorial", _rate(load.get("tutorial"))),
            ("tutorial, all N", _rate(load.get("tutorial_at_n"))),
        ],
        "records per second",
        log=True,
    )
    models = results.get("write_model", {})
    bars(
        axes[1][0],
        "Write model on the Mongo-wire server (documents/s)",
        [
            ("ours: upsert, new _ids", _rate(models.get("upsert_first_load"))),
            ("ours: upsert, _ids exist", _rate(models.get("upsert_redelivery"))),
            ("insert-skip, new _ids", _rate(models.get("insert_skip_first_load"))),
            ("insert-skip, _ids exist", _rate(models.get("insert_skip_redelivery"))),
        ],
        "documents per second",
    )
    ax = axes[1][1]
    airflow = results.get("airflow")
    if airflow:
        shapes = airflow["partitions"]
        counts = sorted({int(p) for shape in shapes.values() for p in shape})
        width = 0.38
        for offset, (shape, color) in enumerate((("one_task", "#2b6cb0"), ("mapped", "#dd6b20"))):
            values = [
                shapes.get(shape, {}).get(str(p), {}).get("median_trigger_to_success") or 0 for p in counts
            ]
            xs = [i + (offset - 0.5) * width for i in range(len(counts))]
            ax.bar(xs, values, width, label=shape.replace("_", " "), color=color)
        whole = airflow["whole_run"]["breakdown"]["trigger_to_success"]
        ax.set_xticks(range(len(counts)), [f"{p} partition(s)" for p in counts])
        ax.set_ylabel("trigger to success (s)", fontsize=9)
        ax.set_title(
            f"Airflow runs draining N records (whole 500-record DAG run: {_fmt(whole, 1)} s)", fontsize=10
        )
        ax.legend(fontsize=8)
    else:
        ax.set_axis_off()
        ax.set_title("Airflow runs (not run: AIRFLOW=0)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def _series_rows(section: dict[str, Any], names: list[str], reference: float | None) -> list[list[str]]:
    rows = []
    for name in names:
        entry = section.get(name)
        if not entry:
            continue
        rate = _rate(entry)
        records = entry["records"][0] if entry["records"] else 0
        row = [entry["label"], f"{records:,}", _fmt(entry["median_seconds"], 3), _fmt(rate, 0)]
        if reference is not None:
            row.append(_fmt(reference / rate if rate else None))
        rows.append(row)
    return rows


def _target(value: float | None, key: str) -> str:
    """``meets``/``misses`` the issue's target for ``key``, with the target."""
    target = TARGETS.get(key)
    if value is None or target is None:
        return ""
    op, bound = target.split()
    met = {">=": value >= float(bound), "<=": value <= float(bound), ">": value > float(bound)}[op]
    return f" ({'meets' if met else 'misses'} the issue's target, {target})"


def _summary(results: dict[str, Any]) -> list[str]:
    """A few sentences on the headline figures, each only when its section ran."""
    r = results["ratios"]
    lines = ["## In short", ""]
    if r.get("produce_vs_raw") is not None:
        lines.append(
            f"- **Produce**: ours moves {_fmt(r['produce_vs_raw'])} x the raw loop's rate at "
            f"N{_target(r['produce_vs_raw'], 'produce_vs_raw')} (both fetch the topic's metadata before the "
            f"first record), and {_fmt(r.get('produce_10n_vs_raw'))} x at 10 x N, where the per-record "
            "Python of each loop shows; the proposed loop (now the shipped one) reaches "
            f"{_fmt(r.get('proposed_produce_10n_vs_raw'))} x."
        )
    if r.get("drain_vs_raw") is not None:
        lines.append(
            f"- **Drain and load**: ours moves {_fmt(r['drain_vs_raw'])} x the raw loop with the same "
            f"upserts{_target(r['drain_vs_raw'], 'drain_vs_raw')}. Writing takes "
            f"{_fmt(100 * (r.get('mongo_share_of_drain_time') or 0), 0)} % of its time: the MongoDB-wire "
            "server is the bottleneck, and the write model is the lever (insert-and-skip-duplicates loads "
            f"{_fmt(r.get('write_model_insert_vs_upsert'))} x faster than upserts, for immutable records)."
        )
    if r.get("drain_vs_tutorial") is not None:
        text = (
            f"- **Against the tutorial's consumer**: {_fmt(r['drain_vs_tutorial'], 1)} x (median of its "
            f"alternating runs){_target(r['drain_vs_tutorial'], 'drain_vs_tutorial')}"
        )
        if r.get("drain_vs_tutorial_at_n"):
            text += f"; {_fmt(r['drain_vs_tutorial_at_n'], 1)} x on all N"
        drift = results.get("server_drift") or []
        if len(drift) > 1 and drift[-1]["insert_one_ms"] > 2 * drift[0]["insert_one_ms"]:
            text += (
                ". The ratio grows during a run because this server's `insert_one` slows down as it "
                "accumulates writes (see the drift table)"
            )
        lines.append(text + ".")
    if r.get("drain_vs_provider") is not None:
        without = r.get("drain_vs_provider_without_idle")
        poll = results["meta"].get("provider_poll_timeout")
        text = (
            f"- **Against ConsumeFromTopicOperator**: {_fmt(r['drain_vs_provider'])} x with a {poll:g} s "
            f"`poll_timeout`, about {_fmt(r.get('drain_vs_provider_default_poll_projected'), 1)} x with its "
            f"default 60 s{_target(r['drain_vs_provider'], 'drain_vs_provider')}; without its idle tail, "
            f"{_fmt(without)} x"
        )
        if without is not None and without < 1.2:
            text += ": its cost is the wait, not the work"
        lines.append(text + ".")
    if r.get("rss_10n_vs_n") is not None:
        lines.append(
            f"- **Memory**: peak RSS at 10 x N is {_fmt(r['rss_10n_vs_n'])} x the peak at "
            f"N{_target(r['rss_10n_vs_n'], 'rss_10n_vs_n')}"
            + (
                f"; {_fmt(r['proposed_rss_10n_vs_n'])} x with a 10,000-record consumer prefetch."
                if r.get("proposed_rss_10n_vs_n")
                else "."
            )
        )
    airflow = results.get("airflow")
    if airflow:
        b = airflow["whole_run"]["breakdown"]
        p4 = r.get("airflow_one_task_vs_mapped_wall_p4")
        shape = (
            "one mapped task per partition" if p4 is not None and p4 >= 1.2 else "one task for all partitions"
        )
        lines.append(
            f"- **Airflow**: a whole 500-record run takes {_fmt(b['trigger_to_success'], 1)} s from trigger "
            f"to success, {_fmt(100 * (b.get('work_share') or 0), 0)} % of it work; the default shape stays "
            f"{shape} (at 4 partitions one task took {_fmt(p4)} x the mapped run's time)."
        )
    return [*lines, ""] if len(lines) > 2 else []


def markdown(results: dict[str, Any]) -> str:
    meta, ratios = results["meta"], results["ratios"]
    n = meta["n"]
    out = [
        "# Benchmarks",
        "",
        f"Made by `make bench` (the harness in `bench/`) on {meta['date']} at commit "
        f"`{meta.get('commit') or '?'}`: N = {n:,} records, {_plural(meta['reps'], 'repetition')}, "
        f"{meta['cpus']} CPUs (load average {meta['load_average_at_start']} at the start: other work shared "
        f"the machine), Python {meta['python']}, Airflow {meta['versions']['airflow']}, confluent-kafka "
        f"{meta['versions']['confluent_kafka']} (librdkafka {meta['versions']['librdkafka']}), kafka-python "
        f"{meta['versions']['kafka_python']}, pymongo {meta['versions']['pymongo']}. The run took "
        f"{_fmt(meta.get('duration_seconds', 0) / 60, 1)} minutes.",
    ]
    if meta.get("uncommitted_code"):
        out[-1] += (
            " The measured code had uncommitted changes at the time (others were editing it): "
            + ", ".join(f"`{path}`" for path in meta["uncommitted_code"])
            + "."
        )
    out += [
        "",
        "Every contender ran against the same Kafka 4 broker and the same MongoDB-wire server (SecantusDB), "
        "both started by the harness on free ports with their state in a temp dir, on the same records, in "
        "one run, taking turns (the order rotates each repetition). Figures are medians. Absolute rates "
        "depend on the machine and on what else runs on it; compare the ratios. A benchmark reports: "
        "nothing here passes or fails on speed.",
        "",
        "![Benchmark chart](bench/results.png)",
        "",
        *_summary(results),
        "## How to reproduce",
        "",
        "```sh",
        "make bench              # N=20000, 3 repetitions, Airflow included",
        "make bench N=50000      # another size",
        "make bench AIRFLOW=0    # without the Airflow runs",
        ".venv/bin/python -m bench --help   # every option (repetitions, sections, output paths)",
        "```",
        "",
        "It needs what `make test` needs (Java, Maven, the venv) and nothing running: it starts and stops "
        "its own broker, Mongo-wire server and Airflow. It writes `bench/results.json`, "
        "`bench/results.png`, this file, and the profiles in `bench/profiles/`.",
        "",
        "## Ratios",
        "",
        f"{meta['ratio_convention']}.",
        "",
    ]
    rows = []
    for key, label in RATIO_LABELS.items():
        if key in ratios:
            rows.append([label, f"`{key}`", _fmt(ratios[key]), TARGETS.get(key, "")])
    for key, value in ratios.items():
        if key.startswith("airflow_one_task_vs_mapped_wall_p"):
            p = key.rsplit("_p", 1)[1]
            rows.append(
                [f"Airflow, {p} partition(s): one-task wall / mapped wall", f"`{key}`", _fmt(value), ""]
            )
    out += _table(["comparison", "key in results.json", "ratio", "issue's target"], rows)

    produce, produce_10n = results.get("produce"), results.get("produce_10n")
    if produce:
        out += ["", f'## Produce ({n:,} and {10 * n:,} records `{{"num": n}}`)', ""]
        rows = []
        for name in ("ours", "raw", "tutorial", "proposed"):
            if name not in produce:
                continue
            small, big = produce[name], produce_10n[name]
            rows.append(
                [
                    small["label"],
                    _fmt(small["median_seconds"], 3),
                    _fmt(_rate(small), 0),
                    _fmt(big["median_seconds"], 3),
                    _fmt(_rate(big), 0),
                ]
            )
        out += _table(["contender", "N: s", "N: records/s", "10 x N: s", "10 x N: records/s"], rows)
        out += [
            "",
            "Timed from creating the client to the last acknowledgement (`flush`), into a new 3-partition "
            "topic each time; the records that landed are counted afterwards. Ours and the raw loop have "
            "the same guarantee (idempotent, `acks=all`) and tuning; the raw loop asks for delivery reports "
            "of failures only and polls only when the local queue is full. The tutorial sends "
            '`{"num": n}` without a key; ours and the raw loop add the batch and a key.',
        ]
        fixed_costs = results.get("fixed_costs", {})
        wait, warm = fixed_costs.get("produce"), fixed_costs.get("produce_metadata_first")
        if wait and warm and wait["median_seconds"] - warm["median_seconds"] > 0.2:
            out[-1] += (
                " At N the clock is mostly the idempotent producer's start-up wait (about "
                f"{_fmt(wait['median_seconds'] - warm['median_seconds'])} s, change 1 below), for ours and "
                "the raw loop alike; 10 x N shows the loops themselves."
            )

    load = results.get("load")
    if load:
        reference = _rate(load["ours"])
        out += ["", f"## Drain and load into MongoDB ({n:,} records, 3 partitions)", ""]
        out += _table(
            ["contender", "records", "median s", "records/s", "ours is x times faster"],
            _series_rows(
                load,
                [
                    "ours",
                    "raw_upsert",
                    "raw_insert",
                    "provider",
                    "provider_without_idle",
                    "tutorial",
                    "tutorial_at_n",
                    "null_sink",
                ],
                reference,
            ),
        )
        provider = load.get("provider", {})
        idle = [
            d.get("idle_seconds") for d in provider.get("detail", []) if d.get("idle_seconds") is not None
        ]
        without = load.get("provider_without_idle")
        out += [
            "",
            "Each run reads the same topic with a new consumer group into a new collection; the documents "
            "that landed are counted afterwards (see `in_mongo` in results.json).",
        ]
        if idle:
            median_idle = sorted(idle)[len(idle) // 2]
            projected = (without["median_seconds"] + 60) if without else None
            out += [
                "",
                "- **ConsumeFromTopicOperator** (provider 2.1.0, run with `execute(context={})` outside "
                "a DAG run, which works) stops only after a `consume` that returns nothing for "
                f"`poll_timeout`. It ran with `poll_timeout={meta['provider_poll_timeout']:g}` s; its idle "
                f"tail measured {_fmt(median_idle)} s (median), and without it the run took "
                f"{_fmt(without['median_seconds'] if without else None)} s. With the default "
                f"`poll_timeout=60` the same run would take about {_fmt(projected, 1)} s (ours "
                f"{_fmt(ratios.get('drain_vs_provider_default_poll_projected'), 1)} x faster). Its "
                "`apply_function_batch` wrote the same documents as ours with `MongoHook.replace_many(..., "
                "upsert=True, ordered=False)`; it subscribes (a group join), commits with "
                "`commit_cadence='end_of_batch'` (asynchronous commits), and any batch smaller than "
                "`max_batch_size` also waits out `poll_timeout`.",
            ]
        tutorial, tutorial_at_n = load.get("tutorial"), load.get("tutorial_at_n")
        if tutorial:
            t_n = tutorial["records"][0]
            text = (
                "- **The tutorial's consumer** (kafka-python, `enable_auto_commit=True`, `insert_one` per "
                f"message) took turns with the others on {t_n:,} records"
            )
            text += " (fewer than N, to keep the run short)" if t_n < n else ""
            text += (
                "; it never ends by itself, so the harness stops it once it has consumed that many. Its "
                "documents get a random `_id`: a re-read doubles them."
            )
            ours_runs = load.get("ours")
            if ours_runs and len(ours_runs["seconds"]) == len(tutorial["seconds"]) > 1:
                per_rep = [
                    (ours_n / ours_s) / (t_records / t_s)
                    for ours_n, ours_s, t_records, t_s in zip(
                        ours_runs["records"],
                        ours_runs["seconds"],
                        tutorial["records"],
                        tutorial["seconds"],
                        strict=True,
                    )
                ]
                text += " Repetition by repetition, ours was " + ", ".join(f"{r:.1f}" for r in per_rep)
                text += " times faster (see the server's drift below)."
            if tutorial_at_n:
                small_rate, full_rate = _rate(tutorial), _rate(tutorial_at_n)
                text += (
                    f" One more run on all {n:,} records moved {_fmt(full_rate, 0)} records/s against "
                    f"{_fmt(small_rate, 0)} on {t_n:,}"
                )
                if small_rate and full_rate and full_rate < 0.7 * small_rate:
                    text += (
                        ": on this server `insert_one` gets slower as the collection grows and as the "
                        "server accumulates writes (the batched writes of the other contenders barely do), "
                        "so the tutorial's rate, and `drain_vs_tutorial`, depend on N and on when it runs. "
                        "The headline ratio uses its faster, smaller runs."
                    )
                else:
                    text += "."
            out.append(text)
        out += [
            "- **The raw loops** assign every partition, read the watermarks once and ask `consume` for at "
            "most the records left, write each batch, then commit synchronously: the same at-least-once "
            "reading and the same `_id`s as ours. The insert loop skips duplicate-key errors (11000), so a "
            "re-read is harmless for records that never change.",
            "- The shared topics are written uncompressed: the tutorial's kafka-python cannot read lz4 "
            "batches without the `lz4` package, which is not in the lock.",
        ]

    models = results.get("write_model")
    if load or models:
        out += ["", "## Where the time goes: the MongoDB-wire server", ""]
        if load:
            share = ratios.get("mongo_share_of_drain_time")
            null_rate, ours_rate = _rate(load.get("null_sink")), _rate(load.get("ours"))
            verdict = (
                "**The MongoDB-wire server is the bottleneck.**"
                if share is not None and share >= 0.5
                else "The MongoDB-wire server is not the main cost here."
            )
            out += [
                f"{verdict} Our drain decodes records and builds documents at {_fmt(null_rate, 0)} "
                f"records/s with a null sink, and loads {_fmt(ours_rate, 0)} records/s with the real one: "
                f"writing is {_fmt(100 * share if share is not None else None, 0)} % of the wall time. The "
                f"raw loop with the same upserts loads {_fmt(_rate(load.get('raw_upsert')), 0)} records/s, "
                f"the raw loop with plain inserts {_fmt(_rate(load.get('raw_insert')), 0)} records/s"
                + (
                    ": on this server the write model, not the Kafka client or our Python, sets the pace."
                    if share is not None and share >= 0.5
                    else "."
                ),
            ]
        if models:
            out += [
                "",
                f"The write models alone ({n:,} documents in batches of 5,000, no Kafka), each on a new "
                "collection, then the same documents again (what a re-read after a crash sends):",
                "",
            ]
            out += _table(
                ["write model", "documents", "median s", "documents/s"],
                _series_rows(
                    models,
                    [
                        "upsert_first_load",
                        "upsert_redelivery",
                        "insert_skip_first_load",
                        "insert_skip_redelivery",
                    ],
                    None,
                ),
            )
            out += [
                "",
                f"Insert-and-skip-duplicates moves {_fmt(ratios.get('write_model_insert_vs_upsert'))} x as "
                "many new documents per second as replace-upserts, and "
                f"{_fmt(ratios.get('write_model_insert_vs_upsert_redelivery'))} x on a redelivery. Both "
                "keep exactly one document per `_id`, so both keep the exactly-once guarantee when a batch "
                "is re-read. Upsert (ours) also lets a re-sent record with new content under the same key "
                "win; insert-and-skip keeps the first copy, which is right only for records that never "
                "change (like this ETL's numbered records). Offering it as a `write_mode` option would be "
                "safe for immutable records.",
            ]

    drift = results.get("server_drift")
    if drift and len(drift) > 1:
        first, last = drift[0], drift[-1]
        out += [
            "",
            "The server's speed drifts as it accumulates writes (even of dropped collections). Probes on a "
            f"scratch collection ({_plural(500, 'insert_one call')}, then one bulk write of 5,000 upserts) "
            "at points of the run:",
            "",
        ]
        out += _table(
            ["when", "insert_one (ms each)", "bulk upserts/s"],
            [[d["when"], _fmt(d["insert_one_ms"]), _fmt(d["bulk_upserts_per_second"], 0)] for d in drift],
        )
        out += [
            "",
            f"Single-document inserts went from {_fmt(first['insert_one_ms'])} to "
            f"{_fmt(last['insert_one_ms'])} ms while bulk upserts went from "
            f"{_fmt(first['bulk_upserts_per_second'], 0)} to {_fmt(last['bulk_upserts_per_second'], 0)} per "
            "second: a loader that writes one document per round trip (the tutorial) suffers the drift, "
            "batched loaders hardly do. The contenders alternate, so each saw the same drift.",
        ]
        tutorial = (results.get("load") or {}).get("tutorial")
        if tutorial and len(tutorial["seconds"]) > 1:
            out[-1] += (
                " The tutorial's runs, in order: "
                + ", ".join(f"{sec:.1f} s" for sec in tutorial["seconds"])
                + f" for {tutorial['records'][0]:,} records each."
            )

    rss = results.get("memory")
    if rss:
        out += ["", "## Memory of our consume task", ""]
        rows = []
        for key, label in (
            ("n", f"N = {n:,}"),
            ("10n", f"10 x N = {10 * n:,}"),
            ("proposed_n", f"N = {n:,}, proposed prefetch"),
            ("proposed_10n", f"10 x N = {10 * n:,}, proposed prefetch"),
        ):
            entry = rss.get(key)
            if not entry:
                continue
            rows.append(
                [
                    label,
                    f"{entry['records']:,}",
                    f"{entry['in_mongo']:,}",
                    f"{entry['rss_before_consume_kb'] / 1024:.0f}",
                    f"{entry['peak_rss_kb'] / 1024:.0f}",
                ]
            )
        out += _table(["records", "drained", "in MongoDB", "RSS before (MiB)", "peak RSS (MiB)"], rows)
        out += [
            "",
            "`run_consume` in a fresh interpreter (`python -m bench.memory`), peak from the kernel "
            f"(VmHWM). Peak RSS at 10 x N is {_fmt(ratios.get('rss_10n_vs_n'))} x the peak at N; the growth "
            "above the interpreter's baseline (Airflow and the clients imported) is "
            f"{_fmt(ratios.get('rss_growth_10n_vs_n'))} x. "
            + (
                "The drain holds one batch (5,000 records) at a time: its memory does not grow with the "
                "topic."
                if (ratios.get("rss_10n_vs_n") or 99) <= 1.2
                else "The drain holds one batch (5,000 records) at a time, but librdkafka prefetches up to "
                "`queued.min.messages` records per partition (`CONSUMER_TUNING` sets 100,000) while MongoDB "
                "is slower than the broker, so a bigger topic fills a bigger prefetch queue."
            ),
        ]

    partitions = results.get("partitions", {}).get("one_task_in_process")
    airflow = results.get("airflow")
    if partitions or airflow:
        out += ["", "## Partitions", ""]
    if partitions:
        out += [
            f"Our consume over topics of 1, 2 and 4 partitions ({n:,} records each), one task, in process:",
            "",
        ]
        rows = []
        for p in (1, 2, 4):
            ours_entry, null_entry = partitions.get(f"ours_p{p}"), partitions.get(f"null_sink_p{p}")
            if ours_entry:
                rows.append(
                    [
                        str(p),
                        _fmt(ours_entry["median_seconds"], 3),
                        _fmt(_rate(ours_entry), 0),
                        _fmt(_rate(null_entry), 0),
                    ]
                )
        out += _table(["partitions", "median s", "records/s", "null sink records/s"], rows)
    if airflow:
        shapes = airflow["partitions"]
        out += [
            "",
            f"Through Airflow ({meta['versions']['airflow']} standalone, LocalExecutor, SQLite; "
            f"{_plural(meta['airflow_reps'], 'run')} per shape, median): one task draining every partition "
            "(`run_consume`) vs one mapped task instance per partition (dynamic task mapping), trigger to "
            "success:",
            "",
        ]
        rows = []
        for p in sorted({int(p) for shape in shapes.values() for p in shape}):
            one, mapped = shapes.get("one_task", {}).get(str(p)), shapes.get("mapped", {}).get(str(p))
            rows.append(
                [
                    str(p),
                    _fmt(one and one["median_trigger_to_success"]),
                    _fmt(one and one["median_longest_task_work"]),
                    _fmt(mapped and mapped["median_trigger_to_success"]),
                    _fmt(mapped and mapped["median_longest_task_work"]),
                ]
            )
        out += _table(
            [
                "partitions",
                "one task: trigger to success (s)",
                "one task: drain (s)",
                "mapped: trigger to success (s)",
                "mapped: slowest instance's drain (s)",
            ],
            rows,
        )
        best = ratios.get("airflow_one_task_vs_mapped_wall_p4")
        mapped_wins = best is not None and best >= 1.2
        out += [
            "",
            "**Default shape: "
            + ("one task per partition (mapped)" if mapped_wins else "one task for all partitions")
            + f".** At 4 partitions the one-task run took {_fmt(best)} x the mapped run's wall time. "
            + (
                "Mapping pays for its extra task start-ups and scheduling because the partitions' drains "
                "overlap."
                if mapped_wins
                else "Parallel drains write to the same MongoDB-wire server, which is the bottleneck, so "
                "they gain little or nothing while each mapped instance adds a task start-up, a consumer, a "
                "MongoDB client and a scheduling step; one task also keeps one lease, one audit document "
                "and one commit sequence per run."
            ),
            "",
            "Both shapes are bench-only DAGs (`bench/airflow_dags.py`) around the real task code: one task "
            "runs `run_consume` over every partition; each mapped instance runs `run_consume` with "
            "`partitions=(p,)`, which has its own lease and audit document.",
        ]
        whole = airflow["whole_run"]
        b = whole["breakdown"]
        out += [
            "",
            f"## A whole DAG run ({whole['count']} records, trigger to success)",
            "",
            "The project's DAG (`build_kafka_to_mongo(schedule=None)`), "
            f"{_plural(len(whole['runs']), 'run')}, with the scheduler running (Airflow standalone took "
            f"{_fmt(airflow['standalone_startup_seconds'], 0)} s to start, not counted). Medians, from "
            "Airflow's own timestamps:",
            "",
        ]
        rows = [
            ["run queued -> running (scheduler)", _fmt(b["queued_to_running"])],
            ["running -> produce queued (scheduler)", _fmt(b["running_to_first_task_queued"])],
            ["produce queued -> started (executor, task process)", _fmt(b["produce_queued_to_start"])],
            ["produce: task start-up and tear-down", _fmt(b["produce_overhead"])],
            ["produce: the work (`produce_batch`)", _fmt(b["produce_work"])],
            ["produce end -> consume queued (scheduler)", _fmt(b["produce_end_to_consume_queued"])],
            ["consume queued -> started", _fmt(b["consume_queued_to_start"])],
            ["consume: task start-up and tear-down", _fmt(b["consume_overhead"])],
            ["consume: the work (`drain_to_watermark`)", _fmt(b["consume_work"])],
            ["last task end -> run success (scheduler)", _fmt(b["last_task_end_to_run_end"])],
            ["**trigger to success**", f"**{_fmt(b['trigger_to_success'])}**"],
        ]
        out += _table(["phase", "seconds"], rows)
        first = whole["runs"][0]["trigger_to_success"] if whole["runs"] else None
        fixed_costs = results.get("fixed_costs", {})
        saved = None
        if fixed_costs.get("produce") and fixed_costs.get("drain_null_sink_capped"):
            saved = (
                fixed_costs["produce"]["median_seconds"]
                - fixed_costs["produce_metadata_first"]["median_seconds"]
                + fixed_costs["drain_null_sink"]["median_seconds"]
                - fixed_costs["drain_null_sink_capped"]["median_seconds"]
            )
        out += [
            "",
            f"The work itself is {_fmt(100 * b['work_share'] if b['work_share'] else None, 0)} % of the "
            "run; the rest is Airflow: scheduling, and each task process starting (parsing the DAG file, "
            "importing the providers and the ETL, reading the connections) and reporting back."
            + (
                " Most of the work is two fixed waits, not records: changes 1 and 2 below would take about "
                f"{_fmt(saved)} s off it, {_fmt(100 * saved / b['trigger_to_success'], 0)} % of the run (a "
                f"run of 500 records would then take about {_fmt(b['trigger_to_success'] - saved, 1)} s)."
                if saved and b["trigger_to_success"]
                else ""
            ),
        ]
        if first and b["trigger_to_success"] and first > 1.2 * b["trigger_to_success"]:
            out += [
                "",
                f"The first run after Airflow started took {_fmt(first)} s: its first task process paid "
                "imports that later task processes found warm.",
            ]

    fixed = results.get("fixed_costs")
    if fixed or "proposed" in (produce or {}) or (rss or {}).get("proposed_10n"):
        out += [
            "",
            "## Changes the measurements justified (applied; measured again as a check)",
            "",
            "`bench/proposals.py` found and measured these from outside the project's code; all four "
            "were then applied to `plugins/kafka_mongo_etl` (commit `ace2b60`). The `proposed` rows "
            "below measure the same variants against the shipped code in the same run, so they should "
            "now come out level with `ours`; a gap would mean the shipped code lost one of them.",
            "",
        ]
    if fixed:
        out += _table(
            ["what", "records", "median s", "records/s"],
            _series_rows(
                fixed,
                [
                    "produce",
                    "produce_metadata_first",
                    "drain_null_sink",
                    "drain_null_sink_capped",
                    "drain_null_sink_at_n",
                    "drain_null_sink_capped_at_n",
                ],
                None,
            ),
        )
        out += [
            "",
            "1. **Produce: ask for the topic's metadata first** "
            f"({_fmt(ratios.get('proposed_produce_speedup_500'))} x faster at 500 records). The idempotent "
            "producer holds the first records for about half a second while it has no producer id and no "
            "partition leaders; `producer.list_topics(topic=topic, timeout=...)` before the loop in "
            "`produce_batch` removes the wait (`produce_with_metadata_first`).",
            "2. **Drain: never ask `consume` for more records than are left below the snapshot** "
            f"({_fmt(ratios.get('proposed_drain_speedup_500'))} x faster at 500 records). "
            "`consume(num_messages=batch_size, timeout=poll_timeout)` returns early only with a full "
            "batch, so the drain's last, partial batch waits the whole `poll_timeout` (1 s): every run "
            "pays it unless N is a multiple of 5,000. In `drain_to_watermark`, "
            "`num_messages=min(settings.batch_size, sum(p.end - p.committed for p in pending partitions))` "
            "(an upper bound on the records left: transaction markers take offsets, and then the wait is "
            "what it is today) ends the last batch as soon as its records arrive (`CappedConsume`).",
        ]
    if produce and "proposed" in produce:
        out += [
            "3. **Produce loop** (`produce_batch_proposed`, a copy of the loop with four changes: change "
            "1; one module-level `json.JSONEncoder(separators=(',', ':')).encode` instead of "
            "`json.dumps(..., separators=...)`, which builds a new encoder per record; "
            "`delivery.report.only.error=true` in `PRODUCER_TUNING`, so the Python callback runs only for "
            "failures (the tally counts failures, and `flush()`'s return counts what is still queued); "
            "`poll(0)` every 1,000 records instead of every record). It moved "
            f"{_fmt(ratios.get('proposed_produce_10n_vs_raw'))} x the raw loop's rate at 10 x N (ours "
            f"today: {_fmt(ratios.get('produce_10n_vs_raw'))} x).",
        ]
    if (rss or {}).get("proposed_10n"):
        out += [
            "4. **Consumer prefetch**: `queued.min.messages` 10,000 instead of 100,000 in "
            "`CONSUMER_TUNING` (two drain batches; a connection's extra can already set it). Peak RSS at "
            f"10 x N / N: {_fmt(ratios.get('proposed_rss_10n_vs_n'))} (today "
            f"{_fmt(ratios.get('rss_10n_vs_n'))}), at the same drain speed (the write, not the fetch, sets "
            "the pace).",
        ]

    profiles = results.get("profiles")
    if profiles:
        out += [
            "",
            "## Profiles",
            "",
            "pyinstrument call trees of one run each, in a warm process: "
            + ", ".join(f"[{name}]({path})" for name, path in profiles.items())
            + ". Read them with the null-sink figures above: what is not `MongoSink.write` (waiting on the "
            "Mongo-wire server) or `consume` (waiting for the broker, including the last batch's "
            "`poll_timeout`) is our Python.",
        ]
    return "\n".join(out) + "\n"


def write_markdown(results: dict[str, Any], path: Path = MARKDOWN) -> None:
    path.write_text(markdown(results))
