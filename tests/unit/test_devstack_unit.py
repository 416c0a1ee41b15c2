"""The local stack's settings are checked before anything starts (no processes in these tests)."""

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
    monkeypatch.setenv("AIRFLOW_PORT", str(free_port()))
    with pytest.raises(StackError, match=rf"^KAFKA_PORT and MONGO_PORT are both {port}; "):
        LocalStack.from_env().check_ports()


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
