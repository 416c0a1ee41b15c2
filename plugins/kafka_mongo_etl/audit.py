"""One audit document per DAG run in ``<db>.etl_runs``: what the run produced and loaded."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo.collection import Collection

AUDIT_COLLECTION = "etl_runs"


def write_audit(collection: Collection, batch: str, fields: dict[str, Any]) -> None:
    """Upsert the run's audit document (a retried task overwrites its own, never adds one)."""
    document = {**fields, "updated_at": dt.datetime.now(dt.UTC)}
    collection.update_one({"_id": batch}, {"$set": document}, upsert=True)
