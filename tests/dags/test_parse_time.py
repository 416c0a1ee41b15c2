"""The parse-time rule: a DAG file imports neither pymongo nor confluent_kafka.

The DAG processor parses every file in dags/ every few seconds; the clients (and the ~175
modules they pull in) belong in the tasks that use them. Each file is imported in a fresh
interpreter, so nothing another test imported can hide an import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("pymongo", "confluent_kafka")
LOADED = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("parsed_dag", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[2:]))))
"""


def _heavy_modules_loaded_by(path: Path) -> list[str]:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT / "dags")])}
    done = subprocess.run(
        [sys.executable, "-c", LOADED, str(path), *HEAVY],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert done.returncode == 0, f"{path.name} does not import: {done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path", sorted((ROOT / "dags").glob("*.py")), ids=lambda path: path.name)
def test_a_dag_file_parses_without_the_kafka_and_mongodb_clients(path: Path) -> None:
    assert _heavy_modules_loaded_by(path) == [], (
        f"parsing {path.name} imported the clients; import them inside the task that needs them"
    )


def test_the_check_sees_a_heavy_import(tmp_path: Path) -> None:
    """The test above could not fail if the probe never saw an import."""
    dag_file = tmp_path / "heavy_dag.py"
    dag_file.write_text("import kafka_mongo_etl.tasks\n")
    assert _heavy_modules_loaded_by(dag_file) == ["confluent_kafka", "pymongo"]
