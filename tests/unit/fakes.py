"""Small fakes of what the drain talks to, for unit tests of its interleavings without services.

``FakeConsumer`` answers the dozen calls the drain makes on a confluent-kafka ``Consumer``
(``list_topics``, ``get_watermark_offsets``, ``committed``, ``assign``, ``consume``, ``position``,
``pause``, ``commit``, ``close``, ``poll``) from an in-memory log per partition (``FakePartition``).
An offset that holds ``None`` is a transaction marker, one that holds ``ABORTED`` a record of an
aborted transaction: a read_committed consumer returns neither, and, as librdkafka does, its
position moves past a marker but not past aborted records (until the next marker or record).
With ``eof=True`` it reports reaching the end of what it may fetch, as ``enable.partition.eof``
does. The integration tests against the real broker prove the fake honest where it matters
(tests/integration/test_lease.py, test_offset_ledger.py, test_read_committed_corner.py).

``FakeSink``, ``FakeDeadLetterSink``, ``FakeLease`` and ``FakeLedger`` stand in for the MongoDB
side. All of them append what they did to one shared ``events`` list, so a test reads the order
of reads, builds, writes, dead letters, renewals and commits from one place:

- ``("read", [(partition, offset), ...])`` a ``consume()`` that returned records (``log_reads``);
- ``("build", partition, offset)`` the record builder of ``build_with(events=...)``;
- ``("write-start", n)`` / ``("write", [(partition, offset), ...])`` a sink write begins / is
  acknowledged (``log_starts`` for the first);
- ``("dead", [(partition, offset, code), ...])`` dead letters written;
- ``("pause", [partition, ...])``, ``("renew",)``, ``("commit", {partition: offset})``,
  ``("ledger", {partition: offset})``.

Imported by the unit tests as ``fakes`` (pytest puts ``tests/unit`` on ``sys.path`` for them).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from confluent_kafka import OFFSET_INVALID, KafkaError, TopicPartition
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from kafka_mongo_etl.errors import LeaseLostError
from kafka_mongo_etl.ids import id_function
from kafka_mongo_etl.records import DeadLetter, Document, json_document
from kafka_mongo_etl.write_models import WriteResult

TOPIC = "t"

ABORTED = ("<aborted>", {})

# A log entry: (key, value) where value is a dict (sent as JSON) or raw bytes; None (a transaction
# marker); ABORTED (a record of an aborted transaction).
Entry = tuple[str, Any] | None

Events = list[tuple[Any, ...]]


@dataclass
class FakeMessage:
    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _error: KafkaError | None = None

    def error(self) -> KafkaError | None:
        return self._error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)


@dataclass
class FakePartition:
    """One partition's log: ``records[i]`` is offset ``low + i``; ``None`` is never returned
    under read_committed. ``stable`` (the last stable offset, default: the end of the log) is
    the high end a read_committed watermark query reports and how far a fetch reads."""

    records: list[Entry] = field(default_factory=list)
    low: int = 0
    stable: int | None = None

    @property
    def high(self) -> int:
        return self.low + len(self.records)

    @property
    def lso(self) -> int:
        return self.high if self.stable is None else self.stable

    def data_offsets(self, start: int, end: int) -> list[int]:
        """The offsets in ``[start, end)`` a read_committed consumer returns (not markers or aborted)."""
        return [
            offset
            for offset in range(max(start, self.low), min(end, self.high))
            if self.records[offset - self.low] is not None and self.records[offset - self.low] is not ABORTED
        ]


def versions(keys: Sequence[str], rounds: int) -> list[tuple[str, dict[str, Any]]]:
    """``rounds`` versions of every key, in order: key k's last version is ``{"v": rounds - 1}``."""
    return [(key, {"v": v}) for v in range(rounds) for key in keys]


class FakeClock:
    """A stand-in for the ``time`` module where the drain reads it: time passes only when a
    fake consume waits for records that do not come (or a test calls ``advance``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


class FakeConsumer:
    """The calls the drain makes on a confluent-kafka ``Consumer``, over ``FakePartition``s.

    ``group_offsets`` is what the group has committed. ``chunk`` interleaves partitions in a
    consume: at most that many entries of one partition before the next one's turn (default:
    each partition read as far as it goes, in partition order). ``stuck`` partitions return
    nothing (a fetch that does not come back). ``on_consume`` runs at the start of every
    consume (to produce more records, or to stop the test's clock). ``refuse_commit(offsets)``
    returns the ``KafkaError`` a commit should carry, or None. An empty consume waits its
    timeout on ``clock`` (real time, at most 10 ms, without one). ``fetch_errors`` maps the
    n-th consume to ``(partition, error)``: that consume returns an error event of the partition
    after its records (a fetch that failed: offset out of range, say).
    """

    def __init__(
        self,
        partitions: dict[int, FakePartition],
        events: Events | None = None,
        group_offsets: dict[int, int] | None = None,
        on_consume: Callable[[FakeConsumer], None] | None = None,
        eof: bool = False,
        chunk: int | None = None,
        stuck: Iterable[int] = (),
        log_reads: bool = False,
        refuse_commit: Callable[[dict[int, int]], KafkaError | None] | None = None,
        clock: FakeClock | None = None,
        fetch_errors: dict[int, tuple[int, KafkaError]] | None = None,
    ) -> None:
        self.partitions = partitions
        self.fetch_errors = dict(fetch_errors or {})
        self.eof = eof
        self.chunk = chunk
        self.stuck = set(stuck)
        self.log_reads = log_reads
        self.refuse_commit = refuse_commit
        self.clock = clock
        self.fetched: dict[int, int] = {}
        self.eof_at: dict[int, int] = {}
        self.events = events if events is not None else []
        self.group_offsets = dict(group_offsets or {})
        self.on_consume = on_consume
        self.positions: dict[int, int] = {}
        self.paused: set[int] = set()
        self.consumes = 0
        self.closed = False

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        found = SimpleNamespace(error=None, partitions={p: None for p in self.partitions})
        return SimpleNamespace(topics={topic: found} if topic == TOPIC else {})

    def poll(self, timeout: float = -1) -> None:
        return None

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float = 0, cached: bool = False
    ) -> tuple[int, int]:
        log = self.partitions[tp.partition]
        return log.low, log.lso

    def committed(self, partitions: list[TopicPartition], timeout: float = 0) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.group_offsets.get(tp.partition, OFFSET_INVALID))
            for tp in partitions
        ]

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.positions = {tp.partition: tp.offset for tp in partitions}
        self.fetched = dict(self.positions)
        self.paused = set()

    def pause(self, partitions: list[TopicPartition]) -> None:
        paused = sorted(tp.partition for tp in partitions)
        self.paused |= set(paused)
        self.events.append(("pause", paused))

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.positions[tp.partition]) for tp in partitions]

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        self.consumes += 1
        if self.on_consume is not None:
            self.on_consume(self)
        messages: list[FakeMessage] = []
        readable = [p for p in sorted(self.positions) if p not in self.paused and p not in self.stuck]
        progressed = True
        while progressed and len(messages) < num_messages:
            progressed = False
            for p in readable:
                taken = self._fetch(p, messages, num_messages)
                progressed = progressed or taken > 0
        if self.eof:
            for p in readable:
                at = self.fetched[p]
                log = self.partitions[p]
                if at >= log.lso and self.eof_at.get(p) != at and len(messages) < num_messages:
                    self.eof_at[p] = at
                    messages.append(
                        FakeMessage(TOPIC, p, at, None, None, KafkaError(KafkaError._PARTITION_EOF))
                    )
        if self.consumes in self.fetch_errors:
            p, error = self.fetch_errors[self.consumes]
            messages.append(FakeMessage(TOPIC, p, self.fetched.get(p, 0), None, None, error))
        data = [(m.partition(), m.offset()) for m in messages if m.error() is None]
        if data and self.log_reads:
            self.events.append(("read", data))
        if not messages:
            self._wait(timeout)
        return messages

    def _fetch(self, p: int, messages: list[FakeMessage], limit: int) -> int:
        """Up to ``chunk`` entries of partition ``p`` (all it has without one); how many it passed."""
        log = self.partitions[p]
        taken = 0
        while self.fetched[p] < log.lso and len(messages) < limit:
            if self.chunk is not None and taken >= self.chunk:
                break
            offset = self.fetched[p]
            self.fetched[p] += 1
            taken += 1
            entry = log.records[offset - log.low]
            if entry is ABORTED:
                continue  # dropped by the fetcher; the position stays
            self.positions[p] = offset + 1
            if entry is not None:
                key, value = entry
                raw = value if isinstance(value, bytes) else json.dumps(value).encode()
                messages.append(FakeMessage(TOPIC, p, offset, key.encode(), raw))
        return taken

    def _wait(self, timeout: float) -> None:
        """What consume() waits when nothing comes."""
        if self.clock is not None:
            self.clock.advance(timeout)
        else:
            threading.Event().wait(min(max(timeout, 0), 0.01))

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> list[Any]:
        assert not asynchronous, "the drain commits synchronously"
        asked = {tp.partition: tp.offset for tp in offsets}
        refused = self.refuse_commit(asked) if self.refuse_commit is not None else None
        if refused is not None:
            self.events.append(("commit-refused", asked))
            # A TopicPartition's error cannot be set from Python: the same attributes, with one.
            return [
                SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=tp.offset, error=refused)
                for tp in offsets
            ]
        self.group_offsets.update(asked)
        self.events.append(("commit", asked))
        return [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in offsets]

    def close(self) -> None:
        self.closed = True


class FakeSink:
    """A collection as a dict ``{_id: document}``; ``before_write(n)`` runs before the n-th write
    (it may block, or raise as a failed write does); ``reject(document)`` returns why MongoDB
    refuses a document (it becomes a dead letter of the write stage), or None."""

    def __init__(
        self,
        events: Events,
        before_write: Callable[[int], None] | None = None,
        reject: Callable[[Document], str | None] | None = None,
        log_starts: bool = False,
    ) -> None:
        self.events = events
        self.before_write = before_write
        self.reject = reject
        self.log_starts = log_starts
        self.documents: dict[Any, dict[str, Any]] = {}
        self.writes = 0

    def write(self, documents: Sequence[Document]) -> WriteResult:
        self.writes += 1
        if self.log_starts:
            self.events.append(("write-start", self.writes))
        if self.before_write is not None:
            self.before_write(self.writes)
        rejected = []
        stored = []
        for document in documents:
            reason = self.reject(document) if self.reject is not None else None
            if reason is not None:
                rejected.append((document, reason))
                continue
            self.documents[document.id] = dict(document.body or {})
            stored.append((document.message.partition(), document.message.offset()))
        self.events.append(("write", stored))
        return WriteResult(
            written=len(documents),
            inserted=len(documents) - len(rejected),
            replaced=0,
            rejected=rejected,
        )


class FakeDeadLetterSink:
    """Keeps the dead letters it is given; ``fail`` makes its writes raise."""

    def __init__(self, events: Events, fail: BaseException | None = None) -> None:
        self.events = events
        self.fail = fail
        self.letters: list[DeadLetter] = []

    def write(self, dead_letters: list[DeadLetter]) -> None:
        if self.fail is not None:
            raise self.fail
        self.letters.extend(dead_letters)
        self.events.append(
            ("dead", [(d.message.partition(), d.message.offset(), d.code) for d in dead_letters])
        )


class FakeLease:
    """Records what the drain asks of its lease; ``lose_at=n`` makes the n-th renewal find the
    lease lost (as ``DrainLease.renew`` does when another drain took it over)."""

    def __init__(self, events: Events | None = None, lose_at: int | None = None) -> None:
        self.events = events
        self.lose_at = lose_at
        self.renewals = 0
        self.abandoned = False

    def renew(self) -> None:
        self.renewals += 1
        if self.lose_at is not None and self.renewals >= self.lose_at:
            raise LeaseLostError("the lease was taken over by another drain (fake)")
        if self.events is not None:
            self.events.append(("renew",))

    def abandon(self) -> None:
        self.abandoned = True

    def settled(self) -> None:
        self.abandoned = False


class FakeLedger:
    def __init__(self, events: Events, offsets: dict[int, int] | None = None) -> None:
        self.events = events
        self.offsets = dict(offsets or {})

    def read(self, partitions: Any) -> dict[int, int]:
        return {p: self.offsets[p] for p in partitions if p in self.offsets}

    def record(self, offsets: dict[int, int]) -> None:
        self.offsets.update(offsets)
        self.events.append(("ledger", dict(offsets)))


def build_with(
    fail_at: dict[int, BaseException] | None = None,
    after: threading.Event | None = None,
    events: Events | None = None,
) -> Callable[[Any], Document]:
    """The real JSON record builder keyed by the record key; raises ``fail_at[offset]`` there
    (once ``after`` is set, when given); notes each record built in ``events``, when given."""
    build = json_document(id_function("key"))

    def to_document(message: Any) -> Document:
        if events is not None:
            events.append(("build", message.partition(), message.offset()))
        if fail_at and message.offset() in fail_at:
            if after is not None:
                assert after.wait(30)
            raise fail_at[message.offset()]
        return build(message)

    return to_document


def committed_in(events: Events) -> dict[int, int]:
    """The group's offsets after the commits in ``events``."""
    offsets: dict[int, int] = {}
    for event in events:
        if event[0] == "commit":
            offsets.update(event[1])
    return offsets


class FakeCollection:
    """The few calls of a pymongo ``Collection`` the offset ledger makes: ``find`` by
    ``{"_id": {"$in": [...]}}`` with a projection, and ``bulk_write`` of ``UpdateOne`` ``$set``
    upserts (read from pymongo's request objects). ``bulk_writes`` keeps each call's requests
    and ``ordered``."""

    def __init__(self) -> None:
        self.documents: dict[Any, dict[str, Any]] = {}
        self.bulk_writes: list[tuple[list[Any], bool]] = []

    def find(self, query: dict[str, Any], projection: dict[str, int] | None = None) -> list[dict[str, Any]]:
        ((field_name, condition),) = query.items()
        assert field_name == "_id" and set(condition) == {"$in"}, f"query not supported by the fake: {query}"
        found = [self.documents[_id] for _id in condition["$in"] if _id in self.documents]
        if projection is None:
            return [dict(d) for d in found]
        return [{"_id": d["_id"], **{k: d[k] for k in projection if k in d}} for d in found]

    def bulk_write(self, requests: list[Any], ordered: bool = True) -> None:
        if not requests:
            raise AssertionError("MongoDB refuses an empty bulk write (pymongo: InvalidOperation)")
        self.bulk_writes.append((list(requests), ordered))
        for request in requests:
            ((_id_name, _id),) = request._filter.items()
            ((operator, fields),) = request._doc.items()
            assert _id_name == "_id" and operator == "$set" and request._upsert
            self.documents.setdefault(_id, {"_id": _id}).update(fields)


class FakeRegistryClient:
    """A Schema Registry client: answers get_schema from a dict; counts the calls; ``error``
    raised instead when set."""

    def __init__(self, schemas: dict[int, Schema], error: Exception | None = None) -> None:
        self.schemas, self.error, self.calls = schemas, error, 0

    def get_schema(self, schema_id: int) -> Schema:
        self.calls += 1
        if self.error is not None:
            raise self.error
        if schema_id not in self.schemas:
            raise SchemaRegistryError(404, 40403, "Schema not found")
        return self.schemas[schema_id]
