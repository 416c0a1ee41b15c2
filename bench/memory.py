"""Peak RSS of our consume task, each size in a fresh interpreter.

``python -m bench.memory --topic T --out FILE`` runs ``run_consume`` once (fresh group and
collection) and writes its VmHWM (the kernel's peak resident set) and what landed to FILE;
``peak_rss`` runs it in a subprocess, which inherits the bench's Airflow home.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import REPO


def _status_kb(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def peak_rss(topic: str, mongo_uri: str, timeout: float = 1800) -> dict[str, Any]:
    """Run our consume of ``topic`` in a subprocess; its peak RSS and what it loaded."""
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        out = Path(tmp) / "rss.json"
        command = [sys.executable, "-m", "bench.memory", "--topic", topic, "--mongo-uri", mongo_uri]
        subprocess.run(
            [*command, "--out", str(out)], cwd=REPO, check=True, timeout=timeout, stdout=subprocess.DEVNULL
        )
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--mongo-uri", required=True)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    # Importing airflow reads AIRFLOW_HOME (set by the parent) and puts plugins/ on sys.path.
    import airflow  # noqa: F401
    from pymongo import MongoClient

    from bench.load import DB, LoadTarget, ours
    from kafka_mongo_etl import tasks  # noqa: F401  (import cost is part of the baseline)

    baseline_kb = _status_kb("VmRSS")
    target = LoadTarget(bootstrap_servers="", mongo_uri=args.mongo_uri, topic=args.topic, expected=0)
    records = ours(target)["records"]
    peak_kb = _status_kb("VmHWM")
    client: MongoClient = MongoClient(args.mongo_uri)
    try:
        in_mongo = client[DB][target.collection].count_documents({})
        client[DB].drop_collection(target.collection)
    finally:
        client.close()
    result = {
        "records": records,
        "in_mongo": in_mongo,
        "rss_before_consume_kb": baseline_kb,
        "peak_rss_kb": peak_kb,
    }
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
