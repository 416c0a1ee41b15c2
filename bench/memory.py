"""Peak RSS and rate of our consume task, each size in a fresh interpreter.

``python -m bench.memory --topic T --out FILE`` runs ``run_consume`` once (fresh group and
collection unless given) and writes to FILE its VmHWM (the kernel's peak resident set), its
seconds (with the null sink also the drain's own, client start-up aside) and what landed;
``--null-sink`` drains with the write left out. ``peak_rss`` runs it in a subprocess, which
inherits the bench's Airflow home.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import REPO


def _status_kb(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def peak_rss(topic: str, mongo_uri: str, null_sink: bool = False, timeout: float = 1800) -> dict[str, Any]:
    """Run our consume of ``topic`` in a subprocess; its peak RSS, rate and what it loaded."""
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        out = Path(tmp) / "rss.json"
        command = [sys.executable, "-m", "bench.memory", "--topic", topic, "--mongo-uri", mongo_uri]
        command += ["--out", str(out), *(["--null-sink"] if null_sink else [])]
        subprocess.run(command, cwd=REPO, check=True, timeout=timeout, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--mongo-uri", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--collection", help="default: a new one, dropped afterwards")
    parser.add_argument("--group", help="default: a new consumer group")
    parser.add_argument("--null-sink", action="store_true", help="the drain without the write")
    args = parser.parse_args()
    # Importing airflow reads AIRFLOW_HOME (set by the parent) and puts plugins/ on sys.path.
    import airflow  # noqa: F401
    from pymongo import MongoClient

    from bench.load import DB, LoadTarget, ours, ours_null_sink
    from kafka_mongo_etl import tasks  # noqa: F401  (import cost is part of the baseline)

    baseline_kb = _status_kb("VmRSS")
    target = LoadTarget(bootstrap_servers="", mongo_uri=args.mongo_uri, topic=args.topic, expected=0)
    target.collection = args.collection or target.collection
    target.group = args.group or target.group
    began = time.perf_counter()
    detail = (ours_null_sink if args.null_sink else ours)(target)
    seconds = time.perf_counter() - began
    # The drain's own time when it reports one (the null sink): no hooks, no client start-up.
    drained_in = detail.get("drain_seconds", seconds)
    peak_kb = _status_kb("VmHWM")
    client: MongoClient = MongoClient(args.mongo_uri)
    try:
        in_mongo = client[DB][target.collection].count_documents({})
        if not args.collection:
            client[DB].drop_collection(target.collection)
    finally:
        client.close()
    result = {
        "records": detail["records"],
        "in_mongo": in_mongo,
        "seconds": round(seconds, 3),
        "drain_seconds": drained_in,
        "records_per_second": round(detail["records"] / drained_in, 1) if drained_in > 0 else None,
        "rss_before_consume_kb": baseline_kb,
        "peak_rss_kb": peak_kb,
    }
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
