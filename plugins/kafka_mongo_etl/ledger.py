"""The drain's own record of the offsets it committed, kept in MongoDB next to the data.

Kafka keeps a committed offset of a group whose consumers only ``assign()`` (as the drain's do)
for ``offsets.retention.minutes`` (7 days by default) after that offset's last commit, then
forgets it. Without a record of its own, a drain after a longer pause would find *no* committed
offset, start at the low watermark, and never notice the records that retention deleted in
between. So every drain writes each offset it commits to ``<db>.etl_offsets`` (one document per
topic, group and partition: ``_id`` ``{topic}:{group}:{p}``, ``offset``, ``committed_at``), right
after Kafka accepted the commit, and a drain that finds no committed offset in Kafka for a
partition asks the ledger (``drain.start_offsets`` decides what the answer means).

The ledger is consulted *only* when Kafka has no commit: an offset reset on purpose (to re-load,
or to skip) is a commit in Kafka, and it wins; the drain then records it here as well.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable

from pymongo import UpdateOne
from pymongo.collection import Collection

log = logging.getLogger(__name__)

LEDGER_COLLECTION = "etl_offsets"


class OffsetLedger:
    """The ledger of ``topic`` for ``group_id`` in ``collection``."""

    def __init__(self, collection: Collection, topic: str, group_id: str) -> None:
        self.collection = collection
        self.topic = topic
        self.group_id = group_id

    def _id(self, partition: int) -> str:
        return f"{self.topic}:{self.group_id}:{partition}"

    def read(self, partitions: Iterable[int]) -> dict[int, int]:
        """``{partition: offset}`` the drain last committed, for those it recorded."""
        wanted = {self._id(p): p for p in partitions}
        found = self.collection.find({"_id": {"$in": list(wanted)}}, {"offset": 1})
        return {wanted[d["_id"]]: int(d["offset"]) for d in found}

    def record(self, offsets: dict[int, int]) -> None:
        """Note ``offsets`` as committed (call only after Kafka accepted the commit)."""
        if not offsets:
            return
        now = dt.datetime.now(dt.UTC)
        self.collection.bulk_write(
            [
                UpdateOne(
                    {"_id": self._id(p)},
                    {
                        "$set": {
                            "topic": self.topic,
                            "group_id": self.group_id,
                            "partition": p,
                            "offset": offset,
                            "committed_at": now,
                        }
                    },
                    upsert=True,
                )
                for p, offset in sorted(offsets.items())
            ],
            ordered=False,
        )
