"""``kafka_mongo_etl.produce`` against a fake producer and a fake admin client: what is handed
over, what a full local queue, a failed delivery and a flush that runs out of time do, and how a
topic is created without a metadata request that names it. The integration tests produce to
the real broker (tests/integration/test_etl.py, test_outages.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from kafka_mongo_etl.errors import DeliveryError
from kafka_mongo_etl.produce import ensure_topic, produce_batch


class FakeProducer:
    """A producer with a local queue of ``capacity`` records (``BufferError`` when full).

    ``poll`` and ``flush`` settle what is queued, in order: a record whose number is in
    ``fail`` gets a failure report (with ``delivery.report.only.error`` a success reports
    nothing). ``stuck`` records are never settled by a flush (a broker that does not answer)
    until purged; purged records get ``_PURGE_QUEUE`` reports, as librdkafka gives them.
    """

    def __init__(self, capacity: int = 10_000, fail: frozenset[int] = frozenset(), stuck: int = 0) -> None:
        self.capacity = capacity
        self.fail = fail
        self.stuck = stuck
        self.queue: list[tuple[str, bytes, Callable[..., None]]] = []
        self.delivered: list[tuple[str, dict[str, Any]]] = []
        self.handed = 0
        self.buffer_errors = 0
        self.flushes = 0
        self.metadata_requests = 0

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        self.metadata_requests += 1
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None})})

    def produce(self, topic: str, value: bytes, key: str, on_delivery: Callable[..., None]) -> None:
        if len(self.queue) >= self.capacity:
            self.buffer_errors += 1
            raise BufferError("Local: Queue full")
        self.handed += 1
        self.queue.append((key, value, on_delivery))

    def _settle(self, leave: int = 0) -> int:
        settled, self.queue = self.queue[: len(self.queue) - leave], self.queue[len(self.queue) - leave :]
        for key, value, report in settled:
            record = json.loads(value)
            if record["num"] in self.fail:
                report(KafkaError(KafkaError._MSG_TIMED_OUT), None)
            else:
                self.delivered.append((key, record))
        return len(self.queue)

    def poll(self, timeout: float = 0) -> int:
        self._settle(leave=min(self.stuck, len(self.queue)))
        return 0

    def flush(self, timeout: float = -1) -> int:
        self.flushes += 1
        return self._settle(leave=min(self.stuck, len(self.queue)))

    def purge(self, in_queue: bool = True, in_flight: bool = True) -> None:
        # The fake's whole queue counts as in flight: only a purge of those drops it.
        if in_flight:
            for _key, _value, report in self.queue:
                report(KafkaError(KafkaError._PURGE_QUEUE), None)
            self.queue = []
            self.stuck = 0


def test_every_record_is_handed_once_keyed_by_batch_and_number_then_flushed_once() -> None:
    producer = FakeProducer()
    summary = produce_batch(producer, "orders", "b1", start=5, count=2500)  # type: ignore[arg-type]
    assert [key for key, _ in producer.delivered] == [f"b1/{n}" for n in range(5, 2505)]
    assert producer.delivered[0][1] == {"num": 5, "batch": "b1"}
    assert (summary.count, summary.first, summary.last) == (2500, 5, 2504)
    assert producer.flushes == 1 and producer.metadata_requests == 2


def test_a_full_local_queue_is_served_until_there_is_room_and_nothing_is_sent_twice() -> None:
    producer = FakeProducer(capacity=7)
    produce_batch(producer, "orders", "b1", start=0, count=100)  # type: ignore[arg-type]
    assert producer.buffer_errors > 0
    assert [record["num"] for _, record in producer.delivered] == list(range(100))
    assert producer.handed == 100


def test_the_first_delivery_failure_stops_the_batch_and_counts_every_record_not_acknowledged() -> None:
    # A queue of 10 settles at each BufferError: record 23 fails while 24.. are not handed yet.
    producer = FakeProducer(capacity=10, fail=frozenset({23}))
    with pytest.raises(DeliveryError) as raised:
        produce_batch(producer, "orders", "b1", start=0, count=1000, where="connection 'kafka_default'")  # type: ignore[arg-type]
    error = raised.value
    assert producer.handed < 1000, "stopped handing records over"
    acknowledged = len(producer.delivered)
    assert error.total == 1000 and error.acknowledged == acknowledged and error.failed == 1000 - acknowledged
    assert "23" not in {str(record["num"]) for _, record in producer.delivered}
    message = str(error)
    assert f"{1000 - acknowledged} of 1000 records were not delivered to topic 'orders'" in message
    assert (
        "through connection 'kafka_default'" in message and "stopped at the first delivery error" in message
    )
    assert "Message timed out" in message or "_MSG_TIMED_OUT" in message


def test_records_a_flush_could_not_settle_in_time_are_counted_as_not_delivered() -> None:
    producer = FakeProducer(stuck=3)
    with pytest.raises(DeliveryError, match=r"3 of 50 records .*first error: 3 still queued after 5s"):
        produce_batch(producer, "orders", "b1", start=0, count=50, flush_timeout=5)  # type: ignore[arg-type]
    assert len(producer.delivered) == 47


class FakeAdmin:
    """``describe_topics`` knows ``existing`` (a name -> partition count); ``create_topics`` may
    find the topic created meanwhile (``race``). A metadata request is an error here: on a
    broker with auto-creation on it would create the topic."""

    def __init__(self, existing: dict[str, int], race: bool = False) -> None:
        self.existing = existing
        self.race = race
        self.created: list[tuple[str, int]] = []

    def list_topics(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a metadata request naming the topic may create it")

    def poll(self, timeout: float = 0) -> int:
        return 0

    def describe_topics(self, topics: Any, request_timeout: float = 0) -> dict[str, Future[Any]]:
        result: dict[str, Future[Any]] = {}
        for name in topics.topic_names:
            future: Future[Any] = Future()
            if name in self.existing:
                future.set_result(SimpleNamespace(partitions=[None] * self.existing[name]))
            else:
                future.set_exception(KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)))
            result[name] = future
        return result

    def create_topics(self, topics: list[Any]) -> dict[str, Future[None]]:
        result: dict[str, Future[None]] = {}
        for new in topics:
            future: Future[None] = Future()
            if self.race:
                future.set_exception(KafkaException(KafkaError(KafkaError.TOPIC_ALREADY_EXISTS)))
            else:
                self.created.append((new.topic, new.num_partitions))
                future.set_result(None)
            result[new.topic] = future
        return result


def test_a_missing_topic_is_created_with_the_partitions_asked_for() -> None:
    admin = FakeAdmin({})
    assert ensure_topic(admin, "orders", partitions=3) is True  # type: ignore[arg-type]
    assert admin.created == [("orders", 3)]


def test_an_existing_topic_keeps_its_partition_count() -> None:
    admin = FakeAdmin({"orders": 2})
    assert ensure_topic(admin, "orders", partitions=6) is False  # type: ignore[arg-type]
    assert admin.created == []


def test_a_topic_created_meanwhile_by_another_producer_is_not_an_error() -> None:
    assert ensure_topic(FakeAdmin({}, race=True), "orders", partitions=3) is False  # type: ignore[arg-type]
