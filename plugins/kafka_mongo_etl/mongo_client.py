"""The MongoDB client from the provider's hook, with the settings this ETL depends on.

``EtlMongoHook`` is to MongoDB what ``clients.py``'s hooks are to Kafka: it reads the
connection once (the provider's ``MongoHook``), works out the client's options from its extra,
and owns everything the ETL needs around the client: the timeouts, the write concern (and the
refusal of ``w: 0``), the first ``ping``, the connection's label in messages, a bounded close and
the mapping of pymongo's errors to ``ConnectionProblem``::

    with EtlMongoHook("mongo_default") as hook:
        client = hook.get_conn()  # has answered ping
        with hook.errors():
            client.db.collection.bulk_write(...)

What the extra sets comes first: a connection may lower the write concern (``"w": 1``,
``"journal": false``) or change a timeout knowingly; only ``w: 0`` is refused.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pymongo
from airflow.providers.mongo.hooks.mongo import MongoHook
from pymongo import MongoClient
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    OperationFailure,
    ServerSelectionTimeoutError,
    WriteConcernError,
)

from kafka_mongo_etl.errors import ConnectionProblem

log = logging.getLogger(__name__)

# Server selection and connect: an unreachable server fails the task in seconds.
MONGO_TIMEOUT_MS = 10_000
# Every MongoDB operation (pymongo's timeoutMS: the whole bulk write, retries included) is
# bounded by this unless the connection's extra sets its own: several times what a 5,000-record
# batch takes on the slow MongoDB-wire server here, and far below the task's execution timeout.
MONGO_OPERATION_TIMEOUT_MS = 20_000
MONGO_CLOSE_TIMEOUT = 2.0
# Acknowledged by a majority of the replica set and journaled before an offset is committed: a
# failover cannot roll back a write whose offset is committed (w:1 could, and no retry would
# re-read it). A connection may lower it in its extra ("w": 1, "journal": false) knowingly.
MONGO_WRITE_CONCERN: dict[str, Any] = {"w": "majority", "journal": True}

_UNACKNOWLEDGED = "Nothing was committed for the batch it was writing: the task's retry reads it again."


def _has_option(extras: dict[str, Any], *names: str) -> bool:
    """Whether ``extras`` sets any of ``names``; pymongo reads option names case-insensitively,
    and so does this check."""
    wanted = {name.lower() for name in names}
    return any(key.lower() in wanted for key in extras)


def _option(extras: dict[str, Any], name: str) -> Any:
    """The value ``extras`` gives option ``name`` in any case (``None``: not set)."""
    return next((value for key, value in extras.items() if key.lower() == name.lower()), None)


def mongo_label(mongo_conn_id: str, address: str) -> str:
    """How messages name a MongoDB connection: its id and address, never its credentials."""
    return f"MongoDB connection {mongo_conn_id!r} ({address})"


class EtlMongoHook(MongoHook):
    """A MongoDB client from the connection, bounded in time and durable by default.

    What the connection's extra does not set gets a default: server selection and connect
    timeouts of 10 s, an operation timeout (``timeoutMS``) of 20 s, so a server that stops
    answering mid-write fails the task instead of hanging until its execution timeout, and
    write concern ``majority`` with journal. Raises ``ConnectionProblem`` when the extra sets an
    unacknowledged write concern (``w: 0``): offsets are committed only after acknowledged writes.
    """

    def __init__(self, mongo_conn_id: str = MongoHook.default_conn_name) -> None:
        super().__init__(mongo_conn_id=mongo_conn_id)
        host, port = self.connection.host, self.connection.port
        self.address = f"{host}:{port}" if port else str(host)
        self.label = mongo_label(mongo_conn_id, self.address)
        self._apply_defaults()

    def _apply_defaults(self) -> None:
        extras = self.extras
        for name in ("serverSelectionTimeoutMS", "connectTimeoutMS"):
            if not _has_option(extras, name):
                extras[name] = MONGO_TIMEOUT_MS
        if not _has_option(extras, "timeoutMS"):
            extras["timeoutMS"] = MONGO_OPERATION_TIMEOUT_MS
        w = _option(extras, "w")
        if str(w) == "0":
            raise ConnectionProblem(
                f"{self.label} sets w=0 (unacknowledged writes) in its extra: offsets are committed "
                'only after MongoDB acknowledged the write, so remove it (the default is "majority") '
                'or set "w": 1'
            )
        if w is None:
            extras["w"] = MONGO_WRITE_CONCERN["w"]
        if not _has_option(extras, "journal", "fsync"):
            extras["journal"] = MONGO_WRITE_CONCERN["journal"]

    def get_conn(self) -> MongoClient:
        """The client, after it answered ``ping`` (cached: later calls return the same client).

        Raises ``ConnectionProblem`` when the server does not answer within the server-selection
        timeout, refuses the login or the settings are not usable; the client is then closed.
        """
        if self.client is not None:
            return self.client
        with self.errors():
            client = super().get_conn()
            try:
                # With timeoutMS set, pymongo waits that long for a server to select; the first
                # contact keeps the shorter server-selection bound: an unreachable server fails fast.
                with pymongo.timeout(float(_option(self.extras, "serverSelectionTimeoutMS")) / 1000):
                    client.admin.command("ping")
            except BaseException:
                self.close()
                raise
        log.info(
            "%s: write concern %s, operation timeout %s s",
            self.label,
            client.write_concern.document,
            client.options.timeout,
        )
        return client

    def close(self) -> None:
        """Close the client, if one was made, within ``MONGO_CLOSE_TIMEOUT`` seconds.

        Closing sends ``endSessions``, which waits without any timeout for a server that stopped
        answering (a stuck disk, a black-holed network); the bound keeps a failing task from
        hanging there.
        """
        client, self.client = self.client, None
        if client is not None:
            with pymongo.timeout(MONGO_CLOSE_TIMEOUT):
                client.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Name the connection and its address (never its credentials) when MongoDB cannot be used.

        An unreachable server, an operation that got no answer within the operation timeout, a
        connection that broke mid-operation, a write concern the server could not satisfy and a
        refused login each become a ``ConnectionProblem`` that says what to check; other errors
        pass unchanged.
        """
        with _mongo_errors(self.label):
            yield


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0][:300] if str(err) else type(err).__name__


@contextlib.contextmanager
def _mongo_errors(label: str) -> Iterator[None]:
    """``EtlMongoHook.errors``, for the connection named by ``label``."""
    try:
        yield
    except ServerSelectionTimeoutError as err:
        raise ConnectionProblem(
            f"{label}: the server did not answer; check the host, port and extra of the connection "
            f"and that the server runs ({type(err).__name__})"
        ) from err
    except (BulkWriteError, WriteConcernError) as err:
        details = getattr(err, "details", None) or {}
        concern_errors = details.get("writeConcernErrors") or (
            [details] if isinstance(err, WriteConcernError) else []
        )
        if err.timeout:
            raise ConnectionProblem(
                f"{label}: a write got no answer within the operation timeout ({_first_line(err)}). "
                f"{_UNACKNOWLEDGED} Raise timeoutMS in the connection's extra if the server is only slow."
            ) from err
        if not concern_errors:
            raise
        reason = concern_errors[0].get("errmsg", _first_line(err))
        raise ConnectionProblem(
            f"{label}: the server could not confirm the write concern ({reason}). {_UNACKNOWLEDGED} "
            'If the deployment cannot acknowledge "majority" (a standalone server), set "w": 1 in the '
            "connection's extra, knowing that a failover may then roll back committed writes."
        ) from err
    except ConnectionFailure as err:
        if err.timeout:
            raise ConnectionProblem(
                f"{label}: an operation got no answer within the operation timeout "
                f"({_first_line(err)}). {_UNACKNOWLEDGED} Check the server's load and the network; "
                "raise timeoutMS in the connection's extra if the server is only slow."
            ) from err
        raise ConnectionProblem(
            f"{label}: the connection failed mid-operation ({type(err).__name__}: {_first_line(err)}). "
            f"{_UNACKNOWLEDGED} Check the server and the network."
        ) from err
    except ConfigurationError as err:
        raise ConnectionProblem(
            # The message is not quoted: it may echo a value of the extra.
            f"{label}: the connection's settings are not usable ({type(err).__name__}); check its "
            "host, port and extra"
        ) from err
    except OperationFailure as err:
        if err.timeout:
            raise ConnectionProblem(
                f"{label}: an operation ran out of time on the server ({_first_line(err)}). "
                f"{_UNACKNOWLEDGED} Raise timeoutMS in the connection's extra if the server is only slow."
            ) from err
        if err.code not in (13, 18):  # Unauthorized, AuthenticationFailed
            raise
        raise ConnectionProblem(
            f"{label}: authentication failed; check the connection's login, password and authSource"
        ) from err
