"""Debezium change events (the relational envelope) as documents: a collection that mirrors a table.

A Debezium source connector (PostgreSQL, MySQL, ...) publishes each row change of a table as one
record whose key is the row's primary key and whose value is the envelope
``{before, after, source, op, ts_ms}``, with the JSON converter's ``schemas.enable`` either way:
``true`` wraps key and value in ``{"schema": ..., "payload": ...}``, ``false`` sends the payload
alone. This module turns each record into the ``Document`` the write model ``cdc`` applies:

- ``op`` ``c`` (insert), ``r`` (snapshot read), ``u`` (update): the row's ``after`` image, whole
  (the write replaces the document, so a re-read or a re-snapshot writes the same content again);
- ``op`` ``d`` (delete) and the tombstone Debezium sends after it (same key, no value): a delete
  (``Document.body`` is None). A primary-key change arrives as a delete of the old key, its
  tombstone and a create of the new one;
- ``op`` ``t`` (truncate, sent only when the connector's ``skipped.operations`` lets it through):
  a dead letter (``truncate``). A truncate has no key to delete by and no rows; see docs/cdc.md;
- an update without the value of an unchanged large (TOASTed) column — Debezium's placeholder
  ``__debezium_unavailable_value`` stands in for it unless the table has ``REPLICA IDENTITY FULL``:
  a dead letter (``unavailable_value``), never a document that stores the placeholder;
- anything else (not an envelope, ``c``/``r``/``u`` without ``after``, an unknown ``op``, a key
  that is not the primary key's JSON): a dead letter (``not_change_event``, ``no_id``).

The ``_id`` is the event key, the primary key: the column's value for a one-column key, an
embedded document of the columns in key order for several. The document is ``_id``, the row's
columns, ``_cdc`` (the change's ``op``, its commit time ``ts``, and the ``source`` position
``lsn``, ``txId``; ``CdcSettings.keep_source``) and ``_kafka`` (partition and offset, as for
every mode). A column named ``_id``, ``_cdc`` or ``_kafka`` is replaced by ours.

Column types (``schemas.enable=true``; the types come from the schema, see the table in
docs/cdc.md): ``Decimal`` (Debezium's default ``decimal.handling.mode=precise``) and
``VariableScaleDecimal`` become Decimal128 (more than 34 digits: a dead letter
``number_out_of_range``); ``io.debezium.time.Date`` and ``Timestamp`` (and Connect's own
``Date``/``Timestamp``) become BSON dates; ``MicroTimestamp``, ``NanoTimestamp`` and
``ZonedTimestamp`` (``timestamp`` and ``timestamptz`` columns) are finer than BSON's millisecond
dates and stay exact — the integer, the ISO string — unless ``CdcSettings.times`` is ``date``
(then a date cut to the millisecond); ``bytes`` become BSON binary. With
``schemas.enable=false`` nothing says what a value was: every value stays as the JSON has it
(a ``numeric`` is then the base64 of its unscaled integer — use ``schemas.enable=true``, or
``decimal.handling.mode=string`` or ``double`` knowingly).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bson import Binary
from bson.decimal128 import Decimal128
from confluent_kafka import Message

from kafka_mongo_etl.records import (
    BadRecordError,
    Document,
    RecordBuilder,
    check_fields,
    check_id,
    decode_json,
    encode,
    id_identity,
    kafka_position,
    quote,
    where,
)

# Keep the change's op and source position in each document (``_cdc``); the default of
# ``CdcSettings.keep_source`` until the option table names it.
KEEP_SOURCE = True
CDC_FIELD = "_cdc"
# What becomes of the time types finer than BSON's millisecond dates: "exact" keeps Debezium's
# value (microseconds or nanoseconds since the epoch, the ISO string of a timestamptz), "date"
# makes a BSON date cut to the millisecond.
TIME_MODES = ("exact", "date")
UPSERT_OPS = {"c": "insert", "r": "snapshot read", "u": "update"}
DELETE_OP = "d"
TRUNCATE_OP = "t"

# What Debezium's PostgreSQL connector sends, by default (unavailable.value.placeholder), for a
# large (TOASTed) column an update did not change when the table's replica identity is not FULL:
# PostgreSQL's log has no value for it. As text; base64 of those bytes in a bytea column.
UNAVAILABLE_VALUE = "__debezium_unavailable_value"
_UNAVAILABLE = {UNAVAILABLE_VALUE, base64.b64encode(UNAVAILABLE_VALUE.encode()).decode()}

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class CdcSettings:
    """How change events become documents: ``keep_source`` adds ``_cdc``; ``times`` is one of
    ``TIME_MODES`` for the sub-millisecond time types."""

    keep_source: bool = KEEP_SOURCE
    times: str = "exact"

    def __post_init__(self) -> None:
        if self.times not in TIME_MODES:
            raise ValueError(f"unknown cdc times {self.times!r}; choose one of {', '.join(TIME_MODES)}")


def change_events(settings: CdcSettings | None = None) -> RecordBuilder:
    """The record builder of write mode ``cdc``: a Debezium change event becomes the row's
    document, a delete or tombstone a delete (``body=None``), anything else a ``BadRecordError``."""
    settings = settings or CdcSettings()

    def to_document(message: Message) -> Document:
        if message.value() is None:
            _id = event_key(message, settings)
            return Document(id=_id, identity=id_identity(_id), body=None, message=message)
        envelope, schema = _unwrap(decode_json(message))
        if not isinstance(envelope, dict) or "op" not in envelope:
            raise _not_change_event(message, "the value is not a Debezium envelope (no 'op')")
        op = envelope["op"]
        if op == TRUNCATE_OP:
            source = envelope.get("source") if isinstance(envelope.get("source"), dict) else {}
            table = f"{source.get('schema', '?')}.{source.get('table', '?')}"
            raise BadRecordError(
                "truncate",
                f"record {where(message)} is a truncate of {table}, which this mode does not apply (it "
                "has no key to delete by): the collection still holds the table's old rows. Delete them "
                "yourself, or re-snapshot the table into an empty collection (docs/cdc.md)",
            )
        _id = event_key(message, settings)
        if op == DELETE_OP:
            return Document(id=_id, identity=id_identity(_id), body=None, message=message)
        if not isinstance(op, str) or op not in UPSERT_OPS:
            raise _not_change_event(message, f"unknown op {quote(str(op))} (expected c, r, u, d or t)")
        after = envelope.get("after")
        if not isinstance(after, dict):
            raise _not_change_event(message, f"op {op!r} ({UPSERT_OPS[op]}) without an 'after' row image")
        unavailable = [name for name, value in after.items() if _unavailable(value)]
        if unavailable:
            raise BadRecordError(
                "unavailable_value",
                f"change event {where(message)} ({UPSERT_OPS[op]}) lacks the values of the unchanged "
                f"large (TOASTed) columns {unavailable[:5]}: Debezium sent its placeholder "
                f"{UNAVAILABLE_VALUE!r}, and replacing the document would store it. Give the table "
                "REPLICA IDENTITY FULL (ALTER TABLE ... REPLICA IDENTITY FULL) so that its updates carry "
                "every column, then replay this dead letter or re-snapshot the table",
            )
        row = _convert(after, _field_schema(schema, "after", message), settings, message)
        check_fields(row, message)
        document: dict[str, Any] = {"_id": _id, **row}
        if settings.keep_source:
            document[CDC_FIELD] = _cdc_metadata(envelope, op)
        document["_kafka"] = kafka_position(message)
        return Document(id=_id, identity=id_identity(_id), body=encode(document, message), message=message)

    return to_document


def event_key(message: Message, settings: CdcSettings | None = None) -> Any:
    """The ``_id`` of a change event: its key, the primary key — one column's value, or an
    embedded document of several in key order. Raises ``BadRecordError`` (``no_id``)."""
    raw = message.key()
    if raw is None:
        raise BadRecordError(
            "no_id",
            f"change event {where(message)} has no key: its table has no primary key. Give it one, or "
            "set the connector's message.key.columns, so that rows can be told apart",
        )
    try:
        key = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        raise BadRecordError("no_id", f"change event {where(message)}: the key is not JSON ({err})") from None
    key, schema = _unwrap(key)
    if not isinstance(key, dict) or not key:
        raise BadRecordError(
            "no_id",
            f"change event {where(message)}: the key is not an object of primary-key columns "
            f"({quote(raw.decode('utf-8', 'replace'))})",
        )
    columns = _convert(key, schema, settings or CdcSettings(), message)
    _id = next(iter(columns.values())) if len(columns) == 1 else columns
    if _id is None:
        raise BadRecordError("no_id", f"change event {where(message)}: the key's only column is null")
    check_id(_id, message)
    # A delete sends no document, so nothing else would find an _id BSON cannot hold (an
    # integer beyond int64) before the bulk write failed on it.
    encode({"_id": _id}, message)
    return _id


def _unavailable(value: Any) -> bool:
    if isinstance(value, str):
        return value in _UNAVAILABLE
    return isinstance(value, list) and any(isinstance(item, str) and item in _UNAVAILABLE for item in value)


def _unwrap(value: Any) -> tuple[Any, dict[str, Any] | None]:
    """``(payload, schema)`` of the JSON converter's ``schemas.enable=true`` form, else ``(value, None)``."""
    if (
        isinstance(value, dict)
        and value.keys() == {"schema", "payload"}
        and isinstance(value["schema"], dict)
        and "type" in value["schema"]
    ):
        return value["payload"], value["schema"]
    return value, None


def _field_schema(schema: dict[str, Any] | None, name: str, message: Message) -> dict[str, Any] | None:
    return None if schema is None else _schema_fields(schema, message).get(name)


def _schema_fields(schema: dict[str, Any], message: Message) -> dict[str, Any]:
    """A struct schema's fields by name; a schema that is not one Connect writes is refused."""
    fields = schema.get("fields")
    if not isinstance(fields, list) or not all(
        isinstance(f, dict) and isinstance(f.get("field"), str) for f in fields
    ):
        raise _not_change_event(message, "its schema has a struct without a list of named fields")
    return {f["field"]: f for f in fields}


def _cdc_metadata(envelope: dict[str, Any], op: str) -> dict[str, Any]:
    source = envelope.get("source") if isinstance(envelope.get("source"), dict) else {}
    ts_ms = source.get("ts_ms")
    return {
        "op": op,
        # When the change was committed in the database (the snapshot's time for op r).
        "ts": _from_millis(ts_ms) if isinstance(ts_ms, int) else None,
        "lsn": source.get("lsn"),
        "txId": source.get("txId"),
    }


def _convert(value: Any, schema: dict[str, Any] | None, settings: CdcSettings, message: Message) -> Any:
    """``value`` as BSON by its Connect ``schema`` (None: as the JSON has it)."""
    if value is None or schema is None:
        return value
    if not isinstance(schema, dict):
        raise _not_change_event(message, f"its schema has {quote(str(schema))} where a schema belongs")
    name = schema.get("name")
    logical = _LOGICAL.get(name) if isinstance(name, str) else None
    try:
        if logical is not None:
            return logical(value, schema, settings)
        kind = schema.get("type")
        if kind == "struct" and isinstance(value, dict):
            fields = _schema_fields(schema, message)
            return {name: _convert(item, fields.get(name), settings, message) for name, item in value.items()}
        if kind == "array" and isinstance(value, list):
            return [_convert(item, schema.get("items"), settings, message) for item in value]
        if kind == "bytes" and isinstance(value, str):
            return Binary(base64.b64decode(value, validate=True))
    except decimal.DecimalException:
        raise BadRecordError(
            "number_out_of_range",
            f"change event {where(message)} has the decimal {quote(str(value))} of more than 34 digits, "
            "which Decimal128 cannot hold exactly; capture it with decimal.handling.mode=string",
        ) from None
    except OverflowError:
        raise BadRecordError(
            "number_out_of_range",
            f"change event {where(message)} has the {schema.get('name')} {quote(str(value))}, outside the "
            "dates BSON and Python hold (years 1 to 9999)",
        ) from None
    except (binascii.Error, AttributeError, TypeError, ValueError, KeyError) as err:
        kind = schema.get("name") or schema.get("type")
        raise _not_change_event(
            message, f"the value {quote(str(value))} is not a valid {kind} ({err})"
        ) from None
    return value


def _decimal(unscaled: str, scale: int) -> Decimal128:
    number = int.from_bytes(base64.b64decode(unscaled, validate=True), "big", signed=True)
    # From text, which is exact (arithmetic would round to the context's 28 digits); Decimal128
    # raises decimal.Inexact for what it cannot hold exactly.
    return Decimal128(decimal.Decimal(f"{number}E{-int(scale)}"))


def _from_millis(ms: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(milliseconds=ms)


def _sub_millis(per_ms: int) -> Callable[[Any, dict[str, Any], CdcSettings], Any]:
    """MicroTimestamp / NanoTimestamp: exact integers, or dates cut to the millisecond."""

    def convert(value: Any, _schema: dict[str, Any], settings: CdcSettings) -> Any:
        if settings.times == "exact":
            return value
        return _from_millis(int(value) // per_ms)

    return convert


def _zoned(value: Any, _schema: dict[str, Any], settings: CdcSettings) -> Any:
    if settings.times == "exact":
        return value
    moment = dt.datetime.fromisoformat(value)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000).astimezone(dt.UTC)


_LOGICAL: dict[str, Callable[[Any, dict[str, Any], CdcSettings], Any]] = {
    "org.apache.kafka.connect.data.Decimal": lambda v, s, _: _decimal(v, s["parameters"]["scale"]),
    "io.debezium.data.VariableScaleDecimal": lambda v, _s, _: _decimal(v["value"], v["scale"]),
    "io.debezium.time.Date": lambda v, _s, _: _EPOCH + dt.timedelta(days=int(v)),
    "org.apache.kafka.connect.data.Date": lambda v, _s, _: _EPOCH + dt.timedelta(days=int(v)),
    "io.debezium.time.Timestamp": lambda v, _s, _: _from_millis(int(v)),
    "org.apache.kafka.connect.data.Timestamp": lambda v, _s, _: _from_millis(int(v)),
    "io.debezium.time.MicroTimestamp": _sub_millis(1000),
    "io.debezium.time.NanoTimestamp": _sub_millis(1_000_000),
    "io.debezium.time.ZonedTimestamp": _zoned,
}


def _not_change_event(message: Message, why: str) -> BadRecordError:
    return BadRecordError(
        "not_change_event", f"record {where(message)} is not a Debezium change event: {why}"
    )
