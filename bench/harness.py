"""The whole benchmark: shared data, warm-up, profiles, alternating contenders, memory, Airflow.

Imported only after ``import airflow`` has read the bench's AIRFLOW_HOME (which also puts
plugins/ on sys.path, as in every Airflow process).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from bench import SECTIONS, load, memory, produce, proposals, server_drift, write_model
from bench.profiles import profile
from bench.ratios import ratios
from bench.services import SMALL_PREFETCH_CONN, BenchServices
from bench.timing import Sample, Series, rotated
from bench.topics import create_topic, producer_config, records_on, unique
from kafka_mongo_etl.produce import produce_batch

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
PARTITION_COUNTS = (1, 2, 4)
SMALL = 500  # the DAG's default count: one run's fixed costs are measured on this many records


@dataclass(frozen=True)
class Options:
    n: int = 20_000
    reps: int = 3
    tutorial_n: int = 5_000
    provider_poll_timeout: float = 5.0
    airflow_reps: int = 3
    whole_runs: int = 3
    warm_up: bool = True
    sections: frozenset[str] = field(default_factory=lambda: frozenset(SECTIONS))


@dataclass(frozen=True)
class Data:
    """The shared topics every contender of a section reads."""

    drain: str
    small: str
    partitions: dict[int, str]


def fill_topic(bootstrap_servers: str, prefix: str, partitions: int, count: int) -> str:
    """A topic holding ``count`` records as the produce task writes them, but uncompressed.

    The tutorial's kafka-python cannot read lz4 batches without the ``lz4`` package, and every
    drain contender must read the same bytes, so the shared topics are written uncompressed.
    """
    topic = create_topic(bootstrap_servers, unique(prefix), partitions)
    producer = Producer({**producer_config(bootstrap_servers), "compression.type": "none"})
    produce_batch(producer, topic, f"bench/{prefix}", 0, count)
    landed = records_on(bootstrap_servers, topic)
    if landed != count:
        raise RuntimeError(f"{topic} holds {landed} records, expected {count}")
    return topic


def load_contenders(poll_timeout: float) -> list[load.LoadContender]:
    return [
        load.LoadContender("ours", "ours: run_consume (drain + MongoSink upserts)", load.ours),
        load.LoadContender("raw_upsert", "raw loop, ReplaceOne upserts (same writes)", load.raw_upsert),
        load.LoadContender("raw_insert", "raw loop, insert_many skipping duplicates", load.raw_insert),
        load.LoadContender(
            "provider",
            f"ConsumeFromTopicOperator + MongoHook (poll_timeout {poll_timeout:g} s)",
            partial(load.provider_operator, poll_timeout=poll_timeout),
        ),
        load.LoadContender("tutorial", "tutorial kafka-python, insert_one per message", load.tutorial),
        load.LoadContender(
            "null_sink", "ours, null sink (no MongoDB write)", load.ours_null_sink, writes=False
        ),
    ]


def _as_dicts(series: dict[str, Series]) -> dict[str, dict[str, Any]]:
    return {name: s.as_dict() for name, s in series.items()}


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _uncommitted_code() -> list[str]:
    """Files of the measured code (plugins/, dags/) that differ from the commit: results then
    describe the working tree, not the commit alone."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", "plugins", "dags"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return sorted(line[3:] for line in out.splitlines() if line.strip())


def _meta(options: Options) -> dict[str, Any]:
    import confluent_kafka
    import kafka
    import pymongo
    from airflow import __version__ as airflow_version

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "uncommitted_code": _uncommitted_code(),
        "n": options.n,
        "reps": options.reps,
        "tutorial_n": min(options.tutorial_n, options.n),
        "provider_poll_timeout": options.provider_poll_timeout,
        "airflow_reps": options.airflow_reps,
        "whole_runs": options.whole_runs,
        "sections": sorted(options.sections),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": {
            "airflow": airflow_version,
            "confluent_kafka": confluent_kafka.__version__,
            "librdkafka": confluent_kafka.libversion()[0],
            "kafka_python": kafka.__version__,
            "pymongo": pymongo.version,
        },
        "mongo_wire_server": "SecantusDB (secantusd-py), on-disk storage in a temp dir",
        "ratio_convention": "rate(ours) / rate(other): above 1 means ours moves more records per second",
    }


def warm_up(services: BenchServices, data: Data) -> None:
    """Every contender once on a small batch: imports and first connections are not measured."""
    log.info("Warm-up: every contender once on %s records", SMALL)
    for contender in produce.CONTENDERS:
        produce.measure(contender, services.bootstrap_servers, SMALL)
    for contender in load_contenders(poll_timeout=1.0):
        load.measure(
            contender, load.LoadTarget(services.bootstrap_servers, services.mongo_uri, data.small, SMALL)
        )


def run_profiles(services: BenchServices, data: Data, n: int) -> dict[str, str]:
    log.info("Profiling our produce and our drain (%s records)", n)
    bs = services.bootstrap_servers
    topic = create_topic(bs, unique("bench_profile"), produce.PARTITIONS)
    paths = {
        "produce": profile(
            "produce",
            lambda: produce.ours(bs, topic, n),
            f"pyinstrument: produce_batch of {n} records through EtlProducerHook (warm process)",
        ),
        "drain": profile(
            "drain",
            lambda: load.ours(load.LoadTarget(bs, services.mongo_uri, data.drain, n)),
            f"pyinstrument: run_consume of {n} records into the Mongo-wire server (warm process)",
        ),
    }
    return {name: str(path.relative_to(REPO)) for name, path in paths.items()}


def run_produce(services: BenchServices, options: Options) -> dict[str, Any]:
    """Each contender at N and at 10 x N (start-up cost vs steady state), alternating."""
    n, bs = options.n, services.bootstrap_servers
    contenders = [
        *produce.CONTENDERS,
        produce.ProduceContender(
            "proposed", "proposed: produce_batch's loop with four changes", proposals.produce_proposed
        ),
    ]
    by_size = {size: {c.name: Series(c.name, c.label) for c in contenders} for size in (n, 10 * n)}
    for rep in range(options.reps):
        for contender in rotated(contenders, rep):
            for size, series in by_size.items():
                sample = produce.measure(contender, bs, size)
                series[contender.name].samples.append(sample)
                log.info("produce %s x%s: %.0f records/s", contender.name, size, size / sample.seconds)
    return {"produce": _as_dicts(by_size[n]), "produce_10n": _as_dicts(by_size[10 * n])}


def run_load(services: BenchServices, data: Data, options: Options) -> dict[str, Any]:
    """Every drain-and-load contender on the same topic, fresh group and collection each time."""
    n = options.n
    tutorial_n = min(options.tutorial_n, n)
    contenders = load_contenders(options.provider_poll_timeout)
    series = {c.name: Series(c.name, c.label) for c in contenders}
    for rep in range(options.reps):
        for contender in rotated(contenders, rep):
            expected = tutorial_n if contender.name == "tutorial" else n
            target = load.LoadTarget(services.bootstrap_servers, services.mongo_uri, data.drain, expected)
            sample = load.measure(contender, target)
            series[contender.name].samples.append(sample)
            log.info(
                "load %s: %.1fs, %.0f records/s", contender.name, sample.seconds, expected / sample.seconds
            )
    tutorial = next(c for c in contenders if c.name == "tutorial")
    if tutorial_n < n:
        # Its insert_one slows down as the collection grows on this server: one run at N shows how much.
        at_n = Series("tutorial_at_n", f"{tutorial.label}, all {n:,} records (one run)")
        target = load.LoadTarget(services.bootstrap_servers, services.mongo_uri, data.drain, n)
        at_n.samples.append(load.measure(tutorial, target))
        log.info("load tutorial at N: %.1fs", at_n.samples[-1].seconds)
        series[at_n.name] = at_n
    without_idle = Series("provider_without_idle", "ConsumeFromTopicOperator, its final idle wait left out")
    for sample in series["provider"].samples:
        if sample.detail.get("seconds_without_idle"):
            without_idle.samples.append(Sample(sample.detail["seconds_without_idle"], sample.records))
    if without_idle.samples:
        series[without_idle.name] = without_idle
    return _as_dicts(series)


def run_fixed_costs(services: BenchServices, data: Data, options: Options) -> dict[str, Any]:
    """Ours and the proposed changes (bench/proposals.py) at the DAG's default size and at N."""
    bs, uri, n = services.bootstrap_servers, services.mongo_uri, options.n
    producers = {
        "produce": produce.CONTENDERS[0],
        "produce_metadata_first": produce.ProduceContender(
            "produce_metadata_first",
            "proposed: list_topics before produce_batch",
            proposals.produce_with_metadata_first,
        ),
    }
    drains = {
        "drain_null_sink": load.LoadContender(
            "drain_null_sink", "ours: drain, null sink", load.ours_null_sink, writes=False
        ),
        "drain_null_sink_capped": load.LoadContender(
            "drain_null_sink_capped",
            "proposed: drain, null sink, consume at most what is left",
            proposals.null_sink_capped,
            writes=False,
        ),
    }
    series: dict[str, Series] = {}
    for name, contender in {**producers, **drains}.items():
        series[name] = Series(name, f"{contender.label} ({SMALL} records)")
    for name, contender in drains.items():
        series[f"{name}_at_n"] = Series(f"{name}_at_n", f"{contender.label} ({n:,} records)")
    for rep in range(options.reps):
        for name in rotated(list(producers), rep):
            series[name].samples.append(produce.measure(producers[name], bs, SMALL))
        for name in rotated(list(drains), rep):
            series[name].samples.append(
                load.measure(drains[name], load.LoadTarget(bs, uri, data.small, SMALL))
            )
            series[f"{name}_at_n"].samples.append(
                load.measure(drains[name], load.LoadTarget(bs, uri, data.drain, n))
            )
    return _as_dicts(series)


def run_partitions(services: BenchServices, data: Data, options: Options) -> dict[str, Any]:
    """Our consume (and its null-sink drain) over 1, 2, 4 partitions as one task, in process."""
    ours, null_sink = load_contenders(options.provider_poll_timeout)[0], load_contenders(1.0)[-1]
    series: dict[str, Series] = {}
    for p in PARTITION_COUNTS:
        series[f"ours_p{p}"] = Series(f"ours_p{p}", f"ours, {p} partition(s)")
        series[f"null_sink_p{p}"] = Series(f"null_sink_p{p}", f"ours, null sink, {p} partition(s)")
    for rep in range(options.reps):
        for p in rotated(list(PARTITION_COUNTS), rep):
            for contender in (ours, null_sink):
                target = load.LoadTarget(
                    services.bootstrap_servers, services.mongo_uri, data.partitions[p], options.n
                )
                series[f"{contender.name}_p{p}"].samples.append(load.measure(contender, target))
    return _as_dicts(series)


def run_write_models(services: BenchServices, options: Options) -> dict[str, Any]:
    docs = write_model.documents(options.n)
    series: dict[str, Series] = {}
    for model in write_model.MODELS:
        series[f"{model.name}_first_load"] = Series(f"{model.name}_first_load", f"{model.label}, new _ids")
        series[f"{model.name}_redelivery"] = Series(f"{model.name}_redelivery", f"{model.label}, _ids exist")
    for rep in range(options.reps):
        for model in rotated(list(write_model.MODELS), rep):
            first, again = write_model.measure(model, services.mongo_uri, docs)
            series[f"{model.name}_first_load"].samples.append(first)
            series[f"{model.name}_redelivery"].samples.append(again)
    return _as_dicts(series)


def run_memory(services: BenchServices, data: Data, options: Options) -> dict[str, Any]:
    n = options.n
    log.info("Peak RSS of our consume at %s and %s records (subprocesses)", n, 10 * n)
    topic_10n = fill_topic(services.bootstrap_servers, "bench_rss10", 3, 10 * n)
    uri = services.mongo_uri
    return {
        "n": memory.peak_rss(data.drain, n, uri),
        "10n": memory.peak_rss(topic_10n, 10 * n, uri),
        "proposed_n": memory.peak_rss(data.drain, n, uri, kafka_conn_id=SMALL_PREFETCH_CONN),
        "proposed_10n": memory.peak_rss(topic_10n, 10 * n, uri, kafka_conn_id=SMALL_PREFETCH_CONN),
    }


def run(services: BenchServices, options: Options) -> dict[str, Any]:
    began = time.monotonic()
    bs, n, sections = services.bootstrap_servers, options.n, options.sections
    results: dict[str, Any] = {"meta": _meta(options)}
    log.info("Filling the shared topics (%s records each)", n)
    data = Data(
        drain=fill_topic(bs, "bench_drain", 3, n),
        small=fill_topic(bs, "bench_small", 3, SMALL),
        partitions={p: fill_topic(bs, f"bench_p{p}", p, n) for p in PARTITION_COUNTS}
        if {"partitions", "airflow"} & sections
        else {},
    )
    if options.warm_up:
        warm_up(services, data)
    drift = [server_drift.probe(services.mongo_uri, "start")]
    results["server_drift"] = drift
    if "profile" in sections:
        results["profiles"] = run_profiles(services, data, n)
    if "produce" in sections:
        results.update(run_produce(services, options))
    if "load" in sections:
        results["load"] = run_load(services, data, options)
        drift.append(server_drift.probe(services.mongo_uri, "after drain and load"))
    if "fixed" in sections:
        results["fixed_costs"] = run_fixed_costs(services, data, options)
    if "partitions" in sections:
        results.setdefault("partitions", {})["one_task_in_process"] = run_partitions(services, data, options)
    if "write_model" in sections:
        results["write_model"] = run_write_models(services, options)
    if "memory" in sections:
        results["memory"] = run_memory(services, data, options)
    drift.append(server_drift.probe(services.mongo_uri, "end (before Airflow)"))
    if "airflow" in sections:
        from bench import airflow_runs

        log.info("Airflow: whole runs and partition shapes through a real scheduler")
        results["airflow"] = airflow_runs.run(
            services, data.partitions, n, options.whole_runs, options.airflow_reps
        )
    results["ratios"] = ratios(results)
    results["meta"]["duration_seconds"] = round(time.monotonic() - began, 1)
    return results
