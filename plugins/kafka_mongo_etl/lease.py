"""One drain per (topic, consumer group) at a time, across every kind of run.

Manual, scheduled and backfill runs — and other DAGs draining the same topic into the same
target — share one lease document in ``<db>.etl_leases``. The holder renews it before every
offset commit; a task killed with SIGKILL stops renewing and its lease expires after ``ttl``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from kafka_mongo_etl.errors import DrainBusyError, LeaseLostError

log = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class DrainLease:
    collection: Collection
    name: str
    owner: str
    ttl: float = 120.0

    def _try_take(self) -> bool:
        now = _now()
        try:
            self.collection.find_one_and_update(
                {"_id": self.name, "$or": [{"expires_at": {"$lt": now}}, {"owner": self.owner}]},
                {"$set": {"owner": self.owner, "expires_at": now + dt.timedelta(seconds=self.ttl)}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False  # the document exists, unexpired, with another owner
        return True

    def acquire(self, wait: float, check_every: float = 2.0) -> None:
        """Take the lease, waiting up to ``wait`` seconds for its holder to finish."""
        deadline = time.monotonic() + wait
        logged = False
        while not self._try_take():
            holder = self.collection.find_one({"_id": self.name}) or {}
            if time.monotonic() >= deadline:
                raise DrainBusyError(
                    f"another drain ({holder.get('owner', '?')}) holds {self.name} until "
                    f"{holder.get('expires_at', '?')}; waited {wait:.0f}s. The task's retry will try again."
                )
            if not logged:
                log.info("Waiting for %s, held by %s", self.name, holder.get("owner"))
                logged = True
            # Polling a lock held by another process: there is no event to wait on.
            time.sleep(check_every)
        log.info("Took %s as %s", self.name, self.owner)

    def renew(self) -> None:
        """Extend the lease; raise if another drain took it over (ours had expired)."""
        result = self.collection.update_one(
            {"_id": self.name, "owner": self.owner},
            {"$set": {"expires_at": _now() + dt.timedelta(seconds=self.ttl)}},
        )
        if result.matched_count != 1:
            raise LeaseLostError(
                f"{self.name} was taken over by another drain while this one ran; stopping before "
                "committing more offsets"
            )

    def release(self) -> None:
        self.collection.delete_one({"_id": self.name, "owner": self.owner})
