"""Batch identity, record keys and the document ``_id`` strategies.

A record's key is built from its batch (the DAG run) and its number, so re-sending a batch —
a retried task, a cleared run, a repeated backfill date — produces the same keys, and the
MongoDB ``_id`` derived from them makes the second copy overwrite the first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ID_STRATEGIES = ("key", "coordinates", "field")


def batch_id(dag_id: str, run_id: str) -> str:
    """The identity of one batch: stable across retries and clears of the same DAG run."""
    return f"{dag_id}/{run_id}"


def record_key(batch: str, num: int) -> str:
    return f"{batch}/{num}"


IdFunction = Callable[[Any, dict[str, Any]], Any]


def id_function(strategy: str, field: str | None = None) -> IdFunction:
    """How a record becomes a document ``_id``.

    ``key``: the record key (UTF-8); ``coordinates``: ``topic:partition:offset`` (idempotent for
    redelivery of the same record, not for a re-sent batch); ``field``: a field of the value.
    """
    if strategy == "key":

        def by_key(message: Any, _value: dict[str, Any]) -> Any:
            key = message.key()
            if key is None:
                raise ValueError("record has no key; use id_strategy 'coordinates' or 'field'")
            return key.decode("utf-8")

        return by_key
    if strategy == "coordinates":
        return lambda message, _value: f"{message.topic()}:{message.partition()}:{message.offset()}"
    if strategy == "field":
        if not field:
            raise ValueError("id_strategy 'field' needs id_field, the value field to use as _id")

        def by_field(_message: Any, value: dict[str, Any]) -> Any:
            if field not in value:
                raise ValueError(f"record value has no field {field!r} for the _id")
            return value[field]

        return by_field
    raise ValueError(f"unknown id_strategy {strategy!r}; choose one of {', '.join(ID_STRATEGIES)}")
