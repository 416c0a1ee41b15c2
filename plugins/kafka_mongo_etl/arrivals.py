"""A trigger that fires when records arrive on a topic that a consumer group has not loaded yet.

It backs the ``AssetWatcher`` of the event-driven ``kafka_to_mongo_on_arrival`` DAG. Every
``poll_interval`` seconds it compares the topic's high watermarks with the offsets the drain's
consumer group has committed, the way the drain reads them (``get_watermark_offsets``,
``committed``) from a consumer that is never assigned or subscribed and has auto-commit off: it
never joins the group, never consumes, never commits, so the offsets ``consume`` relies on are
moved by ``consume`` alone.

Why not the Kafka provider's triggers: ``AwaitMessageTrigger`` consumes in a group of its own
(from the connection's ``group.id``) and fires once per matching message, then must be
restarted; ``KafkaSharedStreamTrigger`` fires one event per message and commits its own group's
offsets (and refuses a connection without ``enable.auto.commit=false``); the message-queue
trigger needs ``apache-airflow-providers-common-messaging``, which is not installed. Watching
the lag fires once for many records and says how many wait, which is what a drain needs.

When it fires: whenever some partition holds records the group has not committed (lag > 0)
*and* either

- a high watermark with records waiting moved past the one of the previous event (records
  arrived), or
- nothing has drained the lag for ``quiet_interval`` seconds: the group's committed offsets did
  not move and no event was fired in that time (records a failed run left behind; without this
  they would wait for the next arrival).

So a burst of records makes one event per poll at most, a quiet topic none, records that arrive
while a drain runs (past its snapshot) make the next event, hence the next run, and a drain
that is making progress (its commits move) is never doubled by an event. While nothing drains
the lag, the quiet events back off (``quiet_interval``, twice that, ... up to
``max_quiet_interval``) until a commit moves again: a run that keeps failing on the same
records (a retention gap that needs a decision) is retried ever more rarely, not every minute.
After a restart of the triggerer the first poll fires if anything waits, so nothing is left
behind by a lost event.

What an event does in Airflow: it queues the DAG's asset (one ``AssetDagRunQueue`` row per
asset and DAG), and the scheduler makes *one* run of everything queued. A DAG at its
``max_active_runs`` gets no new run until one ends, so events during a run (or its retries)
coalesce into the single run that follows it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicLag:
    """Per partition: the high watermark, how many records the group's next drain reads
    (``offsets.lag``), and the group's committed offset (``None`` or absent: none yet)."""

    high: dict[int, int]
    pending: dict[int, int]
    committed: dict[int, int | None] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.pending.values())

    def moved_past(self, previous: dict[int, int]) -> bool:
        """Whether a partition with pending records has a higher watermark than in ``previous``."""
        return any(self.high[p] > previous.get(p, -1) for p, count in self.pending.items() if count > 0)


def topic_lag(consumer: Any, topic: str, timeout: float) -> TopicLag:
    """The lag on ``topic`` of ``consumer``'s group, read without joining the group or committing.

    ``consumer`` is never assigned or subscribed, and has auto-commit off: ``committed()`` only
    asks the group coordinator for the offsets, ``get_watermark_offsets`` the partition leaders
    (``offsets.partition_offsets``). A topic that does not exist yet has nothing waiting.
    """
    from kafka_mongo_etl.offsets import partition_offsets

    found = partition_offsets(consumer, topic, timeout)
    return TopicLag(
        high={p: o.high for p, o in found.items()},
        pending={p: o.lag for p, o in found.items()},
        committed={p: o.committed for p, o in found.items()},
    )


ARRIVED = "records arrived"
LEFT_BEHIND = "records left behind"


@dataclass
class Coalescer:
    """Decides, poll after poll, whether the lag deserves an event (see the module's docstring).

    ``now`` is a monotonic clock in seconds; call ``fired`` after each event.
    """

    quiet_interval: float
    max_quiet_interval: float
    fired_high: dict[int, int] = field(default_factory=dict)
    committed: dict[int, int] | None = None
    # The last time something happened to the lag: an event, or committed offsets that moved.
    last_activity: float = 0.0
    # Events fired on a quiet lag since the committed offsets last moved (for the back-off).
    quiet_events: int = 0

    def reason(self, lag: TopicLag, now: float) -> str | None:
        """Why to fire an event for ``lag`` now (``ARRIVED``, ``LEFT_BEHIND``), or ``None``."""
        if self.committed is None or lag.committed != self.committed:
            # The first look, or a drain committed since the last one: it is draining.
            self.committed = dict(lag.committed)
            self.last_activity = now
            self.quiet_events = 0
        if not lag.total:
            return None
        if lag.moved_past(self.fired_high):
            return ARRIVED
        wait = min(self.quiet_interval * 2**self.quiet_events, self.max_quiet_interval)
        return LEFT_BEHIND if now - self.last_activity >= wait else None

    def fired(self, lag: TopicLag, reason: str, now: float) -> None:
        self.fired_high = dict(lag.high)
        self.last_activity = now
        if reason == LEFT_BEHIND:
            self.quiet_events += 1


class NewRecordsTrigger(BaseEventTrigger):
    """Fire when ``topic`` holds records that ``group_id`` has not committed, and either more
    arrived or nothing has drained them for a while.

    :param topic: the topic to watch.
    :param group_id: the consumer group of the drain the event starts (its lag is what is watched).
    :param kafka_conn_id: the Kafka connection.
    :param poll_interval: seconds between two looks at the lag; the longest an arrival waits.
    :param timeout: seconds each request to the broker may take.
    :param quiet_interval: seconds a lag may stay undrained (no commit, no event) before an event
        fires for it; doubled after each such event while nothing drains, up to
        ``max_quiet_interval``. Longer than a drain's pause between two commits (a batch write,
        the stall timeout), so a working drain is never doubled.
    """

    def __init__(
        self,
        *,
        topic: str,
        group_id: str,
        kafka_conn_id: str = "kafka_default",
        poll_interval: float = 5.0,
        timeout: float = 15.0,
        quiet_interval: float = 120.0,
        max_quiet_interval: float = 3600.0,
    ) -> None:
        super().__init__()
        self.topic = topic
        self.group_id = group_id
        self.kafka_conn_id = kafka_conn_id
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.quiet_interval = quiet_interval
        self.max_quiet_interval = max_quiet_interval
        self._consumer: Any = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "topic": self.topic,
                "group_id": self.group_id,
                "kafka_conn_id": self.kafka_conn_id,
                "poll_interval": self.poll_interval,
                "timeout": self.timeout,
                "quiet_interval": self.quiet_interval,
                "max_quiet_interval": self.max_quiet_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from asgiref.sync import sync_to_async
        from confluent_kafka import KafkaException

        from kafka_mongo_etl.clients import EtlConsumerHook

        hook = EtlConsumerHook(self.topic, self.group_id, self.kafka_conn_id)
        self._consumer = await sync_to_async(lambda: hook.get_conn)()
        lag_now = sync_to_async(topic_lag)
        coalescer = Coalescer(self.quiet_interval, self.max_quiet_interval)
        log.info("Watching %s for records group %s has not loaded", self.topic, self.group_id)
        try:
            while True:
                try:
                    lag = await lag_now(self._consumer, self.topic, self.timeout)
                except KafkaException as err:
                    # A watcher outlives broker restarts: say so, and look again at the next poll.
                    log.warning("Could not read the lag of %s (%s); trying again", self.topic, err)
                    await asyncio.sleep(self.poll_interval)
                    continue
                now = time.monotonic()
                reason = coalescer.reason(lag, now)
                if reason is not None:
                    coalescer.fired(lag, reason, now)
                    log.info(
                        "%s records wait on %s for group %s (%s)",
                        lag.total,
                        self.topic,
                        self.group_id,
                        reason,
                    )
                    yield TriggerEvent(
                        {
                            "topic": self.topic,
                            "group_id": self.group_id,
                            "pending": lag.total,
                            "reason": reason,
                            "high_watermarks": {str(p): h for p, h in sorted(lag.high.items())},
                        }
                    )
                await asyncio.sleep(self.poll_interval)
        finally:
            await self.cleanup()

    async def cleanup(self) -> None:
        """Close the consumer (it holds no assignment, and auto-commit is off: nothing is committed)."""
        from asgiref.sync import sync_to_async

        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await sync_to_async(consumer.close)()
