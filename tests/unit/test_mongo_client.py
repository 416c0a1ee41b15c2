"""``EtlMongoHook``: the options it works out, the refusal of ``w: 0``, the connection's label and
the mapping of pymongo's errors, all without a server (pymongo connects only on first use).

The same client against a real server: ``tests/integration/test_faults.py``
(``test_the_mongodb_client_is_bounded_and_durable_by_default``) and ``test_outages.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from airflow.providers.mongo.hooks.mongo import MongoHook
from hypothesis import given
from hypothesis import strategies as st
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConfigurationError,
    DuplicateKeyError,
    ExecutionTimeout,
    InvalidOperation,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
    WriteConcernError,
)

from devstack.process import free_port
from kafka_mongo_etl.errors import ConnectionProblem
from kafka_mongo_etl.mongo_client import (
    MONGO_OPERATION_TIMEOUT_MS,
    MONGO_TIMEOUT_MS,
    EtlMongoHook,
    mongo_label,
)

CONN_ID = "mongo_unit"
SECRET = "s3cret-pw"


@pytest.fixture
def connection(monkeypatch: pytest.MonkeyPatch):
    """Sets ``AIRFLOW_CONN_MONGO_UNIT`` (with a login, to show it is never named) and builds the hook."""

    def make(extra: dict[str, Any], host: str = "db.example", port: int | None = 27017) -> EtlMongoHook:
        conn = {"conn_type": "mongo", "host": host, "login": "etl", "password": SECRET, "extra": extra}
        if port is not None:
            conn["port"] = port
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
        return EtlMongoHook(CONN_ID)

    return make


def test_what_the_extra_does_not_set_gets_a_bounded_durable_default(connection) -> None:
    hook = connection({"replicaSet": "rs0"})
    assert hook.extras == {
        "replicaSet": "rs0",
        "serverSelectionTimeoutMS": MONGO_TIMEOUT_MS,
        "connectTimeoutMS": MONGO_TIMEOUT_MS,
        "timeoutMS": MONGO_OPERATION_TIMEOUT_MS,
        "w": "majority",
        "journal": True,
    }
    # The provider's own get_conn builds the client without contacting a server.
    client = MongoHook.get_conn(hook)
    try:
        assert client.write_concern.document == {"w": "majority", "j": True}
        assert client.options.timeout == MONGO_OPERATION_TIMEOUT_MS / 1000
    finally:
        hook.close()


def test_the_extra_wins_whatever_the_case_of_its_option_names(connection) -> None:
    hook = connection({"W": 1, "TIMEOUTMS": 2500, "fsync": False, "serverselectiontimeoutms": 700})
    assert hook.extras == {
        "W": 1,
        "TIMEOUTMS": 2500,
        "fsync": False,
        "serverselectiontimeoutms": 700,
        "connectTimeoutMS": MONGO_TIMEOUT_MS,
    }
    client = MongoHook.get_conn(hook)
    try:
        assert client.write_concern.document == {"w": 1, "fsync": False}
        assert client.options.timeout == 2.5
    finally:
        hook.close()


@pytest.mark.parametrize("extra", [{"w": 0}, {"w": "0"}, {"W": 0}])
def test_unacknowledged_writes_are_refused_naming_the_connection_not_its_password(connection, extra) -> None:
    label = r"^MongoDB connection 'mongo_unit' \(db\.example:27017\)"
    with pytest.raises(ConnectionProblem, match=f"{label} sets w=0") as err:
        connection(extra)
    assert 'set "w": 1' in str(err.value) and SECRET not in str(err.value)


def test_the_label_names_the_connection_and_its_address_only(connection) -> None:
    assert connection({}).label == "MongoDB connection 'mongo_unit' (db.example:27017)"
    assert connection({}, port=None).label == "MongoDB connection 'mongo_unit' (db.example)"
    assert mongo_label("m", "h:1") == "MongoDB connection 'm' (h:1)"


def test_an_unreachable_server_fails_get_conn_and_leaves_nothing_open(connection) -> None:
    hook = connection({"serverSelectionTimeoutMS": 200}, host="127.0.0.1", port=free_port())
    unreachable = r"'mongo_unit' \(127\.0\.0\.1:\d+\): the server did not answer"
    with pytest.raises(ConnectionProblem, match=unreachable):
        hook.get_conn()
    assert hook.client is None


def test_leaving_the_block_closes_the_client_and_close_is_idempotent(connection) -> None:
    with connection({}) as hook:
        client = MongoHook.get_conn(hook)
    assert hook.client is None
    with pytest.raises(InvalidOperation):  # pymongo refuses a closed client
        client.admin.command("ping")
    hook.close()


def _write_concern_failure() -> BulkWriteError:
    return BulkWriteError(
        {"writeErrors": [], "writeConcernErrors": [{"code": 100, "errmsg": "Not enough data-bearing nodes"}]}
    )


MAPPED = [
    (ServerSelectionTimeoutError("no servers"), "the server did not answer"),
    (NetworkTimeout("timed out"), "an operation got no answer within the operation timeout (timed out)"),
    (AutoReconnect("closed"), "the connection failed mid-operation (AutoReconnect: closed)"),
    (_write_concern_failure(), "could not confirm the write concern (Not enough data-bearing nodes)"),
    (WriteConcernError("wc", 64, {"errmsg": "no majority"}), "could not confirm the write concern (no majo"),
    (BulkWriteError({"writeErrors": [{"code": 50}]}), "a write got no answer within the operation timeout"),
    (ExecutionTimeout("operation exceeded time limit", 50), "an operation ran out of time on the server"),
    (OperationFailure("Authentication failed.", 18), "authentication failed; check the connection's login"),
    (ConfigurationError(f"bad option {SECRET}"), "settings are not usable (ConfigurationError)"),
]


@pytest.mark.parametrize(("raised", "said"), MAPPED, ids=[type(raised).__name__ for raised, _ in MAPPED])
def test_errors_name_the_connection_and_what_to_check(connection, raised: Exception, said: str) -> None:
    hook = connection({})
    with pytest.raises(ConnectionProblem) as err, hook.errors():
        raise raised
    message = str(err.value)
    assert message.startswith(f"{hook.label}: ") and said in message, message
    assert err.value.__cause__ is raised and SECRET not in message


@pytest.mark.parametrize(
    "raised",
    [
        DuplicateKeyError("E11000 duplicate key", 11000),
        BulkWriteError({"writeErrors": [{"code": 121, "errmsg": "Document failed validation"}]}),
        OperationFailure("not authorized on admin", 8000),
        ValueError("not a MongoDB error"),
    ],
    ids=lambda raised: type(raised).__name__,
)
def test_errors_of_the_documents_or_the_code_pass_unchanged(connection, raised: Exception) -> None:
    with pytest.raises(type(raised)) as err, connection({}).errors():
        raise raised
    assert err.value is raised


NAMES = ("serverSelectionTimeoutMS", "connectTimeoutMS", "timeoutMS", "w", "journal")


@given(
    chosen=st.lists(
        st.sampled_from(NAMES).flatmap(lambda name: st.sampled_from([name, name.lower(), name.upper()])),
        unique_by=str.lower,
    )
)
def test_a_default_never_doubles_an_option_the_extra_spells_in_another_case(chosen: list[str]) -> None:
    """pymongo reads option names in any case; two spellings of one option would be ambiguous."""
    extra = {name: 1 for name in chosen}
    variable = f"AIRFLOW_CONN_{CONN_ID.upper()}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(variable, json.dumps({"conn_type": "mongo", "host": "db.example", "extra": extra}))
        options = EtlMongoHook(CONN_ID).extras
    assert sorted(name.lower() for name in options) == sorted(name.lower() for name in NAMES)
    assert {name: options[name] for name in chosen} == extra
