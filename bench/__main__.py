"""``python -m bench``: run the benchmarks on a broker and a Mongo-wire server of their own.

Writes bench/results.json, bench/results.png, BENCHMARKS.md and bench/profiles/*.txt;
``--report-only`` rebuilds the ratios, the chart and BENCHMARKS.md from an existing results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from bench import SECTIONS, report
from bench.services import bench_services

log = logging.getLogger("bench")

# Loggers that would print a line per batch or per connection of every contender.
QUIET = ("kafka", "kafka_mongo_etl", "airflow.task", "airflow.models.connection", "pymongo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="records per contender (default 20000)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every contender (default 3)")
    parser.add_argument("--tutorial-cap", type=float, default=60.0, help="a tutorial run's most seconds (60)")
    parser.add_argument("--airflow", type=int, choices=(0, 1), default=1, help="1: include the Airflow runs")
    parser.add_argument("--whole-runs", type=int, default=3, help="whole 500-record DAG runs (default 3)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"a subset of {','.join(SECTIONS)}")
    parser.add_argument(
        "--contenders", help="only these load contenders, by name (e.g. null_sink,raw_decode); default all"
    )
    parser.add_argument("--results", type=Path, default=report.RESULTS)
    parser.add_argument("--report-only", action="store_true", help="redraw from --results")
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    if sections - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(sections - set(SECTIONS)))}")
    args.sections = frozenset(sections - (set() if args.airflow else {"airflow"}))
    args.contenders = frozenset(c.strip() for c in args.contenders.split(",")) if args.contenders else None
    if args.n < 1 or args.reps < 1 or args.tutorial_cap <= 0:
        parser.error("--n and --reps must be at least 1, --tutorial-cap above 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.report_only:
        results = json.loads(args.results.read_text())
        results["ratios"] = report.ratios(results)  # derived figures only; measurements untouched
    else:
        with bench_services() as services:
            # bench_services pointed AIRFLOW_HOME at the bench's own home; importing airflow now reads
            # it and puts plugins/ on sys.path (as in every Airflow process), so the ETL and the
            # harness that uses it can only be imported from here on.
            import airflow  # noqa: F401

            from bench import harness

            for name in QUIET:
                logging.getLogger(name).setLevel(logging.WARNING)
            options = harness.Options(
                n=args.n,
                reps=args.reps,
                tutorial_cap=args.tutorial_cap,
                whole_runs=args.whole_runs,
                sections=args.sections,
                contenders=args.contenders,
            )
            results = harness.run(services, options)
    report.write_json(results, args.results)
    report.write_chart(results)
    report.write_markdown(results)
    log.info("Wrote %s, %s and %s", args.results, report.CHART, report.MARKDOWN)
    log.info("Ratios: %s", json.dumps(results["ratios"]))


if __name__ == "__main__":
    main()
