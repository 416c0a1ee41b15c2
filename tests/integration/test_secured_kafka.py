"""The ETL through a SASL_SSL listener (SCRAM-SHA-512 over TLS) of a second broker.

The test CA, the broker certificate and the SCRAM password are generated here into a temporary
directory and never leave it. The DAG runs with only the ``kafka_default`` connection's extra
changed; its tasks run in real task processes (``dag.test(use_executor=True)`` against an
api-server of the test home), so the task logs checked for the password are the files the
supervisor writes, with Airflow's secrets masking applied as in production.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from devstack.airflow import AirflowHome, local_connections
from devstack.kafka import KafkaBroker
from devstack.mongo import MongoWireServer
from devstack.process import ManagedProcess, free_port, wait_until
from kafka_mongo_etl.ids import record_key
from kafka_mongo_etl.tasks import run_consume, run_produce

DAGS = Path(__file__).resolve().parents[2] / "dags"
SCRAM_USER = "etl"
# A wrong password must fail well under a minute (the broker rejects it within a second).
AUTH_FAILURE_BOUND = 20.0

BROKER_CERT_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
"""

MASK_PROBE_DAG = '''\
"""Logs the kafka_default connection's extra from inside a task, as a careless hook might."""

from __future__ import annotations

import datetime as dt
import logging

from airflow.sdk import dag, task

log = logging.getLogger("kafka_mongo_etl.mask_probe")


@dag(schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), catchup=False)
def secured_kafka_mask_probe():
    @task
    def log_kafka_extra() -> None:
        from kafka_mongo_etl.clients import EtlProducerHook

        extra = EtlProducerHook(kafka_config_id="kafka_default").get_connection("kafka_default").extra_dejson
        log.info("kafka_default extra: %s", extra)
        log.info("kafka_default sasl.password: %s", extra["sasl.password"])

    log_kafka_extra()


secured_kafka_mask_probe()
'''


@dataclass(frozen=True)
class SecuredBroker:
    broker: KafkaBroker
    ca_file: Path
    password: str

    def kafka_extra(self, password: str | None = None) -> dict[str, str]:
        """The kafka_default extra for the SASL_SSL listener (librdkafka settings)."""
        return {
            "bootstrap.servers": str(self.broker.sasl_ssl_bootstrap_servers),
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": SCRAM_USER,
            "sasl.password": self.password if password is None else password,
            "ssl.ca.location": str(self.ca_file),
        }


def openssl(*args: str | Path) -> None:
    result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"openssl {args[0]} failed:\n{result.stderr}"


def make_test_pki(directory: Path, keystore_password: str) -> tuple[Path, Path]:
    """A throw-away CA and a broker certificate for 127.0.0.1 and localhost.

    Returns the CA certificate (PEM, for clients) and the broker's PKCS12 keystore.
    """
    ca_key, ca_pem = directory / "ca.key", directory / "ca.pem"
    key, csr, pem = directory / "broker.key", directory / "broker.csr", directory / "broker.pem"
    extensions, keystore = directory / "broker.ext", directory / "broker.p12"
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", ca_key, "-out", ca_pem, "-subj", "/CN=kafka-to-mongo test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    extensions.write_text(BROKER_CERT_EXTENSIONS)
    openssl(
        "x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial",
        "-days", "2", "-extfile", extensions, "-out", pem,
    )  # fmt: skip
    openssl(
        "pkcs12", "-export", "-in", pem, "-inkey", key, "-certfile", ca_pem, "-name", "broker",
        "-out", keystore, "-passout", f"pass:{keystore_password}",
    )  # fmt: skip
    return ca_pem, keystore


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    """A second broker, on its own ports and state, with a SASL_SSL listener and one SCRAM user."""
    pki = tmp_path_factory.mktemp("pki")
    keystore_password = secrets.token_hex(16)
    ca_file, keystore = make_test_pki(pki, keystore_password)
    password = secrets.token_hex(16)
    broker = KafkaBroker(
        tmp_path_factory.mktemp("kafka-sasl"),
        port=free_port(),
        controller_port=free_port(),
        sasl_ssl_port=free_port(),
        keystore=keystore,
        keystore_password=keystore_password,
        scram_users={SCRAM_USER: password},
    )
    broker.start()
    try:
        yield SecuredBroker(broker, ca_file, password)
    finally:
        broker.stop()


@pytest.fixture
def use_secured_kafka(
    monkeypatch: pytest.MonkeyPatch, secured_broker: SecuredBroker, mongo_server: MongoWireServer
) -> Callable[..., None]:
    """Point kafka_default at the SASL_SSL listener (optionally with another password)."""

    def use(password: str | None = None) -> None:
        conns = local_connections(
            str(secured_broker.broker.sasl_ssl_bootstrap_servers), mongo_server.host, mongo_server.port
        )
        # The local stack's connections, with only kafka_default's extra changed.
        conns["kafka_default"]["extra"] = secured_broker.kafka_extra(password)
        for conn_id, conn in conns.items():
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))

    return use


@pytest.fixture(scope="module")
def execution_api(airflow_db: AirflowHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowHome]:
    """The test home's api-server, so that ``dag.test(use_executor=True)`` can run real task processes."""
    state = tmp_path_factory.mktemp("api-server")
    server = ManagedProcess("airflow api-server", state / "api-server.pid", state / "api-server.log")
    health = f"http://127.0.0.1:{airflow_db.api_port}/api/v2/monitor/health"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(health, timeout=2):
                return True
        except (urllib.error.URLError, OSError):
            return False

    server.start([str(Path(sys.executable).parent / "airflow"), "api-server"], env=airflow_db.env())
    try:
        wait_until("the test home's api-server", answers, 120, server)
        yield airflow_db
    finally:
        server.stop()


def task_logs(home: AirflowHome, dag_id: str, run_id: str) -> dict[str, str]:
    """task_id -> the text of its task log files (all attempts) for one run."""
    run_dir = home.path / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    return {
        task_dir.name.removeprefix("task_id="): "".join(f.read_text() for f in sorted(task_dir.glob("*.log")))
        for task_dir in sorted(run_dir.glob("task_id=*"))
    }


def log_events(text: str) -> list[str]:
    return [json.loads(line).get("event", "") for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("missing", ["sasl_ssl", "ca"], ids=["plaintext-client", "without-the-test-ca"])
def test_the_listener_refuses_clients_without_sasl_ssl_or_the_ca(secured_broker, missing) -> None:
    extra = secured_broker.kafka_extra()
    if missing == "sasl_ssl":
        extra = {"bootstrap.servers": extra["bootstrap.servers"], "ssl.ca.location": extra["ssl.ca.location"]}
    else:
        del extra["ssl.ca.location"]
    admin = AdminClient({**extra, "log_level": 0})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=3)
    # ... while the same settings with credentials and the CA get metadata.
    AdminClient(secured_broker.kafka_extra()).list_topics(timeout=10)


@pytest.mark.airflow
def test_dag_runs_through_sasl_ssl_with_only_the_kafka_extra_changed(
    execution_api, use_secured_kafka, secured_broker, topic, mongo_db, mongo_client
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    use_secured_kafka()
    dag = DagBag(dag_folder=str(DAGS)).dags["kafka_to_mongo"]
    run = dag.test(run_conf={"topic": topic, "count": 200, "mongo_db": mongo_db}, use_executor=True)

    logs = task_logs(execution_api, "kafka_to_mongo", run.run_id)
    assert run.state == "success", logs
    batch = f"kafka_to_mongo/{run.run_id}"
    collection = mongo_client[mongo_db]["testnum"]
    assert collection.count_documents({}) == 200
    assert {d["_id"] for d in collection.find({}, {"_id": 1})} == {record_key(batch, n) for n in range(200)}
    assert set(logs) == {"produce", "drains", "consume"}
    assert any(e.startswith("Produced 200 records") for e in log_events(logs["produce"]))
    for text in logs.values():
        assert secured_broker.password not in text


@pytest.mark.airflow
def test_the_kafka_sasl_password_is_masked_in_task_logs(
    execution_api, use_secured_kafka, secured_broker, tmp_path, monkeypatch
) -> None:
    """A task that logs the connection's extra writes '***' where the password would be."""
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "secured_kafka_mask_probe.py").write_text(MASK_PROBE_DAG)
    # dag.test runs only DAGs of a configured bundle: the probe's folder is one next to dags/
    # (the task process then loads the probe from its absolute path).
    local_bundle = "airflow.dag_processing.bundles.local.LocalDagBundle"
    bundles = [
        {"name": "dags-folder", "classpath": local_bundle, "kwargs": {}},
        {"name": "mask-probe", "classpath": local_bundle, "kwargs": {"path": str(tmp_path)}},
    ]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    use_secured_kafka()
    dag = DagBag(dag_folder=str(tmp_path)).dags["secured_kafka_mask_probe"]
    run = dag.test(use_executor=True)

    logs = task_logs(execution_api, "secured_kafka_mask_probe", run.run_id)
    assert run.state == "success", logs
    text = logs["log_kafka_extra"]
    assert secured_broker.password not in text
    events = log_events(text)
    extra_lines = [e for e in events if e.startswith("kafka_default extra: ")]
    assert len(extra_lines) == 1
    # Only the secret is hidden: the rest of the extra is logged as it is.
    assert "'sasl.password': '***'" in extra_lines[0]
    assert f"'sasl.username': '{SCRAM_USER}'" in extra_lines[0]
    assert secured_broker.broker.sasl_ssl_bootstrap_servers in extra_lines[0]
    assert "kafka_default sasl.password: ***" in events


@dataclass
class Failure:
    error: BaseException
    seconds: float


def failure_of(call: Callable[[], object]) -> Failure:
    began = time.monotonic()
    # Any exception: which one it is, and what it says, is what the callers assert on.
    with pytest.raises(Exception) as caught:
        call()
    error = caught.value
    # The tracebacks hold the frames that hold the Kafka clients: dropping them lets the clients
    # go now, instead of retrying the stopped broker until the interpreter exits.
    for link in (error, error.__cause__, error.__context__):
        if link is not None:
            link.__traceback__ = None
    return Failure(error, time.monotonic() - began)


def assert_fails_usefully(failure: Failure, wrong_password: str) -> None:
    """Names the connection, points at its SASL settings, shows no password, in bounded time."""
    message = str(failure.error)
    described = f"{type(failure.error).__name__}: {message}"
    assert wrong_password not in message and wrong_password not in repr(failure.error)
    assert "kafka_default" in message, described
    assert "sasl" in message.lower(), described
    assert failure.seconds < AUTH_FAILURE_BOUND, f"took {failure.seconds:.1f}s: {described}"


def test_a_wrong_sasl_password_fails_produce_fast_naming_the_connection(use_secured_kafka, topic) -> None:
    wrong = secrets.token_hex(16)
    use_secured_kafka(password=wrong)
    failure = failure_of(
        lambda: run_produce(
            kafka_conn_id="kafka_default", topic=topic, partitions=1, batch="test/run-1", start=0, count=10
        )
    )
    assert_fails_usefully(failure, wrong)


def test_a_wrong_sasl_password_fails_consume_fast_naming_the_connection(use_secured_kafka, make_job) -> None:
    wrong = secrets.token_hex(16)
    use_secured_kafka(password=wrong)
    job = make_job()
    assert_fails_usefully(failure_of(lambda: run_consume(job)), wrong)
