"""A trial's task process: ``python -m chaos.child POINT SEED WORK_JSON --note PATH``.

With ``POINT`` ``none`` it is the retry (or a run without faults): it does the work and exits 0,
printing the tasks' summaries as JSON on stdout. With a kill point it first installs that
point's injection (drawn from ``SEED``) and dies by SIGKILL part-way; the note file says where.
Connections come from the environment the harness passes down (``AIRFLOW_HOME``,
``AIRFLOW_CONN_*``), as in a task process.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

# Importing Airflow puts AIRFLOW_HOME's plugins folder (this repository's plugins/) on sys.path,
# as it does for a task process; kafka_mongo_etl is imported after it, inside the functions.
import airflow  # noqa: F401

from chaos.points import KILL_POINTS, NO_FAULT, install, plan_for
from trials.work import Work, run_work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.child", description=__doc__.splitlines()[0])
    parser.add_argument("point", choices=(NO_FAULT, *KILL_POINTS))
    parser.add_argument("seed", type=int)
    parser.add_argument("work", help="the Work as JSON")
    parser.add_argument("--note", type=Path, help="where the kill writes what it interrupted")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    work = Work.from_json(args.work)
    if args.point != NO_FAULT:
        if args.note is None:
            parser.error("a kill point needs --note")
        plan = plan_for(args.point, args.seed, work)
        logging.getLogger(__name__).info("Injecting %s", plan)
        install(plan, work, args.note)
    results = run_work(work)
    json.dump(results, sys.stdout, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
