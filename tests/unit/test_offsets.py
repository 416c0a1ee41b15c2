"""``offsets``: the lag rule, topic existence, and the readers' retries, against tiny fakes of the
confluent-kafka ``Consumer`` and ``AdminClient`` (the real clients: tests/integration)."""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec
from hypothesis import given
from hypothesis import strategies as st

from kafka_mongo_etl import offsets
from kafka_mongo_etl.errors import TopicNotFoundError
from kafka_mongo_etl.offsets import PartitionOffsets

TOPIC = "orders"


@dataclass
class FakeConsumer:
    """``list_topics``, ``get_watermark_offsets`` and ``committed`` over fixed answers.

    ``logs`` is ``{partition: (low, high)}``; ``group`` the group's commits (absent: none);
    ``failures`` errors to raise, in order, before answering (``"watermarks"`` / ``"committed"``).
    """

    logs: dict[int, tuple[int, int]]
    group: dict[int, int] = field(default_factory=dict)
    topic_error: Any = None
    failures: dict[str, list[int]] = field(default_factory=dict)
    partition_error: dict[int, KafkaError] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def list_topics(self, topic: str, timeout: float) -> Any:
        found = SimpleNamespace(error=self.topic_error, partitions={p: None for p in self.logs})
        return SimpleNamespace(topics={TOPIC: found} if topic == TOPIC and self.logs is not None else {})

    def poll(self, timeout: float) -> None:
        return None

    def _fail(self, call: str) -> None:
        queued = self.failures.get(call, [])
        if queued:
            raise KafkaException(KafkaError(queued.pop(0)))

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float, cached: bool = True
    ) -> tuple[int, int]:
        self.calls.append(("watermarks", tp.partition, cached))
        self._fail("watermarks")
        return self.logs[tp.partition]

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[Any]:
        """Like librdkafka's answer: one ``TopicPartition``-shaped value per partition, with its error."""
        self.calls.append(("committed", [tp.partition for tp in partitions]))
        self._fail("committed")
        return [
            SimpleNamespace(
                topic=tp.topic,
                partition=tp.partition,
                offset=self.group.get(tp.partition, OFFSET_INVALID),
                error=self.partition_error.get(tp.partition),
            )
            for tp in partitions
        ]


def done(value: Any = None, error: BaseException | None = None) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
    return future


@dataclass
class FakeAdmin:
    """``describe_topics``, ``list_consumer_group_offsets`` and ``list_offsets`` over fixed answers
    (``logs`` ``None``: the broker does not know the topic)."""

    logs: dict[int, tuple[int, int]] | None
    group: dict[int, int] = field(default_factory=dict)

    def poll(self, timeout: float) -> None:
        return None

    def describe_topics(self, topics: Any, request_timeout: float) -> dict[str, Any]:
        if self.logs is None:
            unknown = KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
            return {TOPIC: done(error=unknown)}
        partitions = [SimpleNamespace(id=p) for p in self.logs]
        return {TOPIC: done(SimpleNamespace(name=TOPIC, partitions=partitions))}

    def list_consumer_group_offsets(self, groups: list[Any], request_timeout: float) -> dict[str, Any]:
        (group,) = groups
        found = [
            TopicPartition(tp.topic, tp.partition, self.group.get(tp.partition, OFFSET_INVALID))
            for tp in group.topic_partitions
        ]
        return {group.group_id: done(SimpleNamespace(topic_partitions=found))}

    def list_offsets(self, specs: dict[TopicPartition, Any], request_timeout: float) -> dict[Any, Any]:
        assert self.logs is not None
        latest = type(OffsetSpec.latest())
        return {
            tp: done(SimpleNamespace(offset=self.logs[tp.partition][int(isinstance(spec, latest))]))
            for tp, spec in specs.items()
        }


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch) -> None:
    """The readers pause between attempts; the fakes answer at once."""
    monkeypatch.setattr(offsets.time, "sleep", lambda _seconds: None)


# --- the rule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "committed", "expected"),
    [
        (0, 50, 40, 10),  # committed inside the log
        (5, 50, None, 45),  # no commit: everything still on the partition
        (0, 50, 50, 0),  # caught up
        (20, 30, 10, 10),  # committed below the log start (retention): only what is left
        (0, 5, 9, 0),  # committed above the end (a truncated log): nothing to read
        (0, 0, None, 0),  # an empty partition
    ],
)
def test_lag_is_high_minus_the_later_of_committed_and_low(low, high, committed, expected) -> None:
    assert offsets.lag(low, high, committed) == expected
    assert PartitionOffsets(0, low, high, committed).lag == expected


@given(
    low=st.integers(0, 1000),
    size=st.integers(0, 1000),
    committed=st.one_of(st.none(), st.integers(0, 2500)),
)
def test_lag_counts_the_offsets_the_next_drain_reads(low: int, size: int, committed: int | None) -> None:
    high = low + size
    start = low if committed is None else committed
    assert offsets.lag(low, high, committed) == len([o for o in range(low, high) if o >= start])


def test_librdkafkas_negative_offsets_mean_no_commit() -> None:
    assert offsets.NO_COMMIT == OFFSET_INVALID == -1001
    assert offsets.committed_or_none(OFFSET_INVALID) is None
    assert offsets.committed_or_none(-1) is None
    assert offsets.committed_or_none(0) == 0
    assert offsets.lag(3, 10, OFFSET_INVALID) == 7


def test_total_lag_and_records_sum_the_partitions() -> None:
    found = {0: PartitionOffsets(0, 0, 50, 40), 1: PartitionOffsets(1, 5, 50, None)}
    assert offsets.total_lag(found) == 55
    assert [p.records for p in found.values()] == [50, 45]


# --- topic existence -------------------------------------------------------------------------


def test_partitions_are_sorted_and_an_unknown_topic_has_none() -> None:
    consumer = FakeConsumer({2: (0, 1), 0: (0, 1), 1: (0, 1)})
    assert offsets.topic_partitions(consumer, TOPIC, 1) == [0, 1, 2]
    assert offsets.partitions_of(consumer, TOPIC, 1) == [0, 1, 2]
    assert offsets.topic_partitions(consumer, "missing", 1) == []


def test_an_unknown_topic_is_one_error_that_names_it() -> None:
    with pytest.raises(TopicNotFoundError, match="topic 'missing' does not exist on the broker"):
        offsets.partitions_of(FakeConsumer({0: (0, 1)}), "missing", 1)
    errored = FakeConsumer({0: (0, 1)}, topic_error=KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
    assert offsets.topic_partitions(errored, TOPIC, 1) == []
    with pytest.raises(TopicNotFoundError, match="produce to it first"):
        offsets.partitions_of(errored, TOPIC, 1)


def test_describe_topic_answers_none_for_an_unknown_topic() -> None:
    assert offsets.describe_topic(FakeAdmin(None), TOPIC, 1) is None
    described = offsets.describe_topic(FakeAdmin({0: (0, 1), 1: (0, 1)}), TOPIC, 1)
    assert described is not None and [p.id for p in described.partitions] == [0, 1]


# --- through a consumer ----------------------------------------------------------------------


def test_watermarks_are_read_from_the_leaders_not_the_cache() -> None:
    consumer = FakeConsumer({0: (0, 10), 1: (4, 7)})
    assert offsets.watermarks(consumer, TOPIC, None, 5) == {0: (0, 10), 1: (4, 7)}
    assert offsets.watermarks(consumer, TOPIC, [1], 5) == {1: (4, 7)}
    assert all(cached is False for _, _, cached in consumer.calls)


def test_watermarks_wait_while_a_leader_is_elected() -> None:
    moving = [KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE]
    consumer = FakeConsumer({0: (0, 10)}, failures={"watermarks": moving})
    assert offsets.watermarks(consumer, TOPIC, [0], 5) == {0: (0, 10)}
    assert len(consumer.calls) == 3


def test_watermarks_raise_what_no_wait_cures() -> None:
    consumer = FakeConsumer({0: (0, 10)}, failures={"watermarks": [KafkaError.TOPIC_AUTHORIZATION_FAILED]})
    with pytest.raises(KafkaException):
        offsets.watermarks(consumer, TOPIC, [0], 5)
    assert len(consumer.calls) == 1


def test_watermarks_give_up_when_the_time_is_spent() -> None:
    consumer = FakeConsumer({0: (0, 10)}, failures={"watermarks": [KafkaError.NOT_LEADER_FOR_PARTITION]})
    with pytest.raises(KafkaException):
        offsets.watermarks(consumer, TOPIC, [0], 0)


def test_committed_maps_no_commit_to_none() -> None:
    consumer = FakeConsumer({0: (0, 10), 1: (0, 10)}, group={0: 7})
    assert offsets.committed(consumer, TOPIC, [0, 1], 5) == {0: 7, 1: None}
    assert offsets.committed(consumer, TOPIC, None, 5) == {0: 7, 1: None}
    assert offsets.committed(consumer, TOPIC, [], 5) == {}


def test_committed_waits_while_the_coordinator_loads() -> None:
    loading = [KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.NOT_COORDINATOR]
    consumer = FakeConsumer({0: (0, 10)}, group={0: 3}, failures={"committed": loading})
    assert offsets.committed(consumer, TOPIC, [0], 5) == {0: 3}
    assert len(consumer.calls) == 3


def test_an_error_on_one_partition_is_raised() -> None:
    refused = KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED)
    consumer = FakeConsumer({0: (0, 10), 1: (0, 10)}, partition_error={1: refused})
    with pytest.raises(KafkaException) as raised:
        offsets.committed(consumer, TOPIC, [0, 1], 5)
    assert raised.value.args[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    # The raw reader leaves it on the partition for the caller.
    raw = offsets.committed_offsets(consumer, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)], 5)
    assert [(tp.offset, tp.error) for tp in raw] == [(OFFSET_INVALID, None), (OFFSET_INVALID, refused)]


def test_partition_offsets_read_watermarks_then_commits() -> None:
    consumer = FakeConsumer({0: (0, 10), 1: (20, 30)}, group={0: 4, 1: 10})
    found = offsets.partition_offsets(consumer, TOPIC, 5)
    assert found == {0: PartitionOffsets(0, 0, 10, 4), 1: PartitionOffsets(1, 20, 30, 10)}
    assert offsets.total_lag(found) == 6 + 10
    assert [call[0] for call in consumer.calls] == ["watermarks", "watermarks", "committed"]
    assert offsets.partition_offsets(consumer, "missing", 5) == {}


def test_records_on_sums_what_each_partition_holds() -> None:
    consumer = FakeConsumer({0: (0, 10), 1: (20, 30)})
    assert offsets.records_on(consumer, TOPIC, 5) == 20
    assert offsets.records_on(consumer, "missing", 5) == 0


# --- through an admin client -----------------------------------------------------------------


def test_group_offsets_through_the_admin_client() -> None:
    admin = FakeAdmin({1: (5, 50), 0: (0, 50)}, group={0: 40})
    assert offsets.group_offsets(admin, TOPIC, "g", 5) == {
        0: PartitionOffsets(0, 0, 50, 40),
        1: PartitionOffsets(1, 5, 50, None),
    }


def test_group_offsets_of_an_unknown_topic_say_so() -> None:
    with pytest.raises(TopicNotFoundError, match="topic 'orders' does not exist"):
        offsets.group_offsets(FakeAdmin(None), TOPIC, "g", 5)
