"""The fault kinds: what Toxiproxy does to which service, when, and for how long.

Each trial's plan is drawn from its seed before the trial starts, so a trial can be repeated.
A fault starts *mid-flight*: when the k-th bulk write to the target collection starts (MongoDB
faults, the broker cut) or once k records of the batch are on the topic (the produce reset). It
ends after ``hold`` seconds, or, with ``hold=None``, when the try it hit has ended.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

MONGO_LATENCY = "mongo-latency"
MONGO_RESET = "mongo-reset"
MONGO_BLACKHOLE = "mongo-blackhole"
MONGO_BANDWIDTH = "mongo-bandwidth"
KAFKA_CUT = "kafka-cut"
KAFKA_RESET_PRODUCE = "kafka-reset-produce"
FAULT_KINDS = (MONGO_LATENCY, MONGO_RESET, MONGO_BLACKHOLE, MONGO_BANDWIDTH, KAFKA_CUT, KAFKA_RESET_PRODUCE)

# The connections of every trial (faults/stack.py) use these, so a failing try fails in seconds.
MONGO_TIMEOUT_MS = 5_000
MESSAGE_TIMEOUT_MS = 5_000
# A small producer queue: the produce loop blocks on it soon after the broker goes away, so the
# first delivery error finds the loop still sending (and must stop it).
PRODUCER_QUEUE_MESSAGES = 500
# One drain write holds at most this many records: a trial's drain makes several writes.
BATCH_SIZE = 500
# A failing try that takes longer than this is a failure of the trial (a generous guard, not a
# speed claim: the table reports how long each failing try really took).
FAILING_TRY_BOUND = 120.0


@dataclass(frozen=True)
class FaultPlan:
    """One trial's fault.

    ``proxy``: ``mongo`` or ``kafka``. ``toxic``: Toxiproxy's toxic type with ``stream`` and
    ``attributes``; ``None`` cuts the service (the proxy is disabled: connections closed, new
    ones refused). ``after``: the fault starts when bulk write number ``after`` to the target
    starts, or (produce) once ``after`` records are on the topic. ``hold``: seconds the fault
    lasts; ``None``: until the try it hit has ended. The rest are the job's settings.
    """

    kind: str
    proxy: str
    toxic: str | None
    stream: str
    attributes: dict[str, Any] = field(default_factory=dict)
    after: int = 1
    hold: float | None = None
    count: int = 2_000
    lease_ttl: float = 3.0
    stall_timeout: float = 10.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        what = "cut" if self.toxic is None else f"{self.toxic} {self.stream} {self.attributes}"
        hold = "until the try ends" if self.hold is None else f"for {self.hold:.1f}s"
        start = (
            f"once {self.after} records are on the topic"
            if self.kind == KAFKA_RESET_PRODUCE
            else (f"at bulk write {self.after}")
        )
        return f"{self.proxy} {what}, {start}, {hold}"


def plan_for(kind: str, seed: int) -> FaultPlan:
    """The plan of a trial of ``kind`` with ``seed`` (the same seed, the same plan)."""
    rng = random.Random(f"{kind}:{seed}")
    count = rng.randint(1_500, 3_000)
    writes = count // BATCH_SIZE  # full writes of a drain: the fault starts before the last
    after = rng.randint(1, max(1, writes - 1))
    if kind == MONGO_LATENCY:
        # Every answer from MongoDB comes later than the lease's ttl: no renewal can prove the
        # lease is still held when the commit lands, so the try must stop before committing.
        ttl = 2.0
        latency = round(ttl * 1000 * rng.uniform(1.2, 2.0))
        return FaultPlan(
            kind, "mongo", "latency", "downstream", {"latency": latency}, after, None, count, ttl
        )
    if kind == MONGO_RESET:
        # Connections reset while a bulk write is on the wire; shorter holds than the operation
        # timeout are ridden out by pymongo's retryable writes, longer ones fail the try.
        hold = round(rng.uniform(0.3, 2.0 * MONGO_TIMEOUT_MS / 1000), 1)
        return FaultPlan(kind, "mongo", "reset_peer", "downstream", {"timeout": 0}, after, hold, count)
    if kind == MONGO_BLACKHOLE:
        # Nothing passes (and nothing is closed) until the try has failed on its operation timeout.
        stream = rng.choice(["upstream", "downstream"])
        return FaultPlan(kind, "mongo", "timeout", stream, {"timeout": 0}, after, None, count)
    if kind == MONGO_BANDWIDTH:
        # A bulk write of BATCH_SIZE records (~161 bytes each on the wire) needs 1.1-1.6 times the
        # lease's ttl to pass the proxy, and stays within the operation timeout; the heartbeat
        # renews on a connection of its own, so the lease holds through the slow write.
        ttl = 2.0
        rate = max(1, round(BATCH_SIZE * 0.161 / (ttl * rng.uniform(1.1, 1.6))))  # bytes per ms
        return FaultPlan(kind, "mongo", "bandwidth", "upstream", {"rate": rate}, after, None, count, ttl)
    if kind == KAFKA_CUT:
        # The broker unreachable for longer than the stall timeout, then back: up to 70 s, so
        # that some cuts outlast librdkafka's 45 s wait for the group coordinator
        # (session.timeout.ms) that a synchronous offset commit does while the broker is away.
        stall = 5.0
        hold = round(rng.uniform(stall + 2.0, 70.0), 1)
        return FaultPlan(kind, "kafka", None, "", {}, after, hold, count, stall_timeout=stall)
    if kind == KAFKA_RESET_PRODUCE:
        # Every connection to the broker reset for longer than the records' delivery timeout.
        # The batch is large enough that the loop is still sending (blocked on the full local
        # queue) when the first record's delivery times out.
        count = rng.randint(3_000, 4_000)
        stream = rng.choice(["upstream", "downstream"])
        hold = round(MESSAGE_TIMEOUT_MS / 1000 + rng.uniform(2.0, 6.0), 1)
        return FaultPlan(
            kind, "kafka", "reset_peer", stream, {"timeout": 0}, rng.randint(1, 300), hold, count
        )
    raise ValueError(f"unknown fault kind {kind!r}; choose one of {', '.join(FAULT_KINDS)}")
