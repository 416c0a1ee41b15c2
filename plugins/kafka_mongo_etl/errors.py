"""Errors the tasks raise; each message says what happened and what to do."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException


class EtlError(RuntimeError):
    """Base class for the ETL's own failures."""


class DeliveryError(EtlError):
    """Some records of a batch were not acknowledged by the broker.

    ``failed`` counts every record of the batch that was not acknowledged, including those the
    producer never sent because it stopped at the first error.
    """

    def __init__(
        self,
        topic: str,
        failed: int,
        total: int,
        first_error: str,
        where: str = "",
        stopped_early: bool = False,
    ) -> None:
        acknowledged = total - failed
        through = f" through {where}" if where else ""
        stop = "; the producer stopped at the first delivery error" if stopped_early else ""
        super().__init__(
            f"{failed} of {total} records were not delivered to topic {topic!r}{through} "
            f"(first error: {first_error}); {acknowledged} were acknowledged{stop}. "
            "The task's retry re-sends the same records (the same keys, so they load once)"
        )
        self.failed = failed
        self.total = total
        self.acknowledged = acknowledged


class TopicNotFoundError(EtlError):
    """The topic to drain does not exist on the broker."""


class DrainBusyError(EtlError):
    """Another drain holds the lease for the same topic and consumer group."""


class LeaseLostError(EtlError):
    """This drain can no longer prove it holds its lease; it stops before committing more.

    Raised by the fencing check before an offset commit: the lease expired or another drain took
    it over (this try was frozen, or cut off from MongoDB, for longer than the lease's ttl), or
    MongoDB confirmed it too late to be sure it still holds when the commit lands.
    """


class DrainStalledError(EtlError):
    """Partitions stayed below the snapshot for the stall timeout; what was loaded is committed.

    Retried: the retry continues from the committed offsets.
    """


class StopRequested(BaseException):
    """Airflow told this try to stop (SIGTERM); raised in the main thread wherever it was blocked.

    A ``BaseException``, like ``KeyboardInterrupt``, so that no ``except Exception`` on the way
    up swallows it; nothing is committed after it, and Airflow's retry policy applies as usual.
    """


class ConnectionProblem(EtlError):
    """Kafka or MongoDB could not be used through a connection; names it and what to check."""


class DeadLetterLimitError(AirflowFailException):
    """More records went to dead letters than the run allows.

    Not retried: the offsets of the dead letters are committed (they are safe in the
    dead-letter collection), so a retry would find nothing and hide the problem.
    """
