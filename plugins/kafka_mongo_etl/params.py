"""The checks on a run's params that span more than one param.

Airflow 3.3 validates each ``Param`` against its own JSON schema, one at a time (the SDK's
``Param.resolve`` and the server's ``SerializedParam.resolve`` both call ``jsonschema.validate``
on one value with that param's schema); a DAG has no schema over all of its params, so a
conditional such as "``id_field`` is required when ``id_strategy`` is ``field``" cannot be said
in the trigger form. These checks run first in the run instead, before anything is produced,
and fail it at once without retries (``ParamsRefusedError``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kafka_mongo_etl.errors import ParamsRefusedError
from kafka_mongo_etl.ids import id_function
from kafka_mongo_etl.write_models import TOMBSTONE_MODES

INT64_MAX = 2**63 - 1
# MongoDB: "<database>.<collection>" at most 255 bytes; a database name under 64 bytes.
MAX_NAMESPACE_BYTES = 255
MAX_DATABASE_BYTES = 63
# The longest collection name a run writes to: the dead letters beside the target.
DEAD_LETTER_SUFFIX = "_dlq"


def param_problems(params: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``params`` taken together (each one already passed its own schema)."""
    problems = []
    try:
        id_function(params.get("id_strategy") or "key", params.get("id_field"), params.get("id_fields"))
    except ValueError as err:
        problems.append(str(err))
    strategy = params.get("id_strategy") or "key"
    if params.get("write_mode") in TOMBSTONE_MODES and strategy != "key":
        problems.append(
            f"write_mode {params['write_mode']!r} deletes the document of a tombstone's key, so it needs "
            f"id_strategy 'key' (not {strategy!r}): a tombstone has no value to take an _id from"
        )
    start, count = params.get("start"), params.get("count")
    if isinstance(start, int) and isinstance(count, int) and start + count - 1 > INT64_MAX:
        problems.append(
            f"start + count - 1 = {start + count - 1} is beyond int64 ({INT64_MAX}), which MongoDB "
            f"cannot store as a number; use a start of at most {INT64_MAX - count + 1} for {count} records"
        )
    database, collection = params.get("mongo_db"), params.get("mongo_collection")
    if isinstance(database, str) and isinstance(collection, str):
        if len(database.encode()) > MAX_DATABASE_BYTES:
            problems.append(
                f"mongo_db {database!r} is {len(database.encode())} bytes in UTF-8; MongoDB allows "
                f"{MAX_DATABASE_BYTES}"
            )
        namespace = f"{database}.{collection}{DEAD_LETTER_SUFFIX}"
        if len(namespace.encode()) > MAX_NAMESPACE_BYTES:
            problems.append(
                f"the dead-letter namespace {namespace!r} is {len(namespace.encode())} bytes; MongoDB allows "
                f"{MAX_NAMESPACE_BYTES} for <database>.<collection>: shorten mongo_db or mongo_collection"
            )
    return problems


def check_params(params: Mapping[str, Any]) -> None:
    """Raise ``ParamsRefusedError`` (not retried) naming every problem; call it before producing."""
    problems = param_problems(params)
    if problems:
        raise ParamsRefusedError(
            "The run's params cannot work together: "
            + "; ".join(problems)
            + ". Nothing was produced or loaded; trigger the run again with other params."
        )
