"""The devstack service base (``devstack/service.py``): the port check every service shares, and
the start that does nothing but wait when the service already runs. Nothing is started."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.kafka import KafkaBroker
from devstack.process import StackError, free_port
from devstack.redis import RedisServer
from devstack.toxiproxy import ToxiproxyServer


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_taken_port_names_the_make_setting_that_moves_it(tmp_path: Path, taken_port: int) -> None:
    with pytest.raises(
        StackError, match=rf"port {taken_port} \(Redis\) on 127.0.0.1 is already in use"
    ) as err:
        RedisServer(tmp_path, port=taken_port).check_ports()

    assert f"move ours with REDIS_PORT=<port> (e.g. make up REDIS_PORT={taken_port + 10000})" in str(
        err.value
    )


def test_a_taken_port_without_a_make_setting_names_the_argument(tmp_path: Path, taken_port: int) -> None:
    broker = KafkaBroker(tmp_path, port=free_port(), controller_port=free_port(), proxied_port=taken_port)
    with pytest.raises(
        StackError, match=rf"{taken_port} \(Kafka proxied listener\).*choose another proxied_port"
    ):
        broker.check_ports()
    with pytest.raises(StackError, match=rf"{taken_port} \(Toxiproxy API\).*choose another port"):
        ToxiproxyServer(tmp_path, port=taken_port).start()


def test_a_running_service_is_not_started_again(monkeypatch, tmp_path: Path, taken_port: int) -> None:
    server = RedisServer(tmp_path, port=taken_port)
    waited: list[float | None] = []
    monkeypatch.setattr(RedisServer, "running", lambda self: True)
    monkeypatch.setattr(RedisServer, "wait_ready", lambda self, timeout=None: waited.append(timeout))

    # Its port is taken (by itself): no port check, no launch, only the wait.
    assert server.start(timeout=5) is False
    assert waited == [5]
