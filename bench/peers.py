"""What a user would deploy instead, on the bench's broker, server and topic: the MongoDB Kafka
sink connector on Kafka Connect standalone, and Bento; ours beside them, measured the same way.

Each runs as its own process, into a fresh collection with a fresh consumer group. The harness
polls the collection's count: a run's rate is the records that landed after its first document
divided by the time from that document to the last (what it moves once running), and its
start-up (launch to first document: JVM, connector, group join) is reported apart.

- The connector (``org.mongodb.kafka:mongo-kafka-connect``, bench/peers/connect-pom.xml) runs in
  ``ConnectStandalone`` with ``connect-runtime`` of the broker's version, resolved from Maven
  Central. Keys are strings, so ``HoistField$Key`` makes them ``{"_id": key}`` for
  ``ProvidedInKeyStrategy``; the default ``ReplaceOneDefaultStrategy`` replaces by ``_id`` with
  upsert; unordered bulk writes of up to ``BATCH`` documents, ``max.poll.records`` the same, one
  task per partition, ``w=majority``.
- Bento (``github.com/warpstreamlabs/bento``, MIT) is built from the Go module proxy by
  ``bento_binary()``: a local module with bench/peers/bento_main.go, ``go get`` and
  ``CGO_ENABLED=0 go build`` into ``.cache/`` (``go install`` of it is refused by the proxy).
  ``kafka_franz`` in, ``mongodb`` out: ``replace-one`` upserts filtered by the key, batches of
  ``BATCH``, ``w: majority`` and journal.
- Ours: ``python -m bench.memory`` (``run_consume`` in a fresh interpreter).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from bench import REPO
from bench.load import BATCH, DB, LoadTarget
from bench.timing import Sample
from devstack.kafka import MAVEN_REPO, require_java_and_maven
from devstack.process import StackError, free_port
from devstack.toxiproxy import go_environment

log = logging.getLogger(__name__)

PEERS = REPO / "bench" / "peers"
CONNECT_POM = PEERS / "connect-pom.xml"
CONNECT_CLASSPATH = REPO / ".cache" / "connect.classpath"
BENTO_VERSION = "v1.20.0"
BENTO_DIR = REPO / ".cache" / "bento" / BENTO_VERSION
BENTO = BENTO_DIR / "bento"
# A run that moves nothing for this long has failed (its log says why).
STALL_SECONDS = 120.0
POLL_SECONDS = 0.05


def connect_classpath() -> str:
    """Kafka Connect and the sink connector's jars, resolved by Maven (cached in .cache/)."""
    if CONNECT_CLASSPATH.exists() and CONNECT_CLASSPATH.stat().st_mtime >= CONNECT_POM.stat().st_mtime:
        classpath = CONNECT_CLASSPATH.read_text().strip()
        if all(Path(jar).exists() for jar in classpath.split(os.pathsep)):
            return classpath
    require_java_and_maven()
    command = ["mvn", "-q", "-B", "-f", str(CONNECT_POM), f"-Dmaven.repo.local={MAVEN_REPO}"]
    command += ["dependency:build-classpath", f"-Dmdep.outputFile={CONNECT_CLASSPATH}"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    if result.returncode != 0:
        raise StackError(f"Maven could not resolve Kafka Connect and the connector:\n{result.stdout[-3000:]}")
    return CONNECT_CLASSPATH.read_text().strip()


def bento_binary() -> Path:
    """Build Bento from the Go module proxy unless it is there (a few minutes); its path."""
    if BENTO.exists():
        return BENTO
    if shutil.which("go") is None:
        raise StackError("go not found on PATH; Bento is built from source (apt-get install golang-go)")
    source = BENTO_DIR / "src"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    shutil.copy(PEERS / "bento_main.go", source / "main.go")
    steps = [
        ["go", "mod", "init", "local/bench-bento"],
        ["go", "get", f"github.com/warpstreamlabs/bento@{BENTO_VERSION}"],
        ["go", "mod", "tidy"],
        ["go", "build", "-o", str(BENTO), "."],
    ]
    env = {**go_environment(), "CGO_ENABLED": "0"}
    for step in steps:
        log.info("Building Bento: %s", " ".join(step))
        result = subprocess.run(step, cwd=source, env=env, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise StackError(f"`{' '.join(step)}` failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return BENTO


def _properties(values: dict[str, Any]) -> str:
    return "".join(f"{key}={value}\n" for key, value in values.items())


def connector_command(target: LoadTarget, workdir: Path) -> list[str]:
    """``ConnectStandalone`` with one MongoDB sink connector for ``target``."""
    worker = {
        "bootstrap.servers": target.bootstrap_servers,
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "false",
        "offset.storage.file.filename": workdir / "offsets",
        "listeners": f"http://127.0.0.1:{free_port()}",
        "consumer.max.poll.records": BATCH,
        "consumer.auto.offset.reset": "earliest",
    }
    connector = {
        "name": target.group,  # the sink's group is connect-<name>
        "connector.class": "com.mongodb.kafka.connect.MongoSinkConnector",
        "tasks.max": 3,
        "topics": target.topic,
        "connection.uri": f"{target.mongo_uri.rstrip('/')}/?w=majority",
        "database": DB,
        "collection": target.collection,
        "transforms": "keyAsId",
        "transforms.keyAsId.type": "org.apache.kafka.connect.transforms.HoistField$Key",
        "transforms.keyAsId.field": "_id",
        "document.id.strategy": "com.mongodb.kafka.connect.sink.processor.id.strategy.ProvidedInKeyStrategy",
        "writemodel.strategy": "com.mongodb.kafka.connect.sink.writemodel.strategy.ReplaceOneDefaultStrategy",
        "bulk.write.ordered": "false",
        "max.batch.size": BATCH,
    }
    (workdir / "worker.properties").write_text(_properties(worker))
    (workdir / "sink.properties").write_text(_properties(connector))
    return [
        "java",
        "-Xmx1g",
        "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
        "-cp",
        connect_classpath(),
        "org.apache.kafka.connect.cli.ConnectStandalone",
        str(workdir / "worker.properties"),
        str(workdir / "sink.properties"),
    ]


def bento_command(target: LoadTarget, workdir: Path) -> list[str]:
    """Bento: ``kafka_franz`` in, ``mongodb`` replace-one upserts by key out."""
    config = f"""
input:
  kafka_franz:
    seed_brokers: ["{target.bootstrap_servers}"]
    topics: ["{target.topic}"]
    consumer_group: "{target.group}"
    start_from_oldest: true
    checkpoint_limit: {BATCH}
    batching:
      count: {BATCH}
      period: 1s
output:
  mongodb:
    url: "{target.mongo_uri}"
    database: "{DB}"
    collection: "{target.collection}"
    operation: replace-one
    upsert: true
    filter_map: 'root._id = metadata("kafka_key")'
    document_map: "root = this"
    write_concern:
      w: majority
      j: true
    batching:
      count: {BATCH}
      period: 1s
logger:
  level: WARN
metrics:
  none: {{}}
http:
  enabled: false
"""
    (workdir / "bento.yaml").write_text(config)
    return [str(bento_binary()), "-c", str(workdir / "bento.yaml")]


def ours_command(target: LoadTarget, workdir: Path) -> list[str]:
    """Our consume task in a fresh interpreter (the bench's Airflow home and connections)."""
    command = [sys.executable, "-m", "bench.memory", "--topic", target.topic, "--mongo-uri", target.mongo_uri]
    return [*command, "--collection", target.collection, "--group", target.group, "--out", str(workdir / "o")]


@dataclass(frozen=True)
class Peer:
    name: str
    label: str
    command: Callable[[LoadTarget, Path], list[str]]


PEERS_RUN = [
    Peer("ours", "ours: run_consume in its own interpreter", ours_command),
    Peer("connector", "MongoDB Kafka sink connector 2.0.1, Connect standalone", connector_command),
    Peer("bento", f"Bento {BENTO_VERSION}, kafka_franz -> mongodb replace-one", bento_command),
]


def measure(peer: Peer, target: LoadTarget) -> Sample:
    """Launch ``peer`` on ``target``; poll the count until every record landed; stop it."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{peer.name}-"))
    client: MongoClient = MongoClient(target.mongo_uri)
    collection = client[DB][target.collection]
    command = peer.command(target, workdir)  # builds or resolves the peer first, outside the clock
    log_path = workdir / "out.log"
    try:
        with log_path.open("wb") as log_file:
            launched = time.perf_counter()
            process = subprocess.Popen(command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
            try:
                first, last, first_count, count = _watch(collection, target.expected, process, launched)
            finally:
                _stop(process)
        if count != target.expected:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{peer.name} loaded {count} of {target.expected} documents; its log:\n{tail}")
        detail = {
            "records": target.expected,
            "in_mongo": collection.count_documents({}),
            "startup_seconds": round(first - launched, 3),
            "documents_at_first_sight": first_count,
        }
        return Sample(last - first, count - first_count, detail)
    finally:
        client[DB].drop_collection(target.collection)
        client.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _watch(collection: Any, expected: int, process: subprocess.Popen, launched: float) -> tuple:
    """(time of the first document, time of the last, the count at each) by polling the count."""
    first = first_count = None
    count, progress_at = 0, launched
    while count < expected:
        now = time.perf_counter()
        seen = collection.estimated_document_count()
        if seen > count:
            count, progress_at = seen, now
            if first is None:
                first, first_count = now, seen
        if process.poll() is not None and count < expected:
            count = collection.estimated_document_count()
            if count < expected:
                raise RuntimeError(f"the process exited ({process.returncode}) after {count} documents")
        if now - progress_at > STALL_SECONDS:
            break
        time.sleep(POLL_SECONDS)
    return first or progress_at, progress_at, first_count or 0, count


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
