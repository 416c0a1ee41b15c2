"""Every error the ETL raises, in one tree; each message says what happened and what to do.

::

    Exception
     └── EtlError                      every ETL failure: catch this for "the load failed"
          ├── DeliveryError             records of a produced batch not acknowledged (retried)
          ├── TopicNotFoundError        the topic to drain or plan does not exist (retried)
          ├── ConnectionProblem         Kafka or MongoDB unusable through a connection (retried)
          ├── DrainBusyError            another drain holds the lease (retried)
          ├── LeaseLostError            this drain can no longer prove its lease (retried)
          ├── DrainStalledError         partitions stayed below the snapshot (retried)
          ├── WriteFailedError          MongoDB did not write a batch, not for its documents (retried)
          ├── AuditConflictError        other tries kept changing the run's audit document
          ├── BadRecordError            one record cannot be a document: it becomes a dead letter
          │                             and never fails a task (lives in kafka_mongo_etl.records)
          └── NotRetriedError           also Airflow's AirflowFailException: fails without a retry
               ├── DeadLetterLimitError       more dead letters than the run allows
               ├── RetentionGapError          records deleted by retention before they were loaded
               ├── OffsetAboveWatermarkError  committed offsets past the log's end
               └── ParamsRefusedError         options that cannot work together
    BaseException
     └── StopRequested                 Airflow's SIGTERM; not an Exception, so nothing swallows it

One root for catching (``EtlError``) and Airflow's semantics kept: an error a retry cannot cure
is also an ``AirflowFailException``, which the task runner fails without retrying. Every error
is defined here and imported from here, except ``BadRecordError``, which belongs to the record
path (``kafka_mongo_etl.records``). ``WriteFailedError`` is also re-exported by
``kafka_mongo_etl.write_models`` (and so reachable through ``mongo_sink``) for older imports;
import it from here. Errors of the client libraries are mapped to these at one boundary per
system: ``clients.kafka_errors`` for Kafka, ``mongo_client.EtlMongoHook.errors`` for MongoDB.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException


class EtlError(RuntimeError):
    """Base class for the ETL's own failures."""


class NotRetriedError(EtlError, AirflowFailException):
    """An ETL failure that a retry would meet again: Airflow fails the task without retrying."""


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


class DeadLetterLimitError(NotRetriedError):
    """More records went to dead letters than the run allows.

    Not retried: the offsets of the dead letters are committed (they are safe in the
    dead-letter collection), so a retry would find nothing and hide the problem.
    """


class RetentionGapError(NotRetriedError):
    """Records were deleted by the topic's retention before the consumer group loaded them.

    Not retried: a retry finds the same gap. Nothing was read or committed.
    """

    def __init__(self, topic: str, lost: str, forgotten: list[int] | None = None) -> None:
        where = "the committed offsets are below the partitions' low watermarks"
        if forgotten:
            where = (
                f"Kafka had also forgotten the group's committed offsets of partition(s) "
                f"{', '.join(map(str, forgotten))} (offsets.retention.minutes after their last commit), "
                "and the drain's offset ledger (etl_offsets) shows them below the low watermarks"
            )
        super().__init__(
            f"records of topic {topic!r} were deleted by retention before this consumer group loaded "
            f"them ({lost}): {where}. Nothing was "
            "loaded or committed. To accept the loss and go on from the earliest records left, run "
            "with on_retention_gap='skip' (the run's summary and audit count what was lost); to keep it "
            "from happening, run more often than the topic's retention.ms, or raise it."
        )


class OffsetAboveWatermarkError(NotRetriedError):
    """The group's committed offset is past the end of the partition: the log was truncated.

    Not retried: someone must decide where the group goes on from.
    """

    def __init__(self, topic: str, group_id: str, above: dict[int, tuple[int, int]]) -> None:
        where = "; ".join(
            f"partition {p}: committed {offset}, high watermark {high}"
            for p, (offset, high) in sorted(above.items())
        )
        partitions = ",".join(str(p) for p in sorted(above))
        super().__init__(
            f"consumer group {group_id!r} has committed offsets for topic {topic!r} above the partitions' "
            f"high watermarks ({where}): the log was truncated below what the group had read (the "
            "topic was deleted and created again under the same name, or an unclean leader election "
            "lost records). Records written there from now on would be skipped, so nothing was read. "
            "Check what MongoDB holds, then reset the group, for example "
            f"kafka-consumer-groups.sh --bootstrap-server <broker> --group {group_id} "
            f"--topic {topic}:{partitions} --reset-offsets --to-earliest --execute (a re-read is safe "
            "with key or field ids: every write is keyed by _id)."
        )


class ParamsRefusedError(NotRetriedError):
    """The run's params cannot work together; raised before anything is produced, not retried."""


class WriteFailedError(EtlError):
    """MongoDB did not write (part of) a batch for a reason that is not about its documents,
    or could not confirm the write concern. Nothing of the batch is committed; retry."""


class AuditConflictError(EtlError):
    """Other tries of the same drain kept changing its audit document; this try's entry is not in it."""
