"""Replay dead letters: send the chosen records of ``<mongo_collection>_dlq`` back through the
current record path once their cause is fixed. The logic lives in ``kafka_mongo_etl.replay``;
this file is the form and the one task."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from kafka_mongo_etl.options import DAG_DEFAULT_ARGS, option

DOC_MD = """
### Replay dead letters, exactly once

Sends the dead letters of `<mongo_db>.<mongo_collection>_dlq` that match **every** criterion
given — `run_id`, `codes`, `failed_after` (inclusive) / `failed_before` (exclusive), `ids` — back
through the current record path and write model (at least one criterion is required). Give the
write mode, `_id` options and `route_by` the collection is loaded with (a routing drain keeps
every dead letter in its own collection's `_dlq`; the replay routes them again).

A record that now loads is written, fenced by its original partition and offset — so it never
overwrites newer content — and then its dead letter is deleted; a crash in between is safe to
run again (exactly once). A record that still fails stays with its new `code`, `reason` and
`stage`, `replayed_at` and `replays` + 1. A dead letter whose key, value or headers were cut to
their bounds cannot be replayed faithfully: it stays, marked `unreplayable`. The task returns
the summary (selected, loaded, stale, still_failing by code, unreplayable, changed). See
docs/replay.md.
"""

SELECTION_SECTION = "Which dead letters"
OPTIONS_SECTION = "How the collection is loaded"


def _shared(name: str, section: str) -> Param:
    """The load option ``name``'s own form field (kafka_mongo_etl.options), in ``section``."""
    param = option(name).param()
    param.schema["section"] = section
    return param


def _criterion(kind: str, title: str, description: str) -> Param:
    """A selection criterion: empty (not used), a string, or a list of non-empty strings."""
    schema: dict[str, Any] = {"type": ["null", kind]}
    if kind == "array":
        schema |= {"items": {"type": "string", "minLength": 1}, "minItems": 1}
    return Param(None, title=title, description=description, section=SELECTION_SECTION, **schema)


def replay_params() -> dict[str, Param]:
    return {
        "mongo_db": option("mongo_db").param(),
        "mongo_collection": option("mongo_collection").param(),
        "run_id": _criterion(
            "string", "Run id", "Dead letters written by this DAG run (their run_id field)."
        ),
        "codes": _criterion(
            "array", "Codes", "Dead letters with one of these codes (e.g. rejected, not_json)."
        ),
        "failed_after": _criterion(
            "string",
            "Failed at or after",
            "ISO 8601 date or time (UTC when it has no zone), e.g. 2026-12-06T10:00:00.",
        ),
        "failed_before": _criterion(
            "string", "Failed before", "ISO 8601 date or time (UTC when it has no zone); exclusive."
        ),
        "ids": _criterion("array", "Dead-letter _ids", "Dead letters by _id (topic:partition:offset)."),
        **{
            name: _shared(name, OPTIONS_SECTION)
            for name in (
                "write_mode",
                "id_strategy",
                "id_field",
                "id_fields",
                "processors",
                "cdc_times",
                "cdc_keep_source",
                "route_by",
                "value_format",
                "key_format",
                "schema_registry_conn_id",
            )
        },
        "batch_size": Param(
            500,
            type="integer",
            minimum=1,
            maximum=10_000,
            title="Dead letters per write",
            description="How many dead letters are read, written and deleted at a time.",
            section=OPTIONS_SECTION,
        ),
        "mongo_conn_id": Param(
            "mongo_default",
            type="string",
            minLength=1,
            title="MongoDB connection",
            description="The Airflow connection of the MongoDB deployment that holds the collection.",
            section=OPTIONS_SECTION,
        ),
    }


@dag(
    dag_id="kafka_to_mongo_replay",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params=replay_params(),
    doc_md=DOC_MD,
    tags=["kafka", "mongodb", "etl"],
    default_args=DAG_DEFAULT_ARGS,
)
def kafka_to_mongo_replay() -> None:
    @task(execution_timeout=dt.timedelta(hours=2))
    def replay() -> dict[str, Any]:
        """Replay the selected dead letters; returns the summary."""
        from kafka_mongo_etl.replay import run_replay

        return run_replay(dict(get_current_context()["params"]))

    replay()


kafka_to_mongo_replay()
