"""One audit document per DAG run in ``<db>.etl_runs``: what the run produced and loaded."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo.collection import Collection

AUDIT_COLLECTION = "etl_runs"


def write_audit(collection: Collection, batch: str, fields: dict[str, Any]) -> None:
    """Write the run's audit document: the latest try's fields, and only them.

    A retried task replaces its own document (never adds one), so a try that succeeds after a
    failed one leaves no stale ``error`` behind.
    """
    document = {**fields, "updated_at": dt.datetime.now(dt.UTC)}
    collection.replace_one({"_id": batch}, document, upsert=True)
