"""The real Apache Kafka broker, resolved from Maven Central and run in KRaft combined mode."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from devstack.process import StackError
from devstack.service import Port, Service

REPO = Path(__file__).resolve().parent.parent
POM = REPO / "devstack" / "kafka" / "pom.xml"
LOG4J2 = REPO / "devstack" / "kafka" / "log4j2.properties"
MAVEN_REPO = REPO / ".cache" / "m2"
CLASSPATH_FILE = REPO / ".cache" / "kafka.classpath"


def require_java_and_maven() -> None:
    """Fail before doing anything else when the JVM tool chain is missing."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        raise StackError(
            f"{' and '.join(missing)} not found on PATH. The Kafka broker needs Java 17+ and Maven "
            "(Debian/Ubuntu: apt-get install openjdk-17-jre-headless maven)."
        )


def broker_classpath() -> str:
    """The broker's classpath, resolved by Maven from devstack/kafka/pom.xml (cached)."""
    return maven_classpath(POM, CLASSPATH_FILE, "the Kafka broker")


def maven_classpath(pom: Path, classpath_file: Path, what: str) -> str:
    """The classpath of ``pom``'s dependencies, resolved by Maven into .cache/m2 and cached in
    ``classpath_file`` until the pom changes or a jar disappears; ``what`` names it in errors."""
    if classpath_file.exists() and classpath_file.stat().st_mtime >= pom.stat().st_mtime:
        classpath = classpath_file.read_text().strip()
        if all(Path(jar).exists() for jar in classpath.split(os.pathsep)):
            return classpath
    require_java_and_maven()
    classpath_file.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(pom),
            f"-Dmaven.repo.local={MAVEN_REPO}",
            "dependency:build-classpath",
            f"-Dmdep.outputFile={classpath_file}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"Maven could not resolve the jars of {what}:\n{result.stdout[-3000:]}")
    return classpath_file.read_text().strip()


@dataclass
class KafkaBroker(Service):
    """One KRaft node (broker + controller) with its data and logs under ``state_dir``.

    ``extra_properties`` are appended to server.properties (the SASL/TLS tests use it).

    With ``proxied_port`` set, the broker also listens there (PLAINTEXT) and advertises
    ``proxied_address`` for that listener: the address of a TCP proxy (Toxiproxy) that forwards to
    ``proxied_port``. Clients that bootstrap through the proxy are then told to connect to the
    proxy again, never round it, so every byte they exchange passes the proxy's faults.

    With ``sasl_ssl_port`` set, the broker also listens there for SASL_SSL clients (SCRAM-SHA-512
    over TLS, with the PKCS12 ``keystore``); PLAINTEXT stays for the controller and inter-broker
    traffic. ``scram_users`` (name -> password) are written when the storage is formatted, so
    they only take effect on a fresh ``state_dir``.
    """

    state_dir: Path
    port: int = 9092
    controller_port: int = 9093
    host: str = "127.0.0.1"
    heap: str = "512m"
    extra_properties: dict[str, str] = field(default_factory=dict)
    port_setting: str = "KAFKA_PORT"
    controller_port_setting: str = "KAFKA_CONTROLLER_PORT"
    sasl_ssl_port: int | None = None
    keystore: Path | None = None
    keystore_password: str = ""
    scram_users: dict[str, str] = field(default_factory=dict)
    proxied_port: int | None = None
    proxied_address: str | None = None

    name = "kafka"
    label = "Kafka"
    log_name = "kafka.out"
    start_timeout = 120.0

    @property
    def address(self) -> str:
        return self.bootstrap_servers

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def sasl_ssl_bootstrap_servers(self) -> str | None:
        return f"{self.host}:{self.sasl_ssl_port}" if self.sasl_ssl_port is not None else None

    @property
    def server_log(self) -> Path:
        return self.state_dir / "logs" / "server.log"

    def server_properties(self) -> str:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.state_dir / "data"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # One node: there is nobody to wait for before the first group rebalance.
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
        }
        if self.sasl_ssl_port is not None:
            props.update(self._sasl_ssl_properties(props))
        if self.proxied_port is not None:
            props.update(self._proxied_properties(props))
        props.update(self.extra_properties)
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def _sasl_ssl_properties(self, props: dict[str, str]) -> dict[str, str]:
        if self.keystore is None:
            raise StackError("a SASL_SSL listener needs a PKCS12 keystore with the broker's certificate")
        listener = f"SASL_SSL://{self.host}:{self.sasl_ssl_port}"
        return {
            "listeners": f"{props['listeners']},{listener}",
            "advertised.listeners": f"{props['advertised.listeners']},{listener}",
            "listener.security.protocol.map": f"{props['listener.security.protocol.map']},SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.keystore),
            "ssl.keystore.password": self.keystore_password,
        }

    def _proxied_properties(self, props: dict[str, str]) -> dict[str, str]:
        if not self.proxied_address:
            raise StackError("a proxied listener needs proxied_address, the proxy's host:port")
        return {
            "listeners": f"{props['listeners']},PROXIED://{self.host}:{self.proxied_port}",
            "advertised.listeners": f"{props['advertised.listeners']},PROXIED://{self.proxied_address}",
            "listener.security.protocol.map": f"{props['listener.security.protocol.map']},PROXIED:PLAINTEXT",
        }

    def _scram_arguments(self) -> list[str]:
        arguments = []
        for name, password in self.scram_users.items():
            # StorageTool parses name=value pairs separated by commas inside brackets.
            if any(c in f"{name}{password}" for c in '",[]='):
                raise StackError(f'SCRAM user {name!r}: names and passwords must not contain , [ ] = or "')
            arguments += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        return arguments

    def _java_argv(self, classpath: str, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J2}",
            f"-Dkafka.logs.dir={self.state_dir / 'logs'}",
            "-cp",
            classpath,
            main,
            *args,
        ]

    def ports(self) -> list[Port]:
        ports = [
            Port(self.port, "Kafka broker", self.port_setting),
            Port(self.controller_port, "Kafka controller", self.controller_port_setting),
        ]
        if self.proxied_port is not None:
            ports.append(Port(self.proxied_port, "Kafka proxied listener", "proxied_port"))
        if self.sasl_ssl_port is not None:
            ports.append(Port(self.sasl_ssl_port, "Kafka SASL_SSL listener", "sasl_ssl_port"))
        return ports

    def launch(self) -> None:
        require_java_and_maven()
        classpath = broker_classpath()
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        properties = self.state_dir / "server.properties"
        properties.write_text(self.server_properties())
        if not (self.state_dir / "data" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            fmt = subprocess.run(
                self._java_argv(
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    # One argument: a random id may start with "-", which argparse takes for an option.
                    f"--cluster-id={cluster_id}",
                    "-c",
                    str(properties),
                    *self._scram_arguments(),
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise StackError(f"formatting Kafka storage failed:\n{fmt.stdout}{fmt.stderr}")
        self.process.start(self._java_argv(classpath, "kafka.Kafka", str(properties)))

    def ready(self) -> bool:
        """The broker answers an AdminClient metadata request."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        try:
            admin.list_topics(timeout=2)
        except KafkaException:
            return False
        return True
