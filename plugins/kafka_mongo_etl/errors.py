"""Errors the tasks raise; each message says what happened and what to do."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException


class EtlError(RuntimeError):
    """Base class for the ETL's own failures."""


class DeliveryError(EtlError):
    """Some records of a batch were not acknowledged by the broker."""

    def __init__(self, topic: str, failed: int, total: int, first_error: str) -> None:
        super().__init__(
            f"{failed} of {total} records were not delivered to topic {topic!r} "
            f"(first error: {first_error}); the task's retry re-sends the same records"
        )
        self.failed = failed
        self.total = total


class TopicNotFoundError(EtlError):
    """The topic to drain does not exist on the broker."""


class DrainBusyError(EtlError):
    """Another drain holds the lease for the same topic and consumer group."""


class LeaseLostError(EtlError):
    """This drain's lease expired and was taken over; it stops before committing more."""


class ConnectionProblem(EtlError):
    """Kafka or MongoDB could not be used through a connection; names it and what to check."""


class DeadLetterLimitError(AirflowFailException):
    """More records went to dead letters than the run allows.

    Not retried: the offsets of the dead letters are committed (they are safe in the
    dead-letter collection), so a retry would find nothing and hide the problem.
    """
