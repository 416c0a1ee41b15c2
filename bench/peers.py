"""What a user would deploy instead, on the bench's broker, server and topic: the MongoDB Kafka
sink connector on Kafka Connect standalone, and Bento; ours beside them, measured the same way.

Each runs as its own process, into a fresh collection with a fresh consumer group. A run's rate
is the records that landed after its first document divided by the time from that document to
the last (what it moves once running); its start-up (launch to first document: JVM, connector,
group join) is reported apart. The harness watches by ``_id``, never by polling the count: on the
MongoDB-wire server here a count (``estimated_document_count`` too) scans the collection, 0.17 s
of the server's time at 20,000 documents, and polled every 50 ms it kept the server busy counting
for most of the run; ours, the fastest writer, lost half its rate to it (4,350 records/s against
9,690 in the load section; 4,570 against 7,770 watched by ``_id`` on one server). So every 50 ms
the harness looks up each partition's first and last record's key (``probe_keys``, read from
the topic before the launch; about a millisecond of the server's time), counts once at the first
sighting (for the documents already there) and once when every last record is there; only a
writer whose last records land before others is then followed by counting, every 0.25 s
(``last_seen_by``: ``"count"``).

- The connector (``org.mongodb.kafka:mongo-kafka-connect``, bench/peers/connect-pom.xml) runs in
  ``ConnectStandalone`` with ``connect-runtime`` of the broker's version, resolved from Maven
  Central. Keys are strings, so ``HoistField$Key`` makes them ``{"_id": key}`` for
  ``ProvidedInKeyStrategy``; the default ``ReplaceOneDefaultStrategy`` replaces by ``_id`` with
  upsert; unordered bulk writes of up to ``BATCH`` documents, ``max.poll.records`` the same, one
  task per partition, ``w=majority&journal=true``.
- Bento (``github.com/warpstreamlabs/bento``, MIT) is built from the Go module proxy by
  ``bento_binary()``: a local module with bench/peers/bento_main.go, ``go get`` and
  ``CGO_ENABLED=0 go build`` into ``.cache/`` (``go install`` of it is refused by the proxy).
  ``kafka_franz`` in, ``mongodb`` out: ``replace-one`` upserts filtered by the key, batches of
  ``BATCH``, ``w: majority`` and journal.
- Ours: ``python -m bench.memory`` (``run_consume`` in a fresh interpreter).
"""

from __future__ import annotations

import functools
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

from confluent_kafka import Consumer, TopicPartition
from pymongo import MongoClient

from bench import REPO
from bench.load import BATCH, DB, LoadTarget
from bench.timing import Sample
from bench.topics import unique
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
# How often the probe keys are looked up by _id (about a millisecond of the server's time each).
POLL_SECONDS = 0.05
# How often the count is polled when the last records came before others (a scan: 0.17 s of the
# server's time at 20,000 documents).
COUNT_POLL_SECONDS = 0.25


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


def connector_command(target: LoadTarget, workdir: Path, journal: bool = True) -> list[str]:
    """``ConnectStandalone`` with one MongoDB sink connector for ``target``; ``journal=False``:
    ``w=majority`` alone, the write concern issue 21 named for it (not ours)."""
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
        # Ours' write concern (mongo_client.MONGO_WRITE_CONCERN), as Bento's below: what w=majority
        # means on a MongoDB replica set by default (writeConcernMajorityJournalDefault).
        "connection.uri": f"{target.mongo_uri.rstrip('/')}/?w=majority{'&journal=true' if journal else ''}",
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
    # What it is built from ("connector", "bento"): left out when that cannot be had here.
    needs: str = ""


PEERS_RUN = [
    Peer("ours", "ours: run_consume in its own interpreter", ours_command),
    Peer(
        "connector",
        "MongoDB Kafka sink connector 2.0.1, Connect standalone, w=majority&journal=true",
        connector_command,
        "connector",
    ),
    Peer("bento", f"Bento {BENTO_VERSION}, kafka_franz -> mongodb replace-one", bento_command, "bento"),
    # For reference, no target: on this server a journaled upsert costs about twice one without.
    Peer(
        "connector_unjournaled",
        "the connector with w=majority alone (not ours' write concern)",
        functools.partial(connector_command, journal=False),
        needs="connector",
    ),
]


@dataclass(frozen=True)
class Probes:
    """The keys (so ``_id``s) of each partition's first and last record of the topic."""

    first: frozenset[str]
    last: frozenset[str]


def probe_keys(bootstrap_servers: str, topic: str) -> Probes:
    """Read each partition's first and last record (before the clock) for their keys."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": unique("bench_probe")})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = [(p, consumer.get_watermark_offsets(TopicPartition(topic, p), 30)) for p in sorted(partitions)]
        keys: dict[str, set[str]] = {"first": set(), "last": set()}
        for p, (low, high) in ends:
            for which, offset in (("first", low), ("last", high - 1)):
                consumer.assign([TopicPartition(topic, p, offset)])
                [message] = consumer.consume(1, timeout=30)
                if message.error() is not None or message.key() is None:
                    raise RuntimeError(f"{topic} p{p} offset {offset}: no keyed record ({message.error()})")
                keys[which].add(message.key().decode())
    finally:
        consumer.close()
    return Probes(frozenset(keys["first"]), frozenset(keys["last"]))


def measure(peer: Peer, target: LoadTarget) -> Sample:
    """Launch ``peer`` on ``target``; watch for its first and last documents; stop it."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{peer.name}-"))
    client: MongoClient = MongoClient(target.mongo_uri)
    collection = client[DB][target.collection]
    probes = probe_keys(target.bootstrap_servers, target.topic)
    command = peer.command(target, workdir)  # builds or resolves the peer first, outside the clock
    log_path = workdir / "out.log"
    try:
        with log_path.open("wb") as log_file:
            launched = time.perf_counter()
            process = subprocess.Popen(command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
            try:
                seen = _watch(collection, target.expected, probes, process, launched)
            finally:
                _stop(process)
        if seen.count != target.expected:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"{peer.name} loaded {seen.count} of {target.expected} documents; its log:\n{tail}"
            )
        detail = {
            "records": target.expected,
            "in_mongo": collection.count_documents({}),
            "startup_seconds": round(seen.first - launched, 3),
            "documents_at_first_sight": seen.first_count,
            "last_seen_by": seen.last_seen_by,
        }
        return Sample(seen.last - seen.first, seen.count - seen.first_count, detail)
    finally:
        client[DB].drop_collection(target.collection)
        client.close()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class Sightings:
    """When the first and the last documents were seen, and the count at each."""

    first: float
    first_count: int = 0
    last: float = 0.0
    count: int = 0
    # "keys": every partition's last record was there and the count complete at once; "count":
    # the last records came before others (writes out of order), the count was polled after.
    last_seen_by: str = "keys"


def _watch(
    collection: Any, expected: int, probes: Probes, process: subprocess.Popen, launched: float
) -> Sightings:
    """Look up the probe keys by ``_id`` every ``POLL_SECONDS``; count only at the first sight
    and once every last record is there (see the module's docstring: a count is a scan here)."""
    seen: Sightings | None = None
    unseen = set(probes.last)
    progress_at, count_at_check = launched, -1
    while True:
        exited = process.poll() is not None
        now = time.perf_counter()
        wanted = sorted(unseen | (probes.first if seen is None else set()))
        present = {doc["_id"] for doc in collection.find({"_id": {"$in": wanted}}, {"_id": 1})}
        if present:
            progress_at = now
            if seen is None:
                seen = Sightings(first=now, first_count=collection.count_documents({}))
            unseen -= present
        if seen is not None and not unseen:
            seen.last, seen.count = now, collection.estimated_document_count()
            if seen.count < expected:
                _count_to_the_end(collection, expected, process, seen)
            return seen
        if exited or now - progress_at > STALL_SECONDS:
            # Gone, or nothing new for a long time: over (the caller says what landed) unless
            # the count moved since the last such check.
            count = collection.estimated_document_count()
            if exited or count == count_at_check:
                over = seen or Sightings(first=now)
                over.last, over.count = now, count
                return over
            progress_at, count_at_check = now, count
        time.sleep(POLL_SECONDS)


def _count_to_the_end(collection: Any, expected: int, process: subprocess.Popen, seen: Sightings) -> None:
    """Poll the count (a scan, so less often) until it reaches ``expected``; the last sighting."""
    seen.last_seen_by = "count"
    stalled_at = time.perf_counter() + STALL_SECONDS
    while seen.count < expected and time.perf_counter() < stalled_at and process.poll() is None:
        time.sleep(COUNT_POLL_SECONDS)
        count = collection.estimated_document_count()
        if count > seen.count:
            seen.last, seen.count = time.perf_counter(), count


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
