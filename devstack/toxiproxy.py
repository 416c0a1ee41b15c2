"""Toxiproxy, the TCP proxy that injects network faults, for the fault tests and ``make faults``.

The server is the Go module ``github.com/Shopify/toxiproxy/v2`` (``cmd/server``), built from
source by ``go install`` into the git-ignored ``.cache/`` (``make toxiproxy``; the test fixtures
build it too when it is missing) — never a downloaded binary. It runs on a free port and is driven
through its small HTTP API (https://github.com/Shopify/toxiproxy#http-api) with ``urllib``: a
proxy per service, toxics added and removed while a task runs.

``python -m devstack.toxiproxy install`` builds it and prints where it is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.process import StackError
from devstack.service import Port, Service, call_api

REPO = Path(__file__).resolve().parent.parent
TOXIPROXY_PACKAGE = "github.com/Shopify/toxiproxy/v2/cmd/server"
TOXIPROXY_VERSION = "v2.5.0"
GO_ROOT = REPO / ".cache" / "go"
BIN_DIR = REPO / ".cache" / "toxiproxy" / TOXIPROXY_VERSION
SERVER = BIN_DIR / "server"  # go install names the binary after its package directory


def go_environment() -> dict[str, str]:
    """``go`` with every path of its own under ``.cache/``: nothing lands in ``~/go``."""
    return {
        **os.environ,
        "GOBIN": str(BIN_DIR),
        "GOPATH": str(GO_ROOT),
        "GOMODCACHE": str(GO_ROOT / "pkg" / "mod"),
        "GOCACHE": str(GO_ROOT / "build"),
        # Module files read-only by default would make `rm -rf .cache` fail.
        "GOFLAGS": "-modcacherw",
    }


def install() -> Path:
    """Build the Toxiproxy server with ``go install`` unless it is there; return its path."""
    if SERVER.exists():
        return SERVER
    if shutil.which("go") is None:
        raise StackError(
            "go not found on PATH. The network-fault tests build Toxiproxy from source with "
            "`go install` (Debian/Ubuntu: apt-get install golang-go, Go 1.18 or later)."
        )
    command = ["go", "install", f"{TOXIPROXY_PACKAGE}@{TOXIPROXY_VERSION}"]
    print(" ".join(command), f"(GOBIN={BIN_DIR})", file=sys.stderr)
    result = subprocess.run(
        command, env=go_environment(), capture_output=True, text=True, check=False, timeout=900
    )
    if result.returncode != 0 or not SERVER.exists():
        raise StackError(f"`{' '.join(command)}` failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return SERVER


@dataclass
class ToxiproxyServer(Service):
    """A Toxiproxy server whose API listens on ``host:port``; its log is under ``state_dir``."""

    state_dir: Path
    port: int
    host: str = "127.0.0.1"

    name = "toxiproxy"
    label = "Toxiproxy"
    start_timeout = 30.0
    stop_timeout = 10.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return self.url

    def ports(self) -> list[Port]:
        return [Port(self.port, "Toxiproxy API", "port")]

    def launch(self) -> None:
        server = install()
        # A fixed seed: the toxics' random parts (toxicity, jitter) repeat from run to run.
        self.process.start([str(server), "-host", self.host, "-port", str(self.port), "-seed", "1"])

    def ready(self) -> bool:
        try:
            self.api("GET", "/version")
        except (OSError, StackError):
            return False
        return True

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return call_api("Toxiproxy", self.url, method, path, body)

    def create_proxy(self, name: str, listen_port: int, upstream: str) -> Proxy:
        """A proxy listening on ``host:listen_port`` that forwards to ``upstream`` (host:port)."""
        self.api(
            "POST", "/proxies", {"name": name, "listen": f"{self.host}:{listen_port}", "upstream": upstream}
        )
        return Proxy(self, name, f"{self.host}:{listen_port}", upstream)

    def reset(self) -> None:
        """Every proxy enabled again, every toxic removed."""
        self.api("POST", "/reset")


@dataclass
class Proxy:
    """One proxy of a Toxiproxy server: clients connect to ``listen``, it forwards to ``upstream``."""

    server: ToxiproxyServer
    name: str
    listen: str
    upstream: str

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    def add_toxic(
        self, kind: str, stream: str = "downstream", toxicity: float = 1.0, **attributes: Any
    ) -> str:
        """Add a toxic (``latency``, ``timeout``, ``reset_peer``, ``bandwidth``, ...); its name.

        ``stream`` is ``downstream`` (server to client) or ``upstream`` (client to server). A
        toxic acts on the connections open now and on new ones until it is removed.
        """
        name = f"{kind}_{stream}"
        self.server.api(
            "POST",
            f"/proxies/{self.name}/toxics",
            {"name": name, "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes},
        )
        return name

    def remove_toxic(self, name: str) -> None:
        self.server.api("DELETE", f"/proxies/{self.name}/toxics/{name}")

    def toxics(self) -> list[dict[str, Any]]:
        return self.server.api("GET", f"/proxies/{self.name}/toxics") or []

    def set_enabled(self, enabled: bool) -> None:
        """Disabled, the proxy closes every connection and refuses new ones: the service is cut."""
        self.server.api("POST", f"/proxies/{self.name}", {"enabled": enabled})

    @contextlib.contextmanager
    def toxic(self, kind: str, stream: str = "downstream", **attributes: Any) -> Iterator[str]:
        name = self.add_toxic(kind, stream, **attributes)
        try:
            yield name
        finally:
            self.remove_toxic(name)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["install"]:
        print("usage: python -m devstack.toxiproxy install", file=sys.stderr)
        return 2
    try:
        print(install())
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
