"""The Kafka hooks' connection label: what every Kafka error message names (no broker needed)."""

from __future__ import annotations

import json

import pytest

from kafka_mongo_etl.clients import kafka_label


def test_the_label_names_the_connection_and_its_servers_never_the_rest_of_its_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extra = {"bootstrap.servers": "b1:9092,b2:9092", "sasl.username": "etl", "sasl.password": "s3cret"}
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_UNIT", json.dumps({"conn_type": "kafka", "extra": extra}))
    assert kafka_label("kafka_unit") == "Kafka connection 'kafka_unit' (b1:9092,b2:9092)"


def test_a_connection_without_servers_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_KAFKA_BARE", json.dumps({"conn_type": "kafka", "extra": {}}))
    assert kafka_label("kafka_bare") == "Kafka connection 'kafka_bare' (no bootstrap.servers)"
