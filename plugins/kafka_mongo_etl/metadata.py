"""Topic metadata that fails fast when the broker refuses the client."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException

# What list_topics reports while it cannot reach a broker, including when the broker has
# refused the login: the real reason only surfaces through the error callback.
_NOT_YET = (KafkaError._TRANSPORT, KafkaError._TIMED_OUT)


def topic_metadata(client: Any, topic: str, timeout: float) -> Any:
    """``client.list_topics(topic)`` in one-second steps, serving the error callback in between.

    A client whose ``error_cb`` raises on authentication errors (``clients.on_client_error``)
    then fails on a refused SASL login in about a second instead of after ``timeout`` seconds
    of "broker transport failure".
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            return client.list_topics(topic=topic, timeout=max(0.1, min(1.0, remaining)))
        except KafkaException as err:
            error = err.args[0] if err.args else None
            if not isinstance(error, KafkaError) or error.code() not in _NOT_YET:
                raise
            if time.monotonic() >= deadline:
                raise
        client.poll(0)
