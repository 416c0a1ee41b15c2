"""Peak RSS of our consume task, each size in a fresh interpreter.

``python -m bench.memory --topic T --out FILE`` runs ``run_consume`` once (fresh group and
collection) in this process and writes its VmHWM (the kernel's peak resident set) to FILE.
The parent side, ``peak_rss``, starts that subprocess with the bench's Airflow home and reads
the file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _status_kb(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_rss(
    topic: str, expected: int, mongo_uri: str, kafka_conn_id: str = "kafka_default", timeout: float = 1800
) -> dict[str, Any]:
    """Run our consume of ``topic`` in a subprocess; its peak RSS and what it loaded."""
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        out = Path(tmp) / "rss.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.memory",
                "--topic",
                topic,
                "--kafka-conn-id",
                kafka_conn_id,
                "--out",
                str(out),
            ],
            cwd=REPO,
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
        )
        result = json.loads(out.read_text())
    from pymongo import MongoClient

    from bench.load import DB

    client: MongoClient = MongoClient(mongo_uri)
    try:
        result["in_mongo"] = client[DB][result["collection"]].count_documents({})
        client[DB].drop_collection(result["collection"])
    finally:
        client.close()
    result["expected"] = expected
    result["kafka_conn_id"] = kafka_conn_id
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--kafka-conn-id", default="kafka_default")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    # Importing airflow reads AIRFLOW_HOME (set by the parent) and puts plugins/ on sys.path.
    import airflow  # noqa: F401

    from bench.load import LoadTarget, ours
    from kafka_mongo_etl import tasks  # noqa: F401  (import cost is part of the baseline)

    baseline_kb = _status_kb("VmRSS")
    target = LoadTarget(bootstrap_servers="", mongo_uri="", topic=args.topic, expected=0)
    detail = ours(target, kafka_conn_id=args.kafka_conn_id)
    args.out.write_text(
        json.dumps(
            {
                "collection": target.collection,
                "records": detail["records"],
                "rss_before_consume_kb": baseline_kb,
                "peak_rss_kb": _status_kb("VmHWM"),
                "rss_at_end_kb": _status_kb("VmRSS"),
            }
        )
    )


if __name__ == "__main__":
    main()
