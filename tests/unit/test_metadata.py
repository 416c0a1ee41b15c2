"""``kafka_mongo_etl.metadata.topic_metadata`` against a fake client on a fake clock: which
errors it waits out, in what steps, and which it raises at once."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from fakes import FakeClock

from kafka_mongo_etl import metadata
from kafka_mongo_etl.metadata import topic_metadata

ANSWER = SimpleNamespace(topics={"orders": SimpleNamespace(error=None, partitions={0: None})})


class FakeClient:
    """``list_topics`` fails with ``errors`` in turn (each after waiting its timeout on the
    clock), then answers; ``poll`` runs ``on_poll`` (the client's error callback)."""

    def __init__(self, clock: FakeClock, errors: list[KafkaError], on_poll: Any = None) -> None:
        self.clock = clock
        self.errors = list(errors)
        self.on_poll = on_poll
        self.timeouts: list[float] = []
        self.polls = 0

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        assert topic == "orders", "asks for the one topic"
        self.timeouts.append(timeout)
        if self.errors:
            self.clock.advance(timeout)
            raise KafkaException(self.errors.pop(0))
        return ANSWER

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        if self.on_poll is not None:
            self.on_poll()
        return 0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(metadata, "time", fake)
    return fake


def test_an_unreachable_broker_is_asked_again_in_steps_of_at_most_a_second(clock: FakeClock) -> None:
    transport = KafkaError(KafkaError._TRANSPORT)
    client = FakeClient(clock, [transport, KafkaError(KafkaError._TIMED_OUT), transport])
    assert topic_metadata(client, "orders", timeout=15) is ANSWER
    assert client.timeouts == [1.0, 1.0, 1.0, 1.0] and client.polls == 3


def test_the_last_step_is_what_is_left_of_the_timeout_and_then_the_error_is_raised(clock: FakeClock) -> None:
    client = FakeClient(clock, [KafkaError(KafkaError._TRANSPORT)] * 10)
    with pytest.raises(KafkaException) as raised:
        topic_metadata(client, "orders", timeout=2.5)
    assert raised.value.args[0].code() == KafkaError._TRANSPORT
    assert client.timeouts == [1.0, 1.0, 0.5]


def test_an_error_that_waiting_cannot_cure_is_raised_at_once(clock: FakeClock) -> None:
    client = FakeClient(clock, [KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)])
    with pytest.raises(KafkaException) as raised:
        topic_metadata(client, "orders", timeout=15)
    assert raised.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert client.timeouts == [1.0] and client.polls == 0


def test_a_refused_login_reported_by_the_error_callback_ends_the_wait(clock: FakeClock) -> None:
    """The real reason of "transport failure" arrives through the error callback, served by poll."""

    class LoginRefused(Exception):
        pass

    def refuse() -> None:
        raise LoginRefused("SASL authentication failed")

    client = FakeClient(clock, [KafkaError(KafkaError._TRANSPORT)] * 10, on_poll=refuse)
    with pytest.raises(LoginRefused):
        topic_metadata(client, "orders", timeout=15)
    assert clock.now - 1000.0 == 1.0, "after one step, not the whole timeout"
