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
