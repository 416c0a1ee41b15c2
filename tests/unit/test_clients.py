"""``kafka_mongo_etl.clients`` without a broker: the settings the guarantees rest on win over a
connection's extra, the error callback fails on what waiting cannot cure, and client errors
become a ``ConnectionProblem`` that names the connection by its label (never its credentials)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from kafka_mongo_etl import clients
from kafka_mongo_etl.clients import (
    CONSUMER_REQUIRED,
    PRODUCER_REQUIRED,
    EtlConsumerHook,
    EtlProducerHook,
    kafka_errors,
    kafka_label,
    on_client_error,
)
from kafka_mongo_etl.errors import ConnectionProblem

# A connection's extra that tries to switch off every guarantee, and tunes one setting.
HOSTILE_EXTRA = {
    "bootstrap.servers": "broker-a:9092,broker-b:9092",
    "enable.auto.commit": True,
    "enable.auto.offset.store": True,
    "isolation.level": "read_uncommitted",
    "auto.offset.reset": "latest",
    "enable.partition.eof": False,
    "enable.idempotence": False,
    "acks": 1,
    "group.id": "someone-else",
    "linger.ms": 5,
    "fetch.wait.max.ms": 7,
}


def test_a_consumer_keeps_manual_commits_read_committed_and_its_group_whatever_the_extra(monkeypatch) -> None:
    built: dict[str, Any] = {}
    monkeypatch.setattr(
        clients.KafkaConsumerHook, "_get_client", lambda self, config: built.update(config) or "consumer"
    )
    assert EtlConsumerHook("orders", "g.1")._get_client(dict(HOSTILE_EXTRA)) == "consumer"
    assert {name: built[name] for name in CONSUMER_REQUIRED} == CONSUMER_REQUIRED
    assert built["group.id"] == "g.1" and built["error_cb"] is on_client_error
    assert built["fetch.wait.max.ms"] == 7, "tuning is the connection's to change"
    assert built["bootstrap.servers"] == HOSTILE_EXTRA["bootstrap.servers"]


def test_a_producer_stays_idempotent_with_acks_all_whatever_the_extra(monkeypatch) -> None:
    built: dict[str, Any] = {}
    monkeypatch.setattr(clients, "Producer", lambda config: built.update(config) or "producer")
    assert EtlProducerHook(kafka_config_id="kafka_test")._get_client(dict(HOSTILE_EXTRA)) == "producer"
    assert (
        {name: built[name] for name in PRODUCER_REQUIRED}
        == PRODUCER_REQUIRED
        == {
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    assert built["linger.ms"] == 5 and built["delivery.report.only.error"] is True
    assert built["error_cb"] is on_client_error


@pytest.mark.parametrize(
    "code",
    [
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    ],
)
def test_the_error_callback_fails_on_a_refused_login_or_access(code: int) -> None:
    with pytest.raises(KafkaException) as raised:
        on_client_error(KafkaError(code))
    assert raised.value.args[0].code() == code


def test_the_error_callback_fails_on_a_fatal_error_and_only_logs_a_passing_one(caplog) -> None:
    with pytest.raises(KafkaException):
        on_client_error(KafkaError(KafkaError._FENCED, fatal=True))
    on_client_error(KafkaError(KafkaError._TRANSPORT))
    assert "Kafka client:" in caplog.text


@pytest.fixture
def kafka_test(monkeypatch: pytest.MonkeyPatch) -> str:
    """A Kafka connection whose extra holds a password that no error message may show."""
    extra = {"bootstrap.servers": "broker-a:9092", "sasl.password": "s3cr3t-pw"}
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_TEST", json.dumps({"conn_type": "kafka", "extra": extra}))
    return "kafka_test"


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (KafkaError._TRANSPORT, "no broker answered: check bootstrap.servers"),
        (KafkaError._WAIT_COORD, "no broker answered"),
        (KafkaError.SASL_AUTHENTICATION_FAILED, "the broker refused the client: check security.protocol"),
    ],
)
def test_a_client_error_names_the_connection_and_what_to_check_but_not_the_credentials(
    kafka_test: str, code: int, hint: str
) -> None:
    with pytest.raises(ConnectionProblem) as raised, kafka_errors(kafka_test):
        raise KafkaException(KafkaError(code))
    message = str(raised.value)
    assert message.startswith("Kafka connection 'kafka_test' (broker-a:9092): ") and hint in message
    assert "s3cr3t-pw" not in message
    assert isinstance(raised.value.__cause__, KafkaException)


def test_other_kafka_errors_pass_through_unchanged(kafka_test: str) -> None:
    error = KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
    with pytest.raises(KafkaException) as raised, kafka_errors(kafka_test):
        raise error
    assert raised.value is error


def test_a_connection_without_bootstrap_servers_says_how_to_set_them(kafka_test: str) -> None:
    with pytest.raises(
        ConnectionProblem, match=r"has no bootstrap.servers in its extra; set it, for example"
    ):
        with kafka_errors(kafka_test):
            raise ValueError("bootstrap.servers must be provided")
    with pytest.raises(ValueError, match="another problem"), kafka_errors(kafka_test):
        raise ValueError("another problem")


def test_the_label_names_the_connection_and_its_servers_never_the_rest_of_its_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extra = {"bootstrap.servers": "b1:9092,b2:9092", "sasl.username": "etl", "sasl.password": "s3cret"}
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_UNIT", json.dumps({"conn_type": "kafka", "extra": extra}))
    assert kafka_label("kafka_unit") == "Kafka connection 'kafka_unit' (b1:9092,b2:9092)"


def test_a_connection_without_servers_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_BARE", json.dumps({"conn_type": "kafka", "extra": {}}))
    assert kafka_label("kafka_bare") == "Kafka connection 'kafka_bare' (no bootstrap.servers)"


def test_librdkafka_accepts_every_consumer_and_producer_setting() -> None:
    """A misspelt or removed property fails at construction (no broker is contacted there)."""
    from confluent_kafka import Consumer, Producer

    settings = {**clients.CONSUMER_TUNING, **CONSUMER_REQUIRED, "group.id": "g.1"}
    consumer = Consumer({"bootstrap.servers": "127.0.0.1:1", **settings})
    consumer.close()
    Producer({"bootstrap.servers": "127.0.0.1:1", **clients.PRODUCER_TUNING, **PRODUCER_REQUIRED})


def test_the_consumer_fetches_again_promptly_unless_the_connection_says_otherwise(monkeypatch) -> None:
    """librdkafka's default fetch.queue.backoff.ms (1000) starved the drain of a large topic."""
    built: dict[str, Any] = {}
    monkeypatch.setattr(clients.KafkaConsumerHook, "_get_client", lambda self, config: built.update(config))
    EtlConsumerHook("orders", "g.1")._get_client({"bootstrap.servers": "b:9092"})
    assert built["fetch.queue.backoff.ms"] < 1000
    assert built["max.partition.fetch.bytes"] <= 1_048_576
    slower = {"bootstrap.servers": "b:9092", "fetch.queue.backoff.ms": 500}
    EtlConsumerHook("orders", "g.1")._get_client(slower)
    assert built["fetch.queue.backoff.ms"] == 500, "tuning is the connection's to change"
