"""The whole benchmark: shared topics, warm-up, profiles, alternating contenders, memory, Airflow.

Imported only after ``import airflow`` has read the bench's AIRFLOW_HOME (which also puts
plugins/ on sys.path, as in every Airflow process).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import Producer

from bench import REPO, SECTIONS, load, memory, peers, produce, report
from bench.load import LoadContender, LoadTarget
from bench.services import BenchServices
from bench.timing import alternate
from bench.topics import create_topic, delete_topic, records_on, unique
from kafka_mongo_etl.clients import PRODUCER_REQUIRED, PRODUCER_TUNING
from kafka_mongo_etl.drain import DrainSettings
from kafka_mongo_etl.produce import produce_batch

log = logging.getLogger(__name__)

SMALL = 500  # warm-up size (the DAG's default count)
# The scale section's sizes (times N) and partitions; its drains use the null sink (see run_scale).
SCALE = (1, 10, 50)
SCALE_PARTITIONS = 6


@dataclass(frozen=True)
class Options:
    n: int = 20_000
    reps: int = 3
    tutorial_cap: float = 60.0
    whole_runs: int = 3
    warm_up: bool = True
    sections: frozenset[str] = field(default_factory=lambda: frozenset(SECTIONS))
    # The load section's contenders by name (warm-up included); None: every one.
    contenders: frozenset[str] | None = None


def load_contenders(tutorial_cap: float, only: frozenset[str] | None = None) -> list[LoadContender]:
    """One contender per question; add variants of our drain here (see bench/load.py).

    ``only``: just the contenders of these names (``--contenders``), to compare a few quickly."""
    upsert, insert = partial(load.raw, write_model=load.upserts), partial(load.raw, write_model=load.inserts)
    per_partition = "one write per partition at once"
    default_wc = "the driver's default write concern"
    contenders = [
        LoadContender("ours", "ours: run_consume, default write mode", load.ours),
        LoadContender(
            "ours_in_turn",
            "ours, each batch read, written, committed in turn",
            partial(load.ours, drain=DrainSettings(overlap=False)),
        ),
        LoadContender(
            "ours_reread", "ours, every _id there already (a re-read)", load.ours, prepare=load.ours
        ),
        LoadContender("raw_upsert", "raw loop, ReplaceOne upserts", upsert),
        LoadContender("raw_insert", "raw loop, insert_many skipping duplicates", insert),
        LoadContender("raw_upsert_unjournaled", f"raw upserts, {default_wc}", partial(upsert, journal=False)),
        LoadContender("raw_insert_unjournaled", f"raw inserts, {default_wc}", partial(insert, journal=False)),
        LoadContender(
            "raw_upsert_concurrent", f"raw upserts, {per_partition}", partial(upsert, concurrent=True)
        ),
        LoadContender(
            "raw_insert_concurrent", f"raw inserts, {per_partition}", partial(insert, concurrent=True)
        ),
        LoadContender(
            "tutorial",
            f"tutorial: insert_one per message (at most {tutorial_cap:g} s)",
            partial(load.tutorial, cap_seconds=tutorial_cap),
        ),
        LoadContender("null_sink", "ours, null sink (no MongoDB write)", load.ours_null_sink, writes=False),
        LoadContender(
            "raw_decode",
            "raw loop: json.loads, _id, _kafka, bson.encode (no write)",
            load.raw_decode,
            writes=False,
        ),
    ]
    return [c for c in contenders if only is None or c.name in only]


def fill_topic(bootstrap_servers: str, prefix: str, count: int, partitions: int = 3) -> str:
    """A topic holding ``count`` records as the produce task writes them, but uncompressed:
    the tutorial's kafka-python cannot read lz4 without the ``lz4`` package (not in the lock)."""
    topic = create_topic(bootstrap_servers, unique(prefix), partitions)
    # What EtlProducerHook builds from a connection whose extra is only bootstrap.servers.
    config = {**PRODUCER_TUNING, "bootstrap.servers": bootstrap_servers, **PRODUCER_REQUIRED}
    producer = Producer({**config, "compression.type": "none"})
    produce_batch(producer, topic, f"bench/{prefix}", 0, count)
    landed = records_on(bootstrap_servers, topic)
    if landed != count:
        raise RuntimeError(f"{topic} holds {landed} records, expected {count}")
    return topic


def profile(name: str, work: Callable[[], object]) -> str:
    """Run ``work`` once under pyinstrument; write its call tree to ``bench/profiles/<name>.txt``."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001)
    with profiler:
        work()
    path = REPO / "bench" / "profiles" / f"{name}.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text(profiler.output_text(unicode=False, color=False))
    return str(path.relative_to(REPO))


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def _meta(options: Options) -> dict[str, Any]:
    import airflow
    import confluent_kafka
    import kafka
    import pymongo

    versions = (airflow.__version__, confluent_kafka.__version__, confluent_kafka.libversion()[0])
    names = ("Airflow", "confluent-kafka", "librdkafka", "kafka-python", "pymongo")
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD").strip() or None,
        # Measured code that differs from the commit: the results describe the working tree.
        "uncommitted_code": sorted(
            line[3:] for line in _git("status", "--porcelain", "plugins", "dags").splitlines()
        ),
        "n": options.n,
        "reps": options.reps,
        "tutorial_cap_seconds": options.tutorial_cap,
        "sections": sorted(options.sections),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": dict(zip(names, (*versions, kafka.__version__, pymongo.version), strict=True)),
    }


def run_peers(bs: str, uri: str, topic: str, n: int, reps: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Ours, the sink connector and Bento in turn on the shared topic, each launch to last document.

    A peer that cannot be built or started here is left out, and why is returned by name."""
    unavailable = {}
    for name, prepare in (("connector", peers.connect_classpath), ("bento", peers.bento_binary)):
        log.info("Peers: preparing %s (resolved or built once, into .cache/)", name)
        try:
            prepare()
        except (OSError, subprocess.SubprocessError, RuntimeError) as err:
            log.error("Peers: %s is left out: %s", name, err)
            unavailable[name] = str(err)[-2000:]
    runnable = [peer for peer in peers.PEERS_RUN if peer.needs not in unavailable]
    log.info("Peers: %s, first to last document (%s records)", ", ".join(p.name for p in runnable), n)
    return alternate(
        runnable, reps, lambda peer: peers.measure(peer, LoadTarget(bs, uri, topic, n))
    ), unavailable


def run_scale(bs: str, uri: str, n: int, reps: int) -> dict[str, Any]:
    """Our drain at each size of ``SCALE`` over 6 partitions, ``reps`` times each in a fresh
    interpreter (each with a new consumer group, on one topic per size): the medians of its rate
    and peak RSS, every run in ``runs``.

    With the null sink: the question is whether our own cost per record and our memory stay flat
    as the topic grows; with writes, the local server (about 15,000 documents/s, slower as its
    collection grows) would set the rate and make 50 x N take minutes. Memory with writes is the
    memory section's. Every size is timed alike, by the drain's own clock (``DrainSummary.seconds``,
    from the snapshot's watermark queries to the last commit): the consumer is assigned inside
    that clock, so librdkafka has fetched nothing of any size before it starts. At N the drain is
    four batches in about 0.2 s, so one run moves with whatever else the machine does; hence the
    medians of ``reps`` runs, taken at every size the same way."""
    scale = {}
    for factor in SCALE:
        log.info("Scale: %s records, %s partitions, null sink, %s runs", factor * n, SCALE_PARTITIONS, reps)
        topic = fill_topic(bs, f"bench_scale{factor}", factor * n, partitions=SCALE_PARTITIONS)
        runs = [memory.peak_rss(topic, uri, null_sink=True) for _ in range(reps)]
        delete_topic(bs, topic)
        median = {
            key: statistics.median(run[key] for run in runs)
            for key in ("drain_seconds", "records_per_second", "rss_before_consume_kb", "peak_rss_kb")
        }
        moved = {(run["records"], run["in_mongo"]) for run in runs}
        if moved != {(factor * n, 0)}:
            log.error("Scale: %s x N runs moved %s (records, in MongoDB), not %s", factor, moved, factor * n)
        records, in_mongo = max(moved)
        scale[f"{factor}n"] = {"records": records, "in_mongo": in_mongo, **median, "runs": runs}
    return scale


def run(services: BenchServices, options: Options) -> dict[str, Any]:
    began = time.monotonic()
    bs, n, uri, sections = services.bootstrap_servers, options.n, services.mongo_uri, options.sections
    results: dict[str, Any] = {"meta": _meta(options)}

    def drains(topic: str, count: int) -> Callable[[LoadContender], Any]:
        return lambda contender: load.measure(contender, LoadTarget(bs, uri, topic, count))

    log.info("Filling the shared topic (%s records)", n)
    topic = fill_topic(bs, "bench_drain", n)
    if options.warm_up:
        log.info("Warm-up: every contender once on %s records", SMALL)
        small = fill_topic(bs, "bench_small", SMALL)
        alternate(produce.CONTENDERS, 1, partial(produce.measure, bs, SMALL))
        alternate(load_contenders(10.0, options.contenders), 1, drains(small, SMALL))
    if "profile" in sections:
        log.info("Profiling our produce and our drain (%s records)", n)
        produce_topic = create_topic(bs, unique("bench_profile"), produce.PARTITIONS)
        results["profiles"] = {
            "produce": profile("produce", lambda: produce.ours(bs, produce_topic, n)),
            "drain": profile("drain", lambda: load.ours(LoadTarget(bs, uri, topic, n))),
            "null_sink": profile("null_sink", lambda: load.ours_null_sink(LoadTarget(bs, uri, topic, n))),
        }
    if "produce" in sections:
        for key, size in (("produce", n), ("produce_10n", 10 * n)):
            results[key] = alternate(produce.CONTENDERS, options.reps, partial(produce.measure, bs, size))
    if "load" in sections:
        contenders = load_contenders(options.tutorial_cap, options.contenders)
        results["load"] = alternate(contenders, options.reps, drains(topic, n))
    if "peers" in sections:
        results["peers"], results["peers_unavailable"] = run_peers(bs, uri, topic, n, options.reps)
    if "memory" in sections:
        log.info("Peak RSS of our consume at %s and %s records (subprocesses)", n, 10 * n)
        results["memory"] = {
            "n": memory.peak_rss(topic, uri),
            "10n": memory.peak_rss(fill_topic(bs, "bench_rss10", 10 * n), uri),
        }
    if "scale" in sections:
        results["scale"] = run_scale(bs, uri, n, options.reps)
    if "airflow" in sections:
        from bench import airflow_runs

        log.info("Airflow: whole %s-record runs through a real scheduler", airflow_runs.COUNT)
        results["airflow"] = airflow_runs.run(services, options.whole_runs)
    results["ratios"] = report.ratios(results)
    results["meta"]["duration_seconds"] = round(time.monotonic() - began, 1)
    results["meta"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results
