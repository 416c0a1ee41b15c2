"""The record path: a Kafka record (value, key, headers) becomes one MongoDB document, or one
``BadRecordError`` that names the record and says why it cannot be loaded.

Nothing else leaves this module for a record: the drain turns a ``BadRecordError`` into a dead
letter and loads everything else. The document is encoded to BSON here, once, so its size is
known exactly and the sink sends the bytes as they are.

The rules a document must pass are MongoDB's own (5.0 and later), applied here because the
local MongoDB-wire server is more permissive than MongoDB and because a BSON encoding error
inside the driver's bulk write is not a per-document error:

- it encodes to BSON: integers within int64, strings and names without lone surrogates (JSON
  allows ``"\\ud800"``, UTF-8 does not), names without NUL;
- it is at most 16 MiB, ``_id`` and ``_kafka`` included (``MAX_DOCUMENT_BYTES``), and the
  statement that writes it — the document, its ``_id`` again in the filter, and the fence
  (``write_models``) — fits mongod's per-statement limit (``MAX_STATEMENT_BYTES``);
- it nests at most 100 levels (``MAX_NESTING``);
- no top-level field name starts with ``$``, and no name has 255 or more dot-separated parts;
- its ``_id`` is not an array, and an embedded-document ``_id`` has no ``$``-prefixed or dotted
  field names at any level.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import bson
import msgspec
from bson import DEFAULT_CODEC_OPTIONS, _dict_to_bson, _raw_to_dict
from bson.codec_options import CodecOptions
from bson.errors import InvalidDocument
from bson.raw_bson import DEFAULT_RAW_BSON_OPTIONS, RawBSONDocument
from confluent_kafka import Message

from kafka_mongo_etl.errors import EtlError
from kafka_mongo_etl.ids import IdFunction, is_key_ids
from kafka_mongo_etl.processors import Chain, ProcessorRefusal

# MongoDB refuses documents over 16 MiB (BSON, _id and _kafka included): BSONObjMaxUserSize.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
# mongod refuses a write command whose statement ({q, u, upsert}) is over BSONObjMaxInternalSize,
# 16 MiB + 16 KiB, for the whole command (code 10334, not a per-document error): a rewrite
# carries the _id in its filter and the document in its update, so both count, with the fence
# around them (write_models; tests/unit/test_batch_semantics.py checks this bound holds).
MAX_STATEMENT_BYTES = MAX_DOCUMENT_BYTES + 16 * 1024
STATEMENT_OVERHEAD_BYTES = 2 * 1024
# "MongoDB supports no more than 100 levels of nesting for BSON documents. Each object or array
# adds a level" (docs: MongoDB Limits and Thresholds, "Nested Depth for BSON Documents"); the
# document itself is the first level, so {"a": 1} is 1 level and {"a": {"b": 1}} is 2. mongod
# itself refuses only past its maxBSONDepth (200) minus 20, i.e. 180 levels (bson_depth.h,
# ops/insert.cpp validateDepth, update/storage_validation.cpp); the documented 100 is the limit
# every MongoDB deployment and tool supports, so it is the one kept here.
MAX_NESTING = 100
# "Limit the number of words separated by periods in field names to less than 255. If you
# attempt to use more, MongoDB returns an error." (docs: Field Names with Periods).
MAX_NAME_PARTS = 254
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Names and values quoted in a reason are cut to this many characters (a reason is stored in the
# dead letter, which must stay small) and quoted with repr(), which escapes NUL and surrogates.
_QUOTE_CHARS = 40
# No valid int64 literal is longer than this ("-9223372036854775808"): longer ones are refused
# before int() runs (Python refuses more than 4,300 digits with a ValueError of its own).
_INT64_DIGITS = 20

# What a dead letter's ``code`` can be for a record that could not become a document.
BAD_RECORD_CODES = {
    "tombstone": "the record has no value",
    "not_utf8": "the value is not UTF-8",
    "not_json": "the value is not JSON",
    "not_object": "the value is JSON but not an object",
    "number_out_of_range": "a number BSON cannot hold: an integer beyond int64, a finite one beyond double",
    "invalid_string": "a string or field name has a lone surrogate escape, which UTF-8 cannot encode",
    "invalid_field": "a field name MongoDB refuses (top-level $-prefixed, NUL, 255 or more dotted parts)",
    "too_deep": f"the document nests more than {MAX_NESTING} levels",
    "no_id": "the record has nothing to make its _id from (no key, no or null id field)",
    "invalid_id": "the _id is an array, or an embedded document with $-prefixed or dotted names",
    "too_large": "the document is over MongoDB's 16 MiB limit, or with its _id over the write statement's",
    "not_change_event": "write_mode cdc: not a Debezium change event (no envelope, no 'after', unknown op)",
    "truncate": "write_mode cdc: a Debezium truncate event, which is not applied (docs/cdc.md)",
    "unavailable_value": "write_mode cdc: an update without an unchanged TOASTed column's value",
    "bad_route": "route_by: the routing field's value is not a collection name MongoDB takes",
    "rename_conflict": "processors: a rename would overwrite a field the record already has",
    "function_failed": "processors: the user function raised an exception for the record",
    "function_result": "processors: the user function returned no document, or one MongoDB cannot store",
    "bad_wire_format": "value_format of a registry: not the wire format (magic byte 0, schema id)",
    "unknown_schema": "value_format of a registry: the registry does not know the value's schema id",
    "schema_mismatch": "value_format of a registry: the payload does not decode with its schema",
}


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


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which made building
# one cost 0.5 µs more per record than this; nothing changes a Document once made.
@dataclass(slots=True)
class Document:
    """One record as MongoDB will store it (read-only by convention: nothing changes it).

    ``identity`` is equal for two documents exactly when MongoDB would take their ``_id``s for
    the same one; the write model folds a batch's versions of one identity as its mode says
    (``write_models``). ``body`` is the whole document, ``_id`` first, encoded once; ``None``
    for a tombstone (``write_mode='delete_on_tombstone'``). ``collection`` is where a routed
    record goes (``kafka_mongo_etl.routing``); ``None``: the drain's own collection.
    """

    id: Any
    identity: Hashable
    body: RawBSONDocument | None
    message: Message
    collection: str | None = None


RecordBuilder = Callable[[Message], Document]


def fence_key(topic: str, partition: int) -> str:
    """The key of the fence's ``applied`` map for a topic's partition: ``"<topic>:<partition>"``
    (a topic name never holds ':', so the key is unambiguous; docs/fencing.md)."""
    return f"{topic}:{partition}"


def kafka_position(message: Message) -> dict[str, Any]:
    """A document's ``_kafka`` for the record ``message``: its topic, partition and offset, and
    the fence ``applied`` with this record's position (``{"<topic>:<partition>": offset}``)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    key = _FENCE_KEYS.get((topic, partition))
    if key is None:
        key = fence_key(topic, partition)
        if len(_FENCE_KEYS) < _FENCE_KEYS_MAX:
            _FENCE_KEYS[topic, partition] = key
    return {"topic": topic, "partition": partition, "offset": offset, "applied": {key: offset}}


# (topic, partition) -> fence_key(topic, partition): a drain's records repeat a few partitions, and
# a lookup costs less than formatting the key for every record. Bounded, as _GOOD_NAMES is.
_FENCE_KEYS: dict[tuple[str, int], str] = {}
_FENCE_KEYS_MAX = 10_000


def where(message: Message) -> str:
    """``topic[partition]@offset``: how every message about a record names it."""
    return f"{message.topic()}[{message.partition()}]@{message.offset()}"


def quote(text: str) -> str:
    """A name or value for a reason: short, and encodable whatever it holds."""
    return repr(text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "…")


def id_identity(value: Any) -> Hashable:
    """What MongoDB's ``_id`` index compares: equal exactly when MongoDB sees the same ``_id``.

    Numbers compare by value across int, long and double (``1`` and ``1.0`` are one ``_id``;
    NaN equals NaN), but a boolean is never a number (``True`` is not ``1``); embedded documents
    compare field by field, in order; strings by their code points (the collection's simple
    binary collation). Python's own equality merges ``True`` with ``1``, keeps NaN apart from
    NaN and ignores the order of a dict's fields, and raw BSON bytes keep ``1`` apart from
    ``1.0``: none of them is what MongoDB does.
    """
    if type(value) is str:
        return value  # the common case; every other identity is a tuple, never equal to a str
    return _canonical(value)


def _canonical(value: Any) -> Hashable:
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        # Python compares int and float exactly (2**53 + 1 != 2.0**53), as MongoDB does.
        return ("nan",) if value != value else ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, dict):
        return ("object", tuple((name, _canonical(item)) for name, item in value.items()))
    if isinstance(value, list | tuple):
        return ("array", tuple(_canonical(item) for item in value))
    # Other BSON types (no JSON value becomes one): by type and bytes.
    return ("bson", bson.encode({"": value}))


class _OutOfRange(Exception):
    """Raised from inside json.loads by the number hooks; not a ValueError, so not 'not JSON'."""


def _json_int(literal: str) -> int:
    if len(literal) > _INT64_DIGITS:
        raise _OutOfRange(literal)
    number = int(literal)
    if not INT64_MIN <= number <= INT64_MAX:
        raise _OutOfRange(literal)
    return number


def _json_float(literal: str) -> float:
    number = float(literal)
    if math.isinf(number):  # a finite literal beyond double (1e400); Infinity itself is a constant
        raise _OutOfRange(literal)
    return number


# The reference decoder: json.loads with the hooks above (one decoder for every record, since
# json.loads with hooks would build a new one per call). What it accepts and how it reads it is the
# record path's definition of JSON; the fast decoder below only ever agrees with it.
_DECODER = json.JSONDecoder(parse_int=_json_int, parse_float=_json_float)
# msgspec reads the common record about 4 times faster. It refuses what the reference decoder
# takes or reports differently (NaN and Infinity, finite literals beyond double, lone surrogate
# escapes, a BOM, nesting past its recursion limit, invalid UTF-8, malformed JSON): every refusal
# goes to the reference decoder, which accepts the record or raises the error it always raised.
_FAST_DECODER = msgspec.json.Decoder()
_FAST_REFUSALS = (msgspec.DecodeError, ValueError, RecursionError)
# msgspec takes integers of any size, and a duplicate name hides an earlier value, so the int64
# rule is checked on the text: an integer literal beyond int64 has at least 19 digits, and a value
# without 19 digits in a row (every digit read as a 9) has none. One with such a run (a long
# literal, or digits in a string) goes to the reference decoder.
_DIGITS_AS_NINES = bytes.maketrans(b"012345678", b"999999999")
_DIGIT_RUN = b"9" * 19
_CONTAINERS = (dict, list)
_CONTAINER_TYPES = frozenset(_CONTAINERS)
# Top-level field names that passed ``_check_name``: a topic's records repeat a few names, and
# one set lookup in C per name costs less than the rule's three tests in Python. Bounded, so
# that names that never repeat (a map keyed by ids) do not grow it without end.
_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_MAX = 10_000


def decode_json(message: Message) -> dict[str, Any]:
    """The record's value as a JSON object, or ``BadRecordError``."""
    raw = message.value()
    if raw is None:
        raise BadRecordError("tombstone", f"record {where(message)} has no value (a tombstone)")
    if _DIGIT_RUN in raw.translate(_DIGITS_AS_NINES):
        return _decode_exactly(raw, message)
    try:
        value = _FAST_DECODER.decode(raw)
    except _FAST_REFUSALS:
        return _decode_exactly(raw, message)
    if type(value) is not dict:
        return _decode_exactly(raw, message)
    return value


def _decode_exactly(raw: bytes, message: Message) -> dict[str, Any]:
    """The reference decoder: the record's value, or the ``BadRecordError`` that says why not."""
    # Decoded here, not by json.loads: that would also take UTF-16 and UTF-32 by their BOM.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRecordError("not_utf8", f"record {where(message)} is not UTF-8: {err}") from None
    try:
        # Duplicate names keep the last value, as JSON.parse does. NaN and Infinity (which
        # Python's json.dumps writes by default) are read as the doubles MongoDB stores.
        value = _DECODER.decode(text)
    except _OutOfRange as err:
        raise BadRecordError(
            "number_out_of_range",
            f"record {where(message)} has the number {quote(str(err))}, which BSON cannot hold "
            "(integers are int64, other numbers double)",
        ) from None
    except RecursionError:
        raise _too_deep(message) from None
    except ValueError as err:
        raise BadRecordError("not_json", f"record {where(message)} is not JSON: {err}") from None
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise BadRecordError("not_object", f"record {where(message)} is JSON but not an object ({kind})")
    return value


def check_fields(value: dict[str, Any], message: Message) -> None:
    """The value's nesting and field names by MongoDB's rules (see the module's docstring).

    ``value`` holds the document's top-level fields (``_id`` and ``_kafka`` aside), as a JSON
    decoder makes them: objects are ``dict``s and arrays ``list``s, never subclasses.
    """
    # Each screen is one pass in C; the rules run in Python only for what it lets through.
    if not _GOOD_NAMES.issuperset(value):
        for key in value:
            if key not in _GOOD_NAMES:
                if key[:1] == "$" or "\x00" in key or len(key) >= MAX_NAME_PARTS:
                    _check_name(key, message, top_level=True)
                if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
                    _GOOD_NAMES.add(key)
    if not _CONTAINER_TYPES.isdisjoint(map(type, value.values())):
        for child in value.values():
            if isinstance(child, _CONTAINERS):
                _check_tree(child, 2, message, in_id=False)


def check_id(_id: Any, message: Message) -> None:
    """An ``_id`` MongoDB stores: not an array (nor regex or undefined, which JSON cannot make);
    an embedded document without ``$``-prefixed or dotted names at any level."""
    if isinstance(_id, list):
        raise BadRecordError("invalid_id", f"record {where(message)}: an _id cannot be an array")
    if isinstance(_id, dict):
        _check_tree(_id, 2, message, in_id=True)


def _check_name(key: str, message: Message, top_level: bool = False, in_id: bool = False) -> None:
    if in_id and (key[:1] == "$" or "." in key):
        # storageValidIdField / BSONObj::storageValidEmbedded refuse $-prefixed names (the DBRef
        # form {$ref, $id} aside, which is refused here too); the docs add dotted names ("cannot
        # be used as a subfield in an _id document").
        raise BadRecordError(
            "invalid_id",
            f"record {where(message)}: an embedded-document _id cannot have the field name {quote(key)}",
        )
    if top_level and key[:1] == "$":
        # MongoDB 5.0+ inserts take them, but a replacement (write_mode=replace of an existing
        # _id) refuses top-level $-prefixed names (update/storage_validation.cpp): one rule for
        # both write modes, so switching modes never turns loadable records into refused ones.
        # Nested $-prefixed names are stored by both since 5.0.
        raise BadRecordError(
            "invalid_field",
            f"record {where(message)} has a top-level field name starting with $: {quote(key)}",
        )
    if "\x00" in key:
        raise BadRecordError(
            "invalid_field", f"record {where(message)} has a NUL in the field name {quote(key)}"
        )
    if key.count(".") >= MAX_NAME_PARTS:
        raise BadRecordError(
            "invalid_field",
            f"record {where(message)} has a field name of more than {MAX_NAME_PARTS} dot-separated parts "
            f"({quote(key)})",
        )


def _check_tree(root: dict[str, Any] | list[Any], depth: int, message: Message, in_id: bool) -> None:
    """Names and nesting below a top-level field; ``depth`` is ``root``'s level (2)."""
    stack = [(root, depth)]
    while stack:
        container, depth = stack.pop()
        if isinstance(container, dict):
            for key in container:
                if in_id or "\x00" in key or len(key) >= MAX_NAME_PARTS:
                    _check_name(key, message, in_id=in_id)
            children: Any = container.values()
        else:
            children = container
        for child in children:
            if isinstance(child, _CONTAINERS):
                if depth == MAX_NESTING:
                    raise _too_deep(message)
                stack.append((child, depth + 1))


def _too_deep(message: Message) -> BadRecordError:
    return BadRecordError(
        "too_deep", f"record {where(message)} nests deeper than MongoDB's limit of {MAX_NESTING} levels"
    )


class EncodedDocument(RawBSONDocument):
    """A ``RawBSONDocument`` of bytes this module's encoder wrote.

    ``RawBSONDocument``'s constructor parses the bytes' framing again (a third of a microsecond
    per record) to validate what the encoder has just written; this one only stores them, with
    the default raw codec options, as that constructor does. A subclass, so pymongo sends its
    bytes as they are (it looks at ``_type_marker``) and ``isinstance`` checks still hold.
    """

    __slots__ = ()

    def __init__(self, raw: bytes, codec_options: Any = None) -> None:
        # ``codec_options``: what pymongo's decoder passes when it makes one (``_encode_many``);
        # the bytes are always read with the default raw options.
        # The base class's private slots, as its __init__ sets them (tests/unit/test_records.py
        # compares the two, so a pymongo that renamed them fails there, not in a load).
        self._RawBSONDocument__raw = raw
        self._RawBSONDocument__inflated_doc = None
        self._RawBSONDocument__codec_options = DEFAULT_RAW_BSON_OPTIONS


def encode(document: dict[str, Any], message: Message) -> RawBSONDocument:
    """The document's BSON, at most ``MAX_DOCUMENT_BYTES``."""
    try:
        # What bson.encode calls once it has checked its arguments: the same bytes (the property
        # tests compare them with bson.encode's) without a third of a microsecond per record.
        raw = _dict_to_bson(document, False, DEFAULT_CODEC_OPTIONS)
    except UnicodeEncodeError as err:
        raise BadRecordError(
            "invalid_string",
            f"record {where(message)} has a string or field name that UTF-8 cannot encode ({err.reason}: "
            f"{quote(str(err.object[max(0, err.start - 10) : err.end + 10]))})",
        ) from None
    except OverflowError:
        raise BadRecordError(
            "number_out_of_range", f"record {where(message)} has an integer beyond int64"
        ) from None
    except InvalidDocument as err:
        raise BadRecordError(
            "invalid_field", f"record {where(message)} cannot be encoded to BSON: {err}"
        ) from None
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise BadRecordError(
            "too_large",
            f"record {where(message)} makes a {len(raw)}-byte document, over MongoDB's 16 MiB limit",
        )
    # Only a document over half the limit can carry an _id that large: skip the encode otherwise.
    if 2 * len(raw) + STATEMENT_OVERHEAD_BYTES > MAX_STATEMENT_BYTES:
        id_bytes = len(bson.encode({"_id": document["_id"]}))
        if len(raw) + id_bytes + STATEMENT_OVERHEAD_BYTES > MAX_STATEMENT_BYTES:
            raise BadRecordError(
                "too_large",
                f"record {where(message)} makes a {len(raw)}-byte document with a {id_bytes}-byte _id: "
                f"the statement that writes it repeats the _id in its filter and would be over "
                f"mongod's limit of {MAX_STATEMENT_BYTES} bytes per statement (16 MiB + 16 KiB); "
                "shorten the _id (the record's key or id field) or the value",
            )
    return EncodedDocument(raw)


def json_document(id_for: IdFunction, chain: Chain | None = None) -> RecordBuilder:
    """Turn a record whose value is a JSON object into a ``Document``.

    The value's own ``_id`` is dropped (the id strategy makes the ``_id``), and ``_kafka`` is set
    to the record's topic, partition and offset, and ``applied``, the fence:
    ``{"<topic>:<partition>": offset}`` (``kafka_position``; a value's own ``_kafka`` is
    overwritten; see docs/fencing.md). A ``chain`` of processors
    (``kafka_mongo_etl.processors``) shapes the value between the ``_id`` and the checks.
    Without one, the builder also builds whole batches (``build_documents``).
    """
    if chain:
        return processed_document(id_for, chain)
    return JsonDocuments(id_for)


Refusals = list[tuple[Message, BadRecordError]]


def build_documents(to_document: RecordBuilder, messages: list[Message]) -> tuple[list[Document], Refusals]:
    """Every record of ``messages`` through ``to_document``: the documents, and the records refused
    with their ``BadRecordError`` (each list in read order). A builder with a ``many`` method
    (``JsonDocuments``) builds the batch at once, with the same outcome record by record."""
    many = getattr(to_document, "many", None)
    if many is not None:
        return many(messages)
    return _one_by_one(to_document, messages)


def _one_by_one(to_document: RecordBuilder, messages: list[Message]) -> tuple[list[Document], Refusals]:
    documents: list[Document] = []
    refused: Refusals = []
    append = documents.append
    for message in messages:
        try:
            append(to_document(message))
        except BadRecordError as err:
            refused.append((message, err))
    return documents, refused


class JsonDocuments:
    """``json_document``'s builder without processors: one record (call it) or a batch (``many``).

    ``many`` makes the same documents and refusals as a call per record, with the work of a batch
    done in C wherever it can be: the int64 screen over the batch's joined values, one decoder
    call per record through ``map``, the names and container screens over every name and value of
    the batch at once, and one BSON encoding of the whole batch split back into each record's
    bytes (the encoder's per-call set-up cost more than encoding a small record). Any record that
    a screen does not pass sends its chunk of the batch through the call per record, which raises
    the reasons, so a refusal always reads as it does record by record.
    """

    __slots__ = ("_by_key", "id_for")

    def __init__(self, id_for: IdFunction) -> None:
        self.id_for = id_for
        self._by_key = is_key_ids(id_for)

    def __call__(self, message: Message) -> Document:
        value = decode_json(message)
        try:
            _id = self.id_for(message, value)
        except (ValueError, UnicodeDecodeError) as err:
            raise BadRecordError("no_id", f"record {where(message)}: {err}") from None
        if type(_id) is str:  # the common case, which check_id and id_identity pass as it is
            identity: Hashable = _id
        else:
            check_id(_id, message)
            identity = _canonical(_id)
        value.pop("_id", None)
        check_fields(value, message)
        # The value's own dict becomes {"_id": _id, **value, "_kafka": ...} without a copy: the
        # BSON encoder writes a top-level _id first wherever it stands, and a value's own _kafka
        # keeps its place, overwritten. (Splicing the _id and _kafka elements around the value's
        # encoding in Python was slower than the C encoder's dict: 2.6 against 1.9 µs.)
        value["_id"] = _id
        value["_kafka"] = kafka_position(message)
        return Document(_id, identity, encode(value, message), message)

    def many(self, messages: list[Message]) -> tuple[list[Document], Refusals]:
        """``messages`` built as ``build_documents`` says, chunk by chunk."""
        documents: list[Document] = []
        refused: Refusals = []
        if not messages:  # a consume() that brought nothing (or only events)
            return documents, refused
        values = list(map(_VALUE, messages))
        for start, end in _chunks(values):
            chunk = messages[start:end] if end - start < len(messages) else messages
            built = self._chunk(chunk, values[start:end])
            if built is None:
                more, refusals = _one_by_one(self, chunk)
                documents += more
                refused += refusals
            else:
                documents += built
        return documents, refused

    def _chunk(self, messages: list[Message], values: list[bytes | None]) -> list[Document] | None:
        """The chunk's documents (``values``: theirs), or ``None`` when a record may be refused."""
        if None in values:
            return None  # a tombstone
        # Joined with a non-digit: a run of 19 digits is in the batch exactly when it is in a record.
        joined = b"\n".join(values)
        if _DIGIT_RUN in joined.translate(_DIGITS_AS_NINES):
            return None
        try:
            decoded = list(map(_FAST_DECODER.decode, values))
        except _FAST_REFUSALS:
            return None
        if not _DICT_ONLY.issuperset(map(type, decoded)):
            return None
        ids = self._ids(messages, decoded)
        if ids is None:
            return None
        names = set(_EVERY(decoded))
        if "_id" in names:
            for value in decoded:
                value.pop("_id", None)
            names.discard("_id")
        if not (_GOOD_NAMES.issuperset(names) or _names_pass(names)):
            return None
        # Each value is an object, so its text has a '{' of its own; a nested object or array needs
        # one more '{' or '[' (a string may hold some too, which only sends the batch to the scan).
        nested = joined.count(b"{") + joined.count(b"[") > len(values)
        if nested and not _CONTAINER_TYPES.isdisjoint(map(type, _EVERY(map(dict.values, decoded)))):
            try:
                for value, message in zip(decoded, messages, strict=True):
                    check_fields(value, message)
            except BadRecordError:
                return None
        bodies = _encode_many(_documents(messages, ids, decoded))
        if bodies is None:
            return None
        identities = ids if _STR_ONLY.issuperset(map(type, ids)) else list(map(id_identity, ids))
        return list(map(Document, ids, identities, bodies, messages))

    def _ids(self, messages: list[Message], values: list[dict[str, Any]]) -> list[Any] | None:
        """Each record's ``_id``, or ``None`` when one has none or one MongoDB refuses."""
        try:
            if self._by_key:
                keys = list(map(_KEY, messages))
                return None if None in keys else list(map(bytes.decode, keys))
            ids = list(map(self.id_for, messages, values))
        except (ValueError, UnicodeDecodeError, BadRecordError):  # a key decoder's, say
            return None
        if not _STR_ONLY.issuperset(map(type, ids)):
            try:
                for _id, message in zip(ids, messages, strict=True):
                    check_id(_id, message)
            except BadRecordError:
                return None
        return ids


_VALUE = operator.methodcaller("value")
_KEY = operator.methodcaller("key")
_TOPIC = operator.methodcaller("topic")
_PARTITION = operator.methodcaller("partition")
_OFFSET = operator.methodcaller("offset")
_EVERY = itertools.chain.from_iterable
_DICT_ONLY = frozenset([dict])
_STR_ONLY = frozenset([str])
# A batch is encoded in chunks of about this many bytes of JSON: the encoding of a chunk is held
# twice for a moment (the whole and its split), and each chunk still pays the set-up only once.
_CHUNK_BYTES = 1024 * 1024
# No document of a chunk whose whole encoding is at most this long can be too large (``encode``).
_CHUNK_SAFE_BYTES = (MAX_STATEMENT_BYTES - STATEMENT_OVERHEAD_BYTES) // 2
# Splits a chunk's encoding into one EncodedDocument per record (pymongo's C decoder calls it).
_SPLIT_OPTIONS = CodecOptions(document_class=EncodedDocument)


def _chunks(values: list[bytes | None]) -> Iterator[tuple[int, int]]:
    """Where runs of about ``_CHUNK_BYTES`` of ``values`` start and end (a larger value alone)."""
    if None not in values and sum(map(len, values)) <= _CHUNK_BYTES:
        yield 0, len(values)
        return
    start, filled = 0, 0
    for end, value in enumerate(values):
        size = 0 if value is None else len(value)
        if filled and filled + size > _CHUNK_BYTES:
            yield start, end
            start, filled = end, 0
        filled += size
    yield start, len(values)


def _names_pass(names: set[str]) -> bool:
    """Whether top-level names not yet seen pass ``check_fields``' rule (remembered if they do)."""
    for name in names.difference(_GOOD_NAMES):
        if name[:1] == "$" or "\x00" in name or len(name) >= MAX_NAME_PARTS:
            try:
                _check_name(name, _NO_MESSAGE, top_level=True)
            except BadRecordError:
                return False
        if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
            _GOOD_NAMES.add(name)
    return True


def _documents(messages: list[Message], ids: list[Any], values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{"_id": _id, **value, "_kafka": kafka_position(message)}`` for each record: the ``_id``
    first, as the top-level encoder would write it, since these are encoded nested."""
    topics = set(map(_TOPIC, messages))
    partitions = list(map(_PARTITION, messages))
    offsets = map(_OFFSET, messages)
    if len(topics) != 1:  # a drain reads one topic; this is for other callers (and no records)
        return [
            {"_id": _id, **value, "_kafka": kafka_position(message)}
            for _id, value, message in zip(ids, values, messages, strict=True)
        ]
    (topic,) = topics
    fences = {partition: fence_key(topic, partition) for partition in set(partitions)}
    return [
        {
            "_id": _id,
            **value,
            "_kafka": {"topic": topic, "partition": p, "offset": o, "applied": {fences[p]: o}},
        }
        for _id, value, p, o in zip(ids, values, partitions, offsets, strict=True)
    ]


def _encode_many(documents: list[dict[str, Any]]) -> list[EncodedDocument] | None:
    """Each document's BSON, as ``encode`` makes it, from one encoding of them all; ``None`` when
    one cannot be encoded or may be too large (``encode`` says which, and why)."""
    try:
        whole = _dict_to_bson({"": documents}, False, DEFAULT_CODEC_OPTIONS)
    except (UnicodeEncodeError, OverflowError, InvalidDocument):
        return None
    if len(whole) > _CHUNK_SAFE_BYTES:
        return None
    # From a bytearray, pymongo's decoder copies each document out; from bytes it would hand
    # documents of 4 KiB and more out as views that keep the whole chunk alive.
    return _raw_to_dict(bytearray(whole), 4, len(whole) - 1, _SPLIT_OPTIONS, {})[""]


def value_problem(value: dict[str, Any]) -> str | None:
    """What MongoDB's rules refuse in a document of these fields (``None``: nothing); for the
    processors that run user code."""
    try:
        if any(not isinstance(name, str) for name in value):
            return "a field name is not a string"
        check_fields(value, _NO_MESSAGE)
        encode({"_id": None, **value}, _NO_MESSAGE)
    except BadRecordError as err:
        return str(err).replace(f"record {where(_NO_MESSAGE)}", "the document", 1)
    except (TypeError, ValueError) as err:  # a name that is not a string below the top, for one
        return f"{type(err).__name__}: {err}"
    return None


class _Unnamed:
    """Stands for the message in ``value_problem``'s checks: the reason names no record (the
    record path names it when it makes the reason a dead letter's)."""

    def topic(self) -> str:
        return "?"

    def partition(self) -> str:
        return "?"

    def offset(self) -> str:
        return "?"


_NO_MESSAGE: Any = _Unnamed()


def processed_document(
    id_for: IdFunction, chain: Chain, decode: Callable[[Message], dict[str, Any]] = decode_json
) -> RecordBuilder:
    """``json_document`` with the processors (or, with ``decode``, for values it makes from the
    record, e.g. a Schema Registry format's): the ``_id`` from the record as it came, then the
    chain, then MongoDB's rules on what the chain made. A refusal is the record's dead letter."""

    def to_document(message: Message) -> Document:
        value = decode(message)
        try:
            _id = id_for(message, value)
        except (ValueError, UnicodeDecodeError) as err:
            raise BadRecordError("no_id", f"record {where(message)}: {err}") from None
        check_id(_id, message)
        value.pop("_id", None)
        if chain:
            try:
                value = chain.apply(value, message, value_problem)
            except ProcessorRefusal as err:
                raise BadRecordError(err.code, f"record {where(message)}: {err}") from None
            value.pop("_id", None)  # a rename may make one: the id strategy's _id wins
        check_fields(value, message)
        document = {"_id": _id, **value, "_kafka": chain.kafka_field(message, kafka_position(message))}
        return Document(id=_id, identity=id_identity(_id), body=encode(document, message), message=message)

    return to_document
