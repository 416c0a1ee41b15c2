"""One drain per (topic, consumer group, partition) at a time, fenced, across every kind of run.

Every drain holds one lease document per partition it drains, ``drain:{topic}:{group}:{p}`` in
``<db>.etl_leases`` (``partition_leases``): a whole-topic drain lists the topic's partitions and
takes all their leases, a per-partition drain takes its own. So a whole-topic drain and the
per-partition drains of the same group exclude each other whatever ``parallelism`` each run
uses, while per-partition drains of different partitions run side by side. Manual, scheduled,
backfill and on-arrival runs — and other DAGs draining the same topic into the same target —
share the same documents. The leases are taken one by one in ascending partition order (two
drains that want overlapping sets never wait for each other in a circle), renewed together by
one ``update_many`` that must match every one, and released together. The owner is one task
*try* (``lease_owner``: run id, try number and a random part), never a whole run, so a zombie
try and its retry are two owners.

- **Expiry is the server's**: ``expires_at`` is set to ``$$NOW + ttl`` inside an update pipeline
  and compared with ``$$NOW``, so a worker whose clock is off (even by years) can neither steal
  a live lease nor keep a dead one.
- **A heartbeat thread renews it** every ``ttl / 3``, however long a write takes.
- **Every offset commit is fenced**: the drain calls ``renew()`` right before it commits, and
  ``renew()`` succeeds only if this owner still holds every one of its unexpired leases *and* MongoDB said so
  quickly enough that the lease is certain to outlast the commit; otherwise it raises
  ``LeaseLostError`` and nothing more is committed. A heartbeat that finds the lease lost makes
  the next ``renew()`` raise without asking the server.
- ``release()`` deletes the lease only if this owner holds it.

A try killed with SIGKILL stops renewing; its lease expires ``ttl`` seconds after the last
renewal and the next drain takes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pymongo
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError

from kafka_mongo_etl.errors import DrainBusyError, LeaseLostError

log = logging.getLogger(__name__)

# The collection of the target database that holds the drains' leases.
LEASE_COLLECTION = "etl_leases"
# Long enough to ride out a slow renewal or two; short enough that a killed try's lease frees
# the next drain quickly (Airflow's first retry comes 15 s after a failure anyway).
LEASE_TTL = 30.0
# release() is best effort (an unreleased lease expires by itself): never wait long for it.
RELEASE_TIMEOUT = 2.0

# "The lease is live": expires_at is later than the server's now. Both sides are compared as
# milliseconds since the epoch: SecantusDB compares a stored date with $$NOW wrongly (always
# false), and numbers compare the same on every server.
_LIVE = {"$gt": [{"$toLong": "$expires_at"}, {"$toLong": "$$NOW"}]}


def _brief(err: BaseException) -> str:
    """An error without pymongo's topology description (which repeats every server's state)."""
    return str(err).split(", Timeout:")[0][:300]


def lease_owner(run_id: str, try_number: int | None) -> str:
    """A lease owner unique to one task try: ``<run id>/try-<n>/<random>``.

    The random part tells apart two processes that run the same try (a zombie that Airflow
    gave up on and the try it started again), and a call outside Airflow (``try-?``).
    """
    attempt = "?" if try_number is None else str(try_number)
    return f"{run_id}/try-{attempt}/{secrets.token_hex(6)}"


def partition_leases(topic: str, group_id: str, partitions: Iterable[int]) -> tuple[str, ...]:
    """The lease names of a drain of ``partitions``, in the order every drain takes them."""
    return tuple(f"drain:{topic}:{group_id}:{p}" for p in sorted(set(partitions)))


@dataclass
class DrainLease:
    """The leases ``names`` in ``collection``, held (or wanted) together by ``owner`` for ``ttl`` s.

    ``names`` is one name or several, taken in the order given (``partition_leases`` gives
    every drain the same order). ``where`` names the MongoDB connection in error messages. Use
    ``held()`` around a drain: it takes the leases, runs the heartbeat and releases them on the
    way out.
    """

    collection: Collection
    names: Sequence[str] | str
    owner: str
    ttl: float = LEASE_TTL
    where: str = "MongoDB"
    # Monotonic time until which the lease is certain to be ours: the send time of the latest
    # confirmed renewal plus ttl (the server set expires_at no earlier than that send).
    _valid_until: float = field(default=0.0, init=False, repr=False)
    _lost: str | None = field(default=None, init=False, repr=False)
    _state: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _heartbeat: threading.Thread | None = field(default=None, init=False, repr=False)
    _abandoned: bool = field(default=False, init=False, repr=False)
    # The names taken so far, in order; all of ``names`` once acquire() returned.
    _held: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.names = (self.names,) if isinstance(self.names, str) else tuple(self.names)
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"a drain lease needs distinct names, got {self.names!r}")

    @property
    def name(self) -> str:
        """The leases as error messages and logs name them."""
        if len(self.names) == 1:
            return self.names[0]
        return f"{self.names[0]} .. {self.names[-1]} ({len(self.names)} leases)"

    @property
    def lost(self) -> str | None:
        """Why the lease is lost, once the heartbeat or a renewal found out; else ``None``."""
        return self._lost

    def _set_expiry(self, **more: Any) -> list[dict[str, Any]]:
        expires = {"$add": ["$$NOW", round(self.ttl * 1000)]}
        return [{"$set": {"expires_at": expires, "renewed_at": "$$NOW", **more}}]

    def _confirmed(self, sent: float) -> None:
        """Every held lease was extended by a request sent at ``sent``."""
        with self._state:
            self._valid_until = max(self._valid_until, sent + self.ttl)

    def _try_take(self, name: str) -> bool:
        sent = time.monotonic()
        free_or_ours = {"$or": [{"$not": [_LIVE]}, {"$eq": ["$owner", self.owner]}]}
        try:
            self.collection.find_one_and_update(
                {"_id": name, "$expr": free_or_ours},
                self._set_expiry(
                    owner=self.owner, taken_at="$$NOW", host=socket.gethostname(), pid=os.getpid()
                ),
                upsert=True,
            )
        except DuplicateKeyError:
            return False  # the document exists, live, with another owner
        with self._state:
            # The leases are only as certain as the one confirmed longest ago.
            until = sent + self.ttl
            self._valid_until = min(self._valid_until, until) if self._held else until
            self._held.append(name)
        return True

    def holder(self, name: str | None = None) -> dict[str, Any]:
        """The lease document ``name`` (default: the first) as it is now (``{}`` when there is none)."""
        return self.collection.find_one({"_id": name or self.names[0]}) or {}

    def acquire(self, wait: float, check_every: float | None = None) -> None:
        """Take every lease, in order, waiting up to ``wait`` seconds in all for their holders to
        finish or expire; those already taken are renewed meanwhile. On failure, those taken are
        released again."""
        check_every = check_every if check_every is not None else min(2.0, self.ttl / 3)
        deadline = time.monotonic() + wait
        with self._state:
            self._held = []
            self._lost = None
        self._abandoned = False
        try:
            for name in self.names:
                self._take(name, wait, deadline, check_every)
        except BaseException:
            self.release()
            raise
        log.info("Took %s as %s (ttl %.0fs)", self.name, self.owner, self.ttl)

    def _take(self, name: str, wait: float, deadline: float, check_every: float) -> None:
        logged = False
        while not self._try_take(name):
            holder = self.holder(name)
            if time.monotonic() >= deadline:
                raise DrainBusyError(
                    f"another drain ({holder.get('owner', '?')}, on {holder.get('host', '?')}) holds "
                    f"{name} until {holder.get('expires_at', '?')} (server time); waited {wait:.0f}s. "
                    "The task's retry will try again."
                )
            if not logged:
                log.info("Waiting for %s, held by %s", name, holder.get("owner"))
                logged = True
            # Polling a lock held by another process: there is no event to wait on.
            time.sleep(check_every)
            if self._held:
                # Those taken already must not expire while this one is awaited.
                ours, _sent = self._extend()
                if not ours:
                    raise LeaseLostError(self._mark_lost(self._taken_over()))

    def abandon(self) -> None:
        """Leave the lease to expire by its ttl instead of releasing it: a write of this owner
        may still reach MongoDB (a stopped try's write in flight), and no other drain may start
        before that write is over or the lease has expired."""
        self._abandoned = True

    def settled(self) -> None:
        """Take ``abandon()`` back: no write of this owner can still land, so ``release()`` may
        delete the lease again."""
        self._abandoned = False

    def _extend(self) -> tuple[bool, float]:
        """One renewal of every held lease at the server: (all still ours and live, send time)."""
        held = list(self._held)
        sent = time.monotonic()
        if not held:
            return False, sent  # nothing taken (or all released): nothing to renew
        result = self.collection.update_many(
            {"_id": {"$in": held}, "owner": self.owner, "$expr": _LIVE}, self._set_expiry()
        )
        if result.matched_count == len(held):
            self._confirmed(sent)
            return True, sent
        return False, sent

    def _mark_lost(self, reason: str) -> str:
        with self._state:
            if self._lost is None:
                self._lost = reason
            return self._lost

    def _taken_over(self) -> str:
        held = list(self._held)
        try:
            found = {d["_id"]: d for d in self.collection.find({"_id": {"$in": held}})}
        except PyMongoError:
            found = {}
        lost = []
        for name in held:
            holder = found.get(name, {})
            if holder.get("owner") and holder["owner"] != self.owner:
                until = holder.get("expires_at")
                lost.append(f"{name}: {holder['owner']} holds it until {until} (server time)")
            elif name not in found:
                lost.append(f"{name}: it expired")
        if not lost:
            lost.append(f"{self.name}: it expired")
        return (
            f"{self.name} is no longer held by this drain ({self.owner}): {'; '.join(lost)}. This try was "
            f"frozen or cut off from {self.where} for longer than the lease's {self.ttl:.0f}s ttl. "
            "Stopping before committing more offsets: everything committed so far was written, and "
            "the task's retry continues from there."
        )

    def renew(self) -> None:
        """The fencing check before an offset commit: extend the lease or raise ``LeaseLostError``.

        Succeeds only if this owner still holds an unexpired lease (checked and extended by the
        server, on its clock) and at least half the ttl is certain to remain (the latest confirmed
        renewal was sent less than ttl / 2 ago), so the lease outlasts the commit that follows.
        """
        if self._lost is not None:
            raise LeaseLostError(self._lost)
        ours, sent = self._extend()
        if not ours:
            raise LeaseLostError(self._mark_lost(self._taken_over()))
        now = time.monotonic()
        if self._valid_until - now < self.ttl / 2:
            raise LeaseLostError(
                f"{self.where} took {now - sent:.1f}s to confirm {self.name}, so less than half of "
                f"its {self.ttl:.0f}s ttl is certain to remain and the lease could expire before the "
                "offset commit lands; stopping before committing. Everything committed so far was "
                "written, and the task's retry continues from there once the server answers in time."
            )

    def _beat(self) -> None:
        interval = self.ttl / 3
        while not self._stop.wait(interval):
            try:
                # A renewal that cannot finish within the interval is of no use: try the next one.
                with pymongo.timeout(interval):
                    ours, _sent = self._extend()
            except PyMongoError as err:
                if self._stop.is_set():
                    return
                ours = True  # not known to be lost; the validity window below decides
                left = self._valid_until - time.monotonic()
                log.warning("Could not renew %s (%s); %.1fs of the lease left", self.name, _brief(err), left)
            if not ours:
                log.error("%s", self._mark_lost(self._taken_over()))
                return
            if time.monotonic() >= self._valid_until:
                reason = self._mark_lost(
                    f"{self.where} confirmed no renewal of {self.name} for {self.ttl:.0f}s (its ttl); "
                    "another drain may have taken it. Stopping before committing more offsets: "
                    "everything committed so far was written, and the task's retry continues from there."
                )
                log.error("%s", reason)
                return

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[DrainLease]:
        """Renew the lease from a daemon thread every ``ttl / 3`` while the block runs."""
        self._stop.clear()
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"lease-heartbeat {self.name}", daemon=True
        )
        self._heartbeat.start()
        try:
            yield self
        finally:
            self._stop.set()
            # Not waited for long: a renewal still in flight matches nothing once the lease is
            # released, and the thread is a daemon.
            self._heartbeat.join(1.0)

    @contextlib.contextmanager
    def held(self, wait: float) -> Iterator[DrainLease]:
        """Take the lease (waiting up to ``wait`` s), keep it renewed, release it on the way out."""
        self.acquire(wait)
        try:
            with self.heartbeat():
                yield self
        finally:
            self.release()

    def release(self) -> None:
        """Delete the leases this owner holds; another owner's lease is never touched.

        Best effort: when MongoDB does not answer within a few seconds the lease expires by
        itself after its ttl.
        """
        if self._abandoned:
            log.warning(
                "Leaving %s to expire within %.0fs instead of releasing it: a write of this try "
                "may still be in flight",
                self.name,
                self.ttl,
            )
            return
        held = list(self._held) or list(self.names)
        try:
            with pymongo.timeout(RELEASE_TIMEOUT):
                deleted = self.collection.delete_many(
                    {"_id": {"$in": held}, "owner": self.owner}
                ).deleted_count
        except PyMongoError as err:
            log.warning(
                "Could not release %s (%s); it expires by itself within %.0fs",
                self.name,
                _brief(err),
                self.ttl,
            )
            return
        if deleted:
            log.info("Released %s", self.name)
