"""Record values in Confluent's Schema Registry wire format: Avro and JSON Schema (``value_format``).

A value in the wire format is the magic byte ``0x00``, the writer's schema id (4 bytes, big
endian), then the payload encoded with that schema (Protobuf puts the message indexes, zig-zag
varints, before its payload). The schema
is fetched from the registry by id once per drain and cached. The decoded value then takes the
record path of a JSON object (``records``: MongoDB's rules, the ``_id`` strategies, processors,
``_kafka`` and the fence): ``records.processed_document`` with the JSON decoder swapped for
a ``ValueDecoder``.

Per record, one exit as everywhere on the record path: a document, or a ``BadRecordError`` with
``bad_wire_format`` (not the wire format), ``unknown_schema`` (an id the registry does not know)
or ``schema_mismatch`` (the payload does not decode against, or validate with, its schema). A
registry that cannot be reached, or refuses the connection's credentials, is no record's fault:
``ConnectionProblem`` fails the task (retried), naming the connection and URL, before the batch
holding the record is written or committed.

Avro values become BSON the way a user expects: ``decimal`` → Decimal128, ``timestamp-millis`` /
``timestamp-micros`` (and the ``local-`` ones) → BSON dates (micros cut to the millisecond), ``date``
→ a date at midnight UTC, ``time-*`` → an ``HH:MM:SS[.ffffff]`` string, ``uuid`` → a UUID
(Binary subtype 4), ``bytes`` and ``fixed`` → Binary, enums → strings, unions → the branch's value.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bson import Binary, Decimal128
from confluent_kafka import Message

from kafka_mongo_etl.errors import ConnectionProblem
from kafka_mongo_etl.ids import IdFunction
from kafka_mongo_etl.processors import Chain
from kafka_mongo_etl.records import (
    BadRecordError,
    check_id,
    decode_json,
    where,
)

log = logging.getLogger(__name__)

MAGIC_BYTE = 0
HEADER_BYTES = 5  # the magic byte and the 4-byte schema id
# The registry's type of a schema, by value_format (the registry says AVRO when it says nothing).
SCHEMA_TYPES = {"avro": "AVRO", "json_schema": "JSON"}
DEFAULT_CONN_ID = "schema_registry_default"
# Connection extras passed to confluent-kafka's SchemaRegistryClient as they are.
CLIENT_SETTINGS = (
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "timeout",
    "max.retries",
    "retries.wait.ms",
    "retries.max.wait.ms",
)

ValueDecoder = Callable[[Message], dict[str, Any]]
# A record's key, decoded (any type the schema gives: a record/message is a dict); None: no key.
KeyDecoder = Callable[[Message], Any]


class WireFormatError(ValueError):
    """The bytes are not in Confluent's wire format; the message says how."""


def parse_wire(raw: bytes, side: str = "value") -> tuple[int, bytes]:
    """``(schema id, payload)`` of a value (or key: ``side``) in Confluent's wire format, or
    ``WireFormatError``."""
    if len(raw) < HEADER_BYTES:
        raise WireFormatError(
            f"the {side} is {len(raw)} bytes; the wire format needs at least {HEADER_BYTES} "
            "(the magic byte 0 and a 4-byte schema id)"
        )
    if raw[0] != MAGIC_BYTE:
        raise WireFormatError(
            f"the {side} starts with byte 0x{raw[0]:02x}, not the wire format's magic byte 0x00 "
            "(was it written without a Schema Registry serializer?)"
        )
    return int.from_bytes(raw[1:HEADER_BYTES], "big"), bytes(raw[HEADER_BYTES:])


@dataclass(frozen=True)
class RegistrySettings:
    """Where the registry is: the URL and the client's settings, made from an Airflow connection."""

    conn_id: str
    url: str
    client_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_connection(cls, conn_id: str) -> RegistrySettings:
        """The registry of Airflow connection ``conn_id``: the extra's ``url`` if given, else
        ``<scheme>://<host>[:<port>][/<schema>]`` (scheme: the connection type when it is http or
        https; Airflow puts a connection URI's path in ``schema``); login and password, when set,
        are sent as HTTP basic authentication. Raises ``ConnectionProblem`` without it."""
        from airflow.sdk import BaseHook

        try:
            conn = BaseHook.get_connection(conn_id)
        except Exception as err:
            raise ConnectionProblem(
                f"the Schema Registry connection {conn_id!r} could not be read ({err}); define it "
                '(e.g. AIRFLOW_CONN_SCHEMA_REGISTRY_DEFAULT=\'{"conn_type": "http", "host": '
                '"127.0.0.1", "port": 8081}\') or set schema_registry_conn_id'
            ) from err
        extra = conn.extra_dejson or {}
        url = extra.get("url")
        if not url:
            host = (conn.host or "").rstrip("/")
            if not host:
                raise ConnectionProblem(
                    f"the Schema Registry connection {conn_id!r} has no host and no 'url' in its extra"
                )
            if "://" not in host:
                scheme = conn.conn_type if conn.conn_type in ("http", "https") else "http"
                host = f"{scheme}://{host}"
            path = f"/{conn.schema.strip('/')}" if conn.schema else ""
            url = host + (f":{conn.port}" if conn.port else "") + path
        config: dict[str, Any] = {"url": url.rstrip("/")}
        config.update({name: extra[name] for name in CLIENT_SETTINGS if name in extra})
        if conn.login:
            config["basic.auth.credentials.source"] = "USER_INFO"
            config["basic.auth.user.info"] = f"{conn.login}:{conn.password or ''}"
        return cls(conn_id, config["url"], config)


class SchemaCache:
    """Schemas by id, fetched from the registry once each (unknown ids too: they are remembered)."""

    def __init__(self, settings: RegistrySettings, client: Any = None) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.settings = settings
        try:
            self.client = client or SchemaRegistryClient(settings.client_config)
        except (ValueError, TypeError) as err:
            raise ConnectionProblem(
                f"the Schema Registry connection {settings.conn_id!r} ({settings.url}) has settings "
                f"the client refuses: {err}"
            ) from err
        self._found: dict[int, Any] = {}

    def get(self, schema_id: int, fmt: str | None = None) -> Any:
        """The registry's schema ``schema_id`` (a confluent-kafka ``Schema``; ``fmt`` asks for a
        form, e.g. Protobuf's ``serialized``), ``None`` when the registry does not know it;
        ``ConnectionProblem`` when it cannot be asked."""
        if (schema_id, fmt) in self._found:
            return self._found[schema_id, fmt]
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            schema = self.client.get_schema(schema_id, fmt=fmt) if fmt else self.client.get_schema(schema_id)
        except SchemaRegistryError as err:
            if err.http_status_code != 404:
                raise self._unusable(f"answered HTTP {err.http_status_code}: {err.error_message}") from err
            schema = None
        except Exception as err:
            raise self._unusable(f"could not be reached: {type(err).__name__}: {err}") from err
        self._found[schema_id, fmt] = schema
        return schema

    def _unusable(self, what: str) -> ConnectionProblem:
        return ConnectionProblem(
            f"the Schema Registry of connection {self.settings.conn_id!r} at {self.settings.url} {what}. "
            "Nothing of this batch was written or committed; the task's retry goes on from there once "
            "the registry answers"
        )


class _Formatted:
    """A decoder for one format: the payload of a schema id as a dict (``BadRecordError``).

    ``side`` ``"key"`` decodes record keys (``key_format``) instead of values: the same wire
    format, schema cache and codes, reasons that name the key, any type the schema gives (a
    primitive as it is, a record or message as a dict), and ``None`` for a record without a key.
    """

    schema_type: str
    fetch_format: str | None = None

    def __init__(self, schemas: SchemaCache, side: str = "value") -> None:
        self.schemas = schemas
        self.keys = side == "key"
        self.side = side
        self.option = f"{side}_format"
        self._readers: dict[int, Any] = {}

    def __call__(self, message: Message) -> Any:
        raw = message.key() if self.keys else message.value()
        if raw is None:
            if self.keys:
                return None
            raise BadRecordError("tombstone", f"record {where(message)} has no value (a tombstone)")
        try:
            schema_id, payload = parse_wire(raw, self.side)
        except WireFormatError as err:
            raise BadRecordError("bad_wire_format", f"record {where(message)}: {err}") from None
        reader = self._readers.get(schema_id)
        if reader is None:
            reader = self._readers[schema_id] = self._reader(schema_id, message)
        return reader(payload, message)

    def _reader(self, schema_id: int, message: Message) -> Callable[[bytes, Message], dict[str, Any]]:
        schema = self.schemas.get(schema_id, self.fetch_format)
        if schema is None:
            return _refuse(
                "unknown_schema",
                f"the {self.side}'s schema id {schema_id} is not in the Schema Registry at "
                f"{self.schemas.settings.url} (a registry other than the producer's, or a schema "
                "deleted since)",
            )
        found = (schema.schema_type or "AVRO").upper()
        if found != self.schema_type:
            return _refuse(
                "schema_mismatch",
                f"the {self.side}'s schema id {schema_id} is a {found} schema, but {self.option} reads "
                f"{self.schema_type}",
            )
        # Protobuf's well-known types come with the protobuf package, whatever the registry holds.
        references = [
            ref.name for ref in schema.references or () if not ref.name.startswith("google/protobuf/")
        ]
        if references:
            return _refuse(
                "schema_mismatch",
                f"the {self.side}'s schema id {schema_id} references other schemas "
                f"({', '.join(references)}), which {self.option} does not resolve (docs/schema-registry.md)",
            )
        try:
            return self._compile(schema_id, schema.schema_str)
        except Exception as err:  # noqa: BLE001 - any parser error: the schema itself is unusable
            reason = f"the {self.side}'s schema id {schema_id} cannot be read: {type(err).__name__}: {err}"
            return _refuse("schema_mismatch", reason)

    def _compile(self, schema_id: int, text: str) -> Callable[[bytes, Message], dict[str, Any]]:
        raise NotImplementedError


def _refuse(code: str, reason: str) -> Callable[[bytes, Message], dict[str, Any]]:
    def refuse(_payload: bytes, message: Message) -> dict[str, Any]:
        raise BadRecordError(code, f"record {where(message)}: {reason}")

    return refuse


class AvroValues(_Formatted):
    """Avro payloads, read with the writer's schema (fastavro), mapped to BSON types."""

    schema_type = "AVRO"

    def _compile(self, schema_id: int, text: str) -> Callable[[bytes, Message], dict[str, Any]]:
        import fastavro

        parsed = fastavro.parse_schema(json.loads(text))

        def read(payload: bytes, message: Message) -> dict[str, Any]:
            stream = io.BytesIO(payload)
            try:
                value = fastavro.schemaless_reader(stream, parsed, None)
            except Exception as err:  # noqa: BLE001 - fastavro raises EOFError, ValueError, IndexError ...
                raise BadRecordError(
                    "schema_mismatch",
                    f"record {where(message)}: the {self.side}'s payload does not decode with Avro schema id "
                    f"{schema_id}: "
                    f"{type(err).__name__}: {err}",
                ) from None
            left = len(payload) - stream.tell()
            if left:
                raise BadRecordError(
                    "schema_mismatch",
                    f"record {where(message)}: {left} bytes of the {self.side} are left over after decoding "
                    f"with Avro schema id {schema_id}; the payload was not written with that schema",
                )
            if not isinstance(value, dict) and not self.keys:
                raise BadRecordError(
                    "not_object",
                    f"record {where(message)}: Avro schema id {schema_id} is not a record schema "
                    f"(the value is a {type(value).__name__}); only records become documents",
                )
            return _to_bson(value, message)

        return read


class JsonSchemaValues(_Formatted):
    """JSON payloads validated against their JSON Schema (jsonschema), then read like JSON values."""

    schema_type = "JSON"

    def _compile(self, schema_id: int, text: str) -> Callable[[bytes, Message], dict[str, Any]]:
        from jsonschema.exceptions import best_match
        from jsonschema.validators import validator_for

        schema = json.loads(text)
        validator_class = validator_for(schema)
        validator_class.check_schema(schema)
        validator = validator_class(schema)

        def read(payload: bytes, message: Message) -> dict[str, Any]:
            if self.keys:
                value = _json_key(payload, message)
            else:
                value = decode_json(_Payload(message, payload))  # the JSON path's own rules and codes
            error = best_match(validator.iter_errors(value))
            if error is not None:
                at = "/".join(str(part) for part in error.absolute_path) or f"(the {self.side})"
                raise BadRecordError(
                    "schema_mismatch",
                    f"record {where(message)}: the {self.side} does not match JSON schema id {schema_id} at "
                    f"{at}: {error.message[:200]}",
                )
            return value

        return read


def _json_key(payload: bytes, message: Message) -> Any:
    """A JSON Schema key's payload: any JSON value (an object by the JSON path's own rules);
    ``schema_mismatch`` naming the key when it is not JSON a BSON ``_id`` can hold."""
    try:
        return decode_json(_Payload(message, payload))
    except BadRecordError as err:
        if err.code != "not_object":
            raise BadRecordError(err.code, f"{err} (the record's key)") from None
    value = json.loads(payload)  # valid JSON: decode_json only refused its type
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise BadRecordError(
            "number_out_of_range", f"record {where(message)}: the key {value} is beyond BSON's int64"
        )
    return value


class _Payload:
    """A record whose value is the wire format's payload (for ``records.decode_json``)."""

    def __init__(self, message: Message, payload: bytes) -> None:
        self._message, self._payload = message, payload

    def value(self) -> bytes:
        return self._payload

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)


def parse_message_indexes(payload: bytes) -> tuple[list[int], bytes]:
    """Protobuf's message indexes at the start of ``payload`` (zig-zag varints: their count, then
    each index; a lone 0 stands for ``[0]``, the file's first message) and the message's bytes."""
    position = 0

    def varint() -> int:
        nonlocal position
        shift = result = 0
        while True:
            if position >= len(payload):
                raise WireFormatError("the Protobuf message indexes end before their last varint")
            byte = payload[position]
            position += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return (result >> 1) ^ -(result & 1)
            shift += 7
            if shift > 63:
                raise WireFormatError("a Protobuf message index varint is longer than 10 bytes")

    count = varint()
    if count < 0 or count > 100:
        raise WireFormatError(f"the Protobuf message index count is {count}, not 0 to 100")
    indexes = [varint() for _ in range(count)] or [0]
    return indexes, payload[position:]


class ProtobufValues(_Formatted):
    """Protobuf payloads, parsed with the schema's file descriptor (asked for in the registry's
    ``serialized`` form: a base64 ``FileDescriptorProto``, which Confluent's registry gives on
    request and Apicurio stores when the producer registered it so), mapped to BSON types."""

    schema_type = "PROTOBUF"
    fetch_format = "serialized"

    def _compile(self, schema_id: int, text: str) -> Callable[[bytes, Message], dict[str, Any]]:
        import base64
        import binascii

        from google.protobuf import descriptor_pb2, message_factory
        from google.protobuf.message import DecodeError

        try:
            file_proto = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError, DecodeError):
            raise ValueError(
                "the registry gave the .proto text, not the serialized file descriptor (format=serialized), "
                "and .proto text is not compiled here (docs/schema-registry.md)"
            ) from None
        pool = _pool_for(file_proto)
        file = pool.FindFileByName(file_proto.name)
        classes: dict[tuple[int, ...], Any] = {}

        def read(payload: bytes, message: Message) -> dict[str, Any]:
            try:
                indexes, body = parse_message_indexes(payload)
            except WireFormatError as err:
                reason = f"record {where(message)}'s {self.side}: {err}"
                raise BadRecordError("bad_wire_format", reason) from None
            key = tuple(indexes)
            if key not in classes:
                classes[key] = _message_at(file, indexes, schema_id, message_factory)
            if isinstance(classes[key], str):
                reason = f"record {where(message)}'s {self.side}: {classes[key]}"
                raise BadRecordError("schema_mismatch", reason)
            try:
                parsed = classes[key].FromString(body)
            except DecodeError as err:
                raise BadRecordError(
                    "schema_mismatch",
                    f"record {where(message)}: the {self.side}'s payload does not parse as "
                    f"{classes[key].DESCRIPTOR.full_name} of Protobuf schema id {schema_id}: {err}",
                ) from None
            return _protobuf_dict(parsed)

        return read


def _pool_for(file_proto: Any) -> Any:
    """A descriptor pool holding ``file_proto`` and the well-known types it imports."""
    import importlib

    from google.protobuf import descriptor_pool

    pool = descriptor_pool.DescriptorPool()
    for dependency in file_proto.dependency:
        if not dependency.startswith("google/protobuf/"):
            raise ValueError(f"it imports {dependency}, and only google/protobuf/ imports are resolved here")
        importlib.import_module("google.protobuf." + dependency.rsplit("/", 1)[1].replace(".proto", "_pb2"))
        pool.AddSerializedFile(descriptor_pool.Default().FindFileByName(dependency).serialized_pb)
    pool.Add(file_proto)
    return pool


def _message_at(file: Any, indexes: list[int], schema_id: int, message_factory: Any) -> Any:
    """The message class the indexes name in ``file`` (a string saying why, when none)."""
    found, types = None, file.message_types_by_name
    for index in indexes:
        candidates = list(types.values())
        if not 0 <= index < len(candidates):
            return f"the message indexes {indexes} name no message of Protobuf schema id {schema_id}"
        found = candidates[index]
        types = found.nested_types_by_name
    return message_factory.GetMessageClass(found)


_WRAPPERS = {
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
}


def _protobuf_dict(message: Any) -> dict[str, Any]:
    """A message's fields as a dict: every field without presence (proto3 scalars, repeated and
    map fields, default values included), and those with presence only when set."""
    out: dict[str, Any] = {}
    for member in message.DESCRIPTOR.fields:
        value = getattr(message, member.name)
        kind = member.message_type
        if kind is not None and kind.GetOptions().map_entry:
            value_field = kind.fields_by_name["value"]
            out[member.name] = {str(k): _protobuf_value(value_field, v) for k, v in value.items()}
        elif member.is_repeated:
            out[member.name] = [_protobuf_value(member, item) for item in value]
        elif member.has_presence and not message.HasField(member.name):
            continue
        else:
            out[member.name] = _protobuf_value(member, value)
    return out


def _protobuf_value(field: Any, value: Any) -> Any:
    if field.enum_type is not None:
        named = field.enum_type.values_by_number.get(value)
        return named.name if named is not None else value
    kind = field.message_type
    if kind is None:
        return value
    if kind.full_name == "google.protobuf.Timestamp":
        return value.ToDatetime(tzinfo=dt.UTC)
    if kind.full_name in _WRAPPERS:
        return value.value
    return _protobuf_dict(value)


FORMATS: dict[str, type[_Formatted]] = {
    "avro": AvroValues,
    "json_schema": JsonSchemaValues,
    "protobuf": ProtobufValues,
}


def value_decoder(value_format: str, conn_id: str = DEFAULT_CONN_ID) -> ValueDecoder | None:
    """The decoder of ``value_format`` (``None`` for ``json``, the record path's own), with the
    registry of Airflow connection ``conn_id``. ``ValueError`` for a format it does not read;
    ``ConnectionProblem`` for a connection that is missing or that the client refuses."""
    return registry_decoders(value_format, "json", conn_id)[0]


def registry_decoders(
    value_format: str, key_format: str = "json", conn_id: str = DEFAULT_CONN_ID
) -> tuple[ValueDecoder | None, KeyDecoder | None]:
    """The decoders of ``value_format`` and ``key_format`` (``None`` for ``json``: values take the
    record path's own decoder, keys are read as today), sharing one schema cache of the registry
    of Airflow connection ``conn_id``. ``ValueError`` for a format it does not read;
    ``ConnectionProblem`` for a connection that is missing or that the client refuses."""
    for option, name in (("value_format", value_format), ("key_format", key_format)):
        if name != "json" and name not in FORMATS:
            raise ValueError(unsupported_format(name, option))
    if value_format == key_format == "json":
        return None, None
    schemas = SchemaCache(RegistrySettings.from_connection(conn_id))
    values = FORMATS[value_format](schemas) if value_format != "json" else None
    keys = FORMATS[key_format](schemas, "key") if key_format != "json" else None
    return values, keys


def unsupported_format(name: str, option: str = "value_format") -> str:
    """Why ``name`` cannot be read as ``option``."""
    return f"unknown {option} {name!r}; choose json, {', '.join(FORMATS)}"


def decoded_key_ids(decode_key: KeyDecoder, chain: Chain) -> IdFunction:
    """The ``key`` id strategy for keys in a registry format (``key_format``): the ``_id`` is the
    decoded key — a primitive as it is, a record or message an embedded document, shaped by the
    ``chain``'s key steps when it has any — held to MongoDB's ``_id`` rules (``records.check_id``:
    ``invalid_id`` for an array, ``$``-prefixed or dotted names). A key that does not decode raises
    its ``BadRecordError`` (``bad_wire_format``, ``unknown_schema``, ``schema_mismatch``); a record
    without a key, or whose key is null, ``ValueError`` (the record path's ``no_id``)."""
    steps = chain.key

    def by_decoded_key(message: Message, _value: dict[str, Any]) -> Any:
        if message.key() is None:
            raise ValueError("record has no key; use id_strategy 'coordinates', 'field' or 'fields'")
        key = decode_key(message)
        if key is None:
            raise ValueError("the record's key decodes to null, which cannot be an _id")
        if steps:
            if not isinstance(key, dict):
                kind = type(key).__name__
                raise ValueError(f"the key decodes to a {kind}, not a record; key processors need one")
            key = chain.shape_key(key, message)
        check_id(key, message)
        _check_int64(key, message)
        return key

    return by_decoded_key


def _check_int64(key: Any, message: Message) -> None:
    """``number_out_of_range`` for an integer BSON cannot hold anywhere in ``key`` (a Protobuf
    ``uint64``): a tombstone's ``_id`` is only encoded in the delete, where it would fail the batch."""
    stack = [key]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif type(item) is int and not -(2**63) <= item < 2**63:
            raise BadRecordError(
                "number_out_of_range",
                f"record {where(message)}: the key holds the integer {item}, beyond BSON's int64",
            )


def _to_bson(value: Any, message: Message) -> Any:
    """An Avro-decoded value with the types BSON cannot take, or would take wrongly, mapped."""
    kind = type(value)
    if kind is dict:
        return {name: _to_bson(item, message) for name, item in value.items()}
    if kind is list:
        return [_to_bson(item, message) for item in value]
    if kind in (str, int, float, bool, bytes) or value is None:
        return value
    if isinstance(value, decimal.Decimal):
        try:
            return Decimal128(value)
        except (decimal.DecimalException, ValueError, TypeError):
            raise BadRecordError(
                "number_out_of_range",
                f"record {where(message)}: the decimal {str(value)[:40]} does not fit BSON's Decimal128 "
                "exactly (at most 34 significant digits, exponent -6176 to 6111)",
            ) from None
    if isinstance(value, dt.datetime):
        return value  # aware: stored as its UTC instant; naive (local-timestamp-*): taken as UTC
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return Binary.from_uuid(value)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value
