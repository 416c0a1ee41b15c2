"""The local stack's settings are checked before anything starts, and its airflow.cfg carries the
shared settings (no processes in these tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.cli import LocalStack, main
from devstack.process import StackError, free_port


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("abc", "error: KAFKA_PORT='abc' is not a port number\n"),
        ("0", "error: KAFKA_PORT=0 is not a port number (1-65535)\n"),
        ("70000", "error: KAFKA_PORT=70000 is not a port number (1-65535)\n"),
    ],
)
def test_a_port_setting_that_is_not_a_port_is_refused(
    raw: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    monkeypatch.setenv("KAFKA_PORT", raw)
    assert main(["status"]) == 1
    assert capsys.readouterr().err == message


def test_two_settings_sharing_a_port_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    monkeypatch.setenv("KAFKA_PORT", str(port))
    monkeypatch.setenv("KAFKA_CONTROLLER_PORT", str(free_port()))
    monkeypatch.setenv("MONGO_PORT", str(port))
    monkeypatch.setenv("POSTGRES_PORT", str(free_port()))
    monkeypatch.setenv("REDIS_PORT", str(free_port()))
    monkeypatch.setenv("AIRFLOW_PORT", str(free_port()))
    with pytest.raises(StackError, match=rf"^KAFKA_PORT and MONGO_PORT are both {port}; "):
        LocalStack.from_env().check_ports(workers=0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("two", "error: WORKERS='two' is not a number of Celery workers\n"),
        ("-1", "error: WORKERS=-1: give 0 (the LocalExecutor) to 16 Celery workers\n"),
        ("17", "error: WORKERS=17: give 0 (the LocalExecutor) to 16 Celery workers\n"),
    ],
)
def test_a_workers_setting_that_is_not_a_count_is_refused(
    raw: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    monkeypatch.setenv("WORKERS", raw)
    assert main(["up"]) == 1
    assert capsys.readouterr().err == message
    assert list(tmp_path.iterdir()) == []


def _config(home) -> dict[str, dict[str, str]]:
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(home.config_file)
    return {section: dict(parser[section]) for section in parser.sections()}


@pytest.mark.parametrize("celery", [False, True])
def test_airflow_cfg_carries_every_shared_setting(celery: bool, tmp_path: Path) -> None:
    """docker/airflow.env reaches the native stack's airflow.cfg, as compose's env_file reaches its
    containers; the native stack changes only the executor, and only without workers."""
    from devstack.airflow import AirflowHome, CelerySettings, shared_settings

    shared = shared_settings()
    assert shared["core"]["executor"] == "CeleryExecutor"
    settings = CelerySettings("redis://:pw@127.0.0.1:6379/0", "db+postgresql+psycopg://a:b@127.0.0.1/c")
    home = AirflowHome(
        tmp_path / "airflow",
        database_url="postgresql+psycopg://a:b@127.0.0.1:5432/airflow",
        celery=settings if celery else None,
    )
    home.write({})
    written = _config(home)
    for section, values in shared.items():
        for key, value in values.items():
            expected = value if celery or key != "executor" else "LocalExecutor"
            assert written[section][key] == expected, (section, key)
    assert written["database"]["sql_alchemy_conn"] == "postgresql+psycopg://a:b@127.0.0.1:5432/airflow"
    if celery:
        assert written["celery"]["broker_url"] == settings.broker_url
        assert written["celery"]["result_backend"] == settings.result_backend
    else:
        assert "broker_url" not in written.get("celery", {})


def test_a_malformed_shared_settings_line_is_refused(tmp_path: Path) -> None:
    from devstack.airflow import shared_settings

    env_file = tmp_path / "airflow.env"
    env_file.write_text("# a comment\nAIRFLOW__CORE__PARALLELISM=16\nCORE_PARALLELISM=16\n")
    with pytest.raises(StackError, match=r"airflow.env:3: expected AIRFLOW__SECTION__KEY=value"):
        shared_settings(env_file)
    env_file.write_text("AIRFLOW__CELERY__WORKER_CONCURRENCY=4\n")
    assert shared_settings(env_file) == {"celery": {"worker_concurrency": "4"}}


def test_connections_file_keeps_the_users_edits(tmp_path) -> None:
    import json

    from devstack.airflow import AirflowHome, local_connections

    home = AirflowHome(tmp_path / "airflow", api_port=18080)
    assert home.write(local_connections("127.0.0.1:9092", "127.0.0.1", 27017)) is True
    # A new port is written while the file is still devstack's own.
    assert home.write(local_connections("127.0.0.1:19092", "127.0.0.1", 27017)) is True
    assert json.loads(home.connections_file.read_text())["kafka_default"]["extra"] == {
        "bootstrap.servers": "127.0.0.1:19092"
    }
    mine = {"mongo_default": {"conn_type": "mongo", "host": "mongo.example.internal", "port": 27017}}
    home.connections_file.write_text(json.dumps(mine))
    assert home.write(local_connections("127.0.0.1:9092", "127.0.0.1", 27017)) is False
    assert json.loads(home.connections_file.read_text()) == mine
