"""A Confluent-compatible Schema Registry: Apicurio Registry 2.4.2 built from Maven Central.

devstack/registry/ holds a small Quarkus application (a pom and one stand-in bean, see the pom's
comment for why) that Maven builds into ``.cache/registry/target``: a runner jar plus ``lib/``.
The build is cached and redone when the pom or a file under ``src/`` changes (their hash is kept
beside the build). ``SchemaRegistry`` starts it on a port of ours, storage in memory (everything
is lost when it stops), and serves Confluent's REST API at ``ccompat_url``
(``/apis/ccompat/v7``), which confluent-kafka's ``SchemaRegistryClient`` and serializers use.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devstack.kafka import MAVEN_REPO, REPO, require_java_and_maven
from devstack.process import StackError
from devstack.service import Port, Service

SOURCE = REPO / "devstack" / "registry"
BUILD_DIR = REPO / ".cache" / "registry" / "target"
BUILD_HASH = REPO / ".cache" / "registry" / "source.sha256"
RUNNER_JAR = BUILD_DIR / "registry-run-1-runner.jar"
CCOMPAT_PATH = "/apis/ccompat/v7"


def source_hash() -> str:
    """The hash of everything the build reads: the pom and every file under ``src/``."""
    digest = hashlib.sha256()
    files = [SOURCE / "pom.xml", *sorted(p for p in (SOURCE / "src").rglob("*") if p.is_file())]
    for path in files:
        digest.update(str(path.relative_to(SOURCE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_registry() -> Path:
    """The registry's runner jar, built by Maven unless the cached build matches the sources.

    The first build downloads about 210 MB into .cache/m2 (about a minute); later ones take
    about 15 s, and an unchanged source none.
    """
    wanted = source_hash()
    if RUNNER_JAR.exists() and (BUILD_DIR / "lib").is_dir() and _read(BUILD_HASH) == wanted:
        return RUNNER_JAR
    require_java_and_maven()
    BUILD_HASH.unlink(missing_ok=True)
    shutil.rmtree(BUILD_DIR, ignore_errors=True)  # a stale lib/ would keep jars the pom dropped
    result = subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(SOURCE / "pom.xml"),
            f"-Dmaven.repo.local={MAVEN_REPO}",
            f"-Dregistry.build.dir={BUILD_DIR}",
            "-DskipTests",
            "package",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not RUNNER_JAR.exists():
        raise StackError(
            "Maven could not build the Schema Registry (Apicurio) from devstack/registry/pom.xml; its "
            f"output ends:\n{(result.stdout + result.stderr)[-3000:]}"
        )
    BUILD_HASH.write_text(wanted + "\n")
    return RUNNER_JAR


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


@dataclass
class SchemaRegistry(Service):
    """One Apicurio Registry process on ``host:port``, log and pid file under ``state_dir``.

    ``compatibility`` is the global rule new schema versions must pass (Apicurio's own default
    is none; Confluent's is BACKWARD, which is what this sets unless told otherwise).
    """

    state_dir: Path
    port: int = 8081
    host: str = "127.0.0.1"
    heap: str = "256m"
    compatibility: str = "BACKWARD"

    name = "registry"
    label = "Schema Registry"
    start_timeout = 120.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ccompat_url(self) -> str:
        """The Confluent-compatible API, the URL a ``SchemaRegistryClient`` takes."""
        return self.url + CCOMPAT_PATH

    @property
    def address(self) -> str:
        return self.ccompat_url

    def ports(self) -> list[Port]:
        return [Port(self.port, "Schema Registry HTTP", "port")]

    def launch(self) -> None:
        jar = build_registry()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "HTTP_PORT": str(self.port),
            "QUARKUS_HTTP_HOST": self.host,
            "REGISTRY_RULES_GLOBAL_COMPATIBILITY": self.compatibility,
        }
        self.process.start(
            ["java", f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-jar", str(jar)],
            env=env,
            cwd=self.state_dir,
        )

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.ccompat_url + "/subjects", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False


def main(argv: list[str] | None = None) -> int:
    """``python -m devstack.registry build|start|stop|status``: the registry beside ``make up``'s
    stack, state and log under ``$STATE_DIR/registry`` (default .state/registry), port
    ``REGISTRY_PORT`` (default 8081)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ("build", "start", "stop", "status"):
        print("usage: python -m devstack.registry build|start|stop|status", file=sys.stderr)
        return 2
    state = Path(os.environ.get("STATE_DIR", REPO / ".state")).resolve() / "registry"
    registry = SchemaRegistry(state, port=int(os.environ.get("REGISTRY_PORT", "8081")))
    try:
        if args[0] == "build":
            print(build_registry())
        elif args[0] == "start":
            started = registry.start()
            print(f"Schema Registry {'started' if started else 'already running'} at {registry.ccompat_url}")
            print(f"log: {registry.process.log_file}")
        elif args[0] == "stop":
            print("stopped" if registry.stop() else "not running")
        else:
            print(f"running at {registry.ccompat_url}" if registry.running() else "not running")
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
