"""``pip install .``: a wheel built from this checkout, installed into a throw-away virtualenv,
gives a DAG written elsewhere the operators and Airflow the ETL page's plugin, registered once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"

# Run in the new virtualenv: which copy of the package it imports, which plugins Airflow loads
# (and from where), and whether a DAG file outside this repository parses with the operator.
PROBE = """
import json, sys
from airflow import plugins_manager
from airflow.dag_processing.dagbag import DagBag

plugins, errors = plugins_manager._get_plugins()
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("their_own_dag")
print(json.dumps({
    "package": sys.modules["kafka_mongo_etl"].__file__,
    "plugins": [[p.name, type(p.source).__name__] for p in plugins],
    "plugin_errors": errors,
    "dag_errors": {k: str(v) for k, v in bag.import_errors.items()},
    "task": type(dag.get_task("load")).__name__ if dag else None,
}))
"""

THEIR_DAG = """
import datetime as dt
from airflow.sdk import DAG
from kafka_mongo_etl.operators import KafkaToMongoOperator

with DAG("their_own_dag", schedule="@daily", start_date=dt.datetime(2026, 1, 1), catchup=False):
    KafkaToMongoOperator(task_id="load", topic="orders", mongo_db="sales", mongo_collection="orders",
                         kafka_conn_id="kafka_prod", mongo_conn_id="mongo_atlas")
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtualenv with the locked runtime and the wheel of this checkout; returns its python."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    source.mkdir()
    # Build from a copy, so setuptools leaves no build/ or egg-info in the checkout.
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "plugins", source / "plugins", ignore=shutil.ignore_patterns("__pycache__"))

    def uv(*args: str) -> None:
        result = subprocess.run([str(UV), *args], capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, f"uv {' '.join(args)} failed:\n{result.stderr[-3000:]}"

    uv("build", "--wheel", "--out-dir", str(work / "dist"), str(source))
    (wheel,) = (work / "dist").glob("*.whl")
    uv("venv", "--quiet", "--python", sys.executable, str(work / "venv"))
    python = work / "venv" / "bin" / "python"
    uv("pip", "install", "--quiet", "--python", str(python), "-c", str(REPO / "requirements.txt"), str(wheel))
    return python


def probe(python: Path, tmp_path: Path, plugins_folder: Path) -> dict:
    home = tmp_path / "home"
    dags = tmp_path / "their_dags"
    dags.mkdir()
    (dags / "their_own_dag.py").write_text(THEIR_DAG)
    env = {
        "PATH": os.environ["PATH"],
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    result = subprocess.run(
        [str(python), "-c", PROBE, str(dags)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_wheel_holds_both_packages_and_the_plugin_entry_point(installed) -> None:
    (wheel,) = (installed.parents[2] / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert archive.read(entry_points).decode().split() == [
            "[airflow.plugins]",
            "kafka_mongo_etl_ui",
            "=",
            "kafka_mongo_etl_ui.plugin:EtlUiPlugin",
        ]
    assert {
        "kafka_mongo_etl/operators.py",
        "kafka_mongo_etl/tasks.py",
        "kafka_mongo_etl_ui/plugin.py",
    } <= names
    assert not any(name.startswith(("tests/", "dags/", "devstack/")) for name in names)


def test_an_installed_package_serves_a_dag_written_elsewhere_and_registers_the_plugin(
    installed, tmp_path
) -> None:
    empty = tmp_path / "no_plugins"
    empty.mkdir()
    found = probe(installed, tmp_path, empty)

    assert found["package"].startswith(str(installed.parents[1]))  # the installed copy, not plugins/
    assert ["kafka_mongo_etl_ui", "EntryPointSource"] in found["plugins"]
    assert found["plugin_errors"] == {} and found["dag_errors"] == {}
    assert found["task"] == "KafkaToMongoOperator"


def test_installed_and_a_plugins_folder_with_the_plugin_file_register_it_once(installed, tmp_path) -> None:
    found = probe(installed, tmp_path, REPO / "plugins")

    ours = [plugin for plugin in found["plugins"] if plugin[0] == "kafka_mongo_etl_ui"]
    assert ours == [["kafka_mongo_etl_ui", "EntryPointSource"]]
    assert found["plugin_errors"] == {}, "a second registration shows as a plugin import error"
