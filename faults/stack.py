"""The services of the fault trials: Toxiproxy in front of a Kafka broker and a MongoDB-wire server.

The ETL reaches both only through their proxies (the connections from ``connections()``); the
trial's checks go round the proxies (``bootstrap_servers``, ``mongo_uri``), so a fault never
hides what is really in Kafka and MongoDB.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.kafka import KafkaBroker
from devstack.mongo import MongoWireServer
from devstack.process import free_port
from devstack.toxiproxy import Proxy, ToxiproxyServer
from faults.kinds import MESSAGE_TIMEOUT_MS, MONGO_TIMEOUT_MS, PRODUCER_QUEUE_MESSAGES
from trials.checks import Stack


@dataclass(frozen=True, kw_only=True)
class FaultStack(Stack):
    """The checks' addresses (``Stack``: round the proxies) and the proxies the ETL goes through."""

    toxiproxy: ToxiproxyServer
    kafka: Proxy
    mongo: Proxy

    def proxy(self, name: str) -> Proxy:
        return {"kafka": self.kafka, "mongo": self.mongo}[name]

    def connections(self) -> dict[str, dict[str, Any]]:
        """``kafka_default`` and ``mongo_default`` through the proxies, with short timeouts."""
        host, port = self.mongo.listen.rsplit(":", 1)
        return {
            "kafka_default": {
                "conn_type": "kafka",
                "description": "The fault trials' broker, through Toxiproxy.",
                "extra": {
                    "bootstrap.servers": self.kafka.listen,
                    "message.timeout.ms": MESSAGE_TIMEOUT_MS,
                    "queue.buffering.max.messages": PRODUCER_QUEUE_MESSAGES,
                    # Many small produce requests instead of one or two: a fault finds some records
                    # acknowledged and others still to send.
                    "batch.num.messages": 200,
                    # librdkafka's own log lines: errors only, no "Disconnected" per reset.
                    "log_level": 3,
                    "log.connection.close": False,
                },
            },
            "mongo_default": {
                "conn_type": "mongo",
                "description": "The fault trials' MongoDB-wire server, through Toxiproxy.",
                "host": host,
                "port": int(port),
                "extra": {
                    # The server names itself in `hello` (a one-member replica set); without this
                    # pymongo would connect to that address, round the proxy.
                    "directConnection": True,
                    "timeoutMS": MONGO_TIMEOUT_MS,
                    "serverSelectionTimeoutMS": 5_000,
                    "connectTimeoutMS": 5_000,
                },
            },
        }


@contextlib.contextmanager
def fault_stack(state_dir: Path, mongo: MongoWireServer | None = None) -> Iterator[FaultStack]:
    """Start Toxiproxy, a broker with a listener advertised as its proxy, and (unless ``mongo``
    is given) a MongoDB-wire server; stop what was started here on the way out."""
    toxiproxy = ToxiproxyServer(state_dir / "toxiproxy", port=free_port())
    kafka_proxy_port = free_port()
    broker = KafkaBroker(
        state_dir / "kafka",
        port=free_port(),
        controller_port=free_port(),
        proxied_port=free_port(),
        proxied_address=f"127.0.0.1:{kafka_proxy_port}",
    )
    own_mongo = mongo is None
    server = mongo or MongoWireServer(state_dir / "mongo", port=free_port())
    try:
        toxiproxy.start()
        broker.start()
        if own_mongo:
            server.start()
        kafka = toxiproxy.create_proxy("kafka", kafka_proxy_port, f"{broker.host}:{broker.proxied_port}")
        mongo_proxy = toxiproxy.create_proxy("mongo", free_port(), f"{server.host}:{server.port}")
        yield FaultStack(
            bootstrap_servers=broker.bootstrap_servers,
            mongo_uri=server.uri,
            toxiproxy=toxiproxy,
            kafka=kafka,
            mongo=mongo_proxy,
        )
    finally:
        if own_mongo:
            server.stop()
        broker.stop()
        toxiproxy.stop()
