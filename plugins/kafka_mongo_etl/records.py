"""The record path: a Kafka record (value, key, headers) becomes one MongoDB document, or one
``BadRecordError`` that names the record and says why it cannot be loaded.

Nothing else leaves this module for a record: the drain turns a ``BadRecordError`` into a dead
letter and loads everything else. The document is encoded to BSON here, once, so its size is
known exactly and the sink sends the bytes as they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from confluent_kafka import Message

from kafka_mongo_etl.errors import EtlError
from kafka_mongo_etl.ids import IdFunction

# MongoDB refuses documents over 16 MiB (BSON, _id and _kafka included).
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024


class BadRecordError(EtlError):
    """A record that cannot become a document; ``code`` names the kind, the message the record."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be loaded, and why (``stage`` is ``decode`` or ``write``)."""

    message: Message
    code: str
    reason: str
    stage: str


@dataclass(frozen=True, slots=True)
class Document:
    """One record as MongoDB will store it.

    ``identity`` is equal for two documents exactly when MongoDB would take their ``_id``s for
    the same one; a batch keeps one document per identity (the later offset). ``body`` is the
    whole document, ``_id`` first, encoded once.
    """

    id: Any
    identity: Hashable
    body: RawBSONDocument
    message: Message


RecordBuilder = Callable[[Message], Document]


def where(message: Message) -> str:
    """``topic[partition]@offset``: how every message about a record names it."""
    return f"{message.topic()}[{message.partition()}]@{message.offset()}"


def id_identity(value: Any) -> Hashable:
    """What MongoDB compares when it decides two ``_id``s are the same: type and value."""
    return bson.encode({"_id": value})


def json_document(id_for: IdFunction) -> RecordBuilder:
    """Turn a record whose value is a JSON object into a ``Document``."""

    def to_document(message: Message) -> Document:
        raw = message.value()
        if raw is None:
            raise BadRecordError("tombstone", f"record {where(message)} has no value (a tombstone)")
        # Decoded here, not by json.loads: that would also take UTF-16 and UTF-32 by their BOM.
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BadRecordError("not_utf8", f"record {where(message)} is not UTF-8: {err}") from None
        try:
            value = json.loads(text)
        except ValueError as err:
            raise BadRecordError("not_json", f"record {where(message)} is not JSON: {err}") from None
        if not isinstance(value, dict):
            kind = type(value).__name__
            raise BadRecordError("not_object", f"record {where(message)} is JSON but not an object ({kind})")
        dollar = [key for key in value if key.startswith("$")]
        if dollar:
            raise BadRecordError(
                "invalid_field",
                f"record {where(message)} has top-level field names starting with $: {dollar[:3]}",
            )
        try:
            _id = id_for(message, value)
        except (ValueError, UnicodeDecodeError) as err:
            raise BadRecordError("no_id", f"record {where(message)}: {err}") from None
        value.pop("_id", None)
        document = {
            "_id": _id,
            **value,
            "_kafka": {"partition": message.partition(), "offset": message.offset()},
        }
        body = RawBSONDocument(bson.encode(document))
        size = len(body.raw)
        if size > MAX_DOCUMENT_BYTES:
            raise BadRecordError(
                "too_large",
                f"record {where(message)} makes a {size}-byte document, over MongoDB's 16 MiB limit",
            )
        return Document(id=_id, identity=id_identity(_id), body=body, message=message)

    return to_document
