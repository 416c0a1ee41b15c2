"""The base of every background service of the stack: its process, its ports, start, wait, stop."""

from __future__ import annotations

import json
import secrets
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from devstack.process import ManagedProcess, StackError, port_is_free, wait_until


class Port(NamedTuple):
    """A port a service listens on; ``setting`` moves it: a ``make up`` variable (upper case) or
    the service's constructor argument."""

    number: int
    role: str
    setting: str


def call_api(what: str, base_url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One call to a service's HTTP API (``what`` names it in errors): its JSON answer decoded,
    its text if it is not JSON, ``None`` if empty. An error status raises ``StackError`` with the answer."""
    request = urllib.request.Request(
        base_url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
    except urllib.error.HTTPError as err:
        answer = err.read()[:2000].decode(errors="replace")
        raise StackError(f"{what} answered {method} {path} with {err.code}: {answer}") from None
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")  # e.g. Toxiproxy's GET /version answers plain text


class Service:
    """What the services share: a detached process with its pid file and log under ``state_dir``,
    the check that its ports are free, an idempotent ``start`` that waits until it answers, ``stop``.

    A service says only what differs: its ``name`` (pid file), ``label`` and ``address`` (messages),
    ``ports()``, ``launch()`` (write its config and start its process) and ``ready()``.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    log_name: ClassVar[str | None] = None  # default: <name>.log
    start_timeout: ClassVar[float] = 60.0
    stop_timeout: ClassVar[float] = 30.0
    stop_signal: ClassVar[int] = signal.SIGTERM
    poll_interval: ClassVar[float] = 0.25
    state_dir: Path
    host: str

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(
            self.name,
            self.state_dir / f"{self.name}.pid",
            self.state_dir / "logs" / (self.log_name or f"{self.name}.log"),
        )

    @property
    def address(self) -> str:
        return self.host

    @property
    def password_file(self) -> Path:
        return self.state_dir / "password"

    def password(self) -> str:
        """The service's dev-only password: random, made on first use, kept in ``password_file`` (0600)."""
        if not self.password_file.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.password_file.write_text(secrets.token_urlsafe(24))
            self.password_file.chmod(0o600)
        return self.password_file.read_text().strip()

    def ports(self) -> list[Port]:
        raise NotImplementedError

    def launch(self) -> None:
        """Start the process (detached, via ``self.process``); ``start`` waits for it."""
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def running(self) -> bool:
        return self.process.running()

    def check_ports(self) -> None:
        """Fail, naming the setting that moves it, when a port of ours is taken."""
        for port in self.ports():
            if port_is_free(self.host, port.number):
                continue
            setting, example = port.setting, port.number + 10000
            move = f"choose another {setting}"
            if setting.isupper():
                move = f"move ours with {setting}=<port> (e.g. make up {setting}={example})"
            raise StackError(
                f"port {port.number} ({port.role}) on {self.host} is already in use by another process; "
                f"stop it or {move}"
            )

    def start(self, timeout: float | None = None) -> bool:
        """Start the service unless ours is already running; wait until it answers. True if started."""
        if self.running():
            self.wait_ready(timeout)
            return False
        self.check_ports()
        self.launch()
        self.wait_ready(timeout)
        return True

    def wait_ready(self, timeout: float | None = None) -> None:
        wait_until(
            f"{self.label} on {self.address}",
            self.ready,
            self.start_timeout if timeout is None else timeout,
            self.process,
            interval=self.poll_interval,
        )

    def stop(self) -> bool:
        return self.process.stop(timeout=self.stop_timeout, first_signal=self.stop_signal)
