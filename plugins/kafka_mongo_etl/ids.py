"""Names: batch identity, record keys, consumer groups, and the document ``_id`` strategies.

A record's key is built from its batch (the DAG run) and its number, so re-sending a batch —
a retried task, a cleared run, a repeated backfill date — produces the same keys, and the
MongoDB ``_id`` derived from them makes the second copy overwrite the first.

The ``_id`` strategies are small named classes in ``ID_STRATEGIES``, picked by name like the
write models (``kafka_mongo_etl.write_models.WRITE_MODELS``); each says what it needs: the
options it reads (``needs``) and whether the ``_id`` comes from the record key alone
(``from_key``, which a tombstone delete requires). This module imports no client library, so the
DAG form lists the strategies at parse time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

# A business-key field becomes a field name inside the _id document, where MongoDB refuses
# $-prefixed names and its docs refuse dotted ones; NUL is never a BSON name.
ID_FIELD_NAME_PATTERN = r"^[^$.\x00][^.\x00]*$"
MAX_ID_FIELDS = 16


def batch_id(dag_id: str, run_id: str) -> str:
    """The identity of one batch: stable across retries and clears of the same DAG run."""
    return f"{dag_id}/{run_id}"


def record_key(batch: str, num: int) -> str:
    return f"{batch}/{num}"


def default_group_id(mongo_db: str, mongo_collection: str) -> str:
    """One consumer group per target, so two targets of one topic never share offsets."""
    return f"kafka_to_mongo.{mongo_db}.{mongo_collection}"


IdFunction = Callable[[Any, dict[str, Any]], Any]


class IdStrategy:
    """Where a document's ``_id`` comes from; ``build`` raises ``ValueError`` for options that
    cannot work, and the function it returns raises ``ValueError`` for a record it cannot make an
    ``_id`` from (the record path turns that record into a dead letter)."""

    name: ClassVar[str]
    label: ClassVar[str]
    # The _id comes from the record key alone: a tombstone (no value) still has one.
    from_key: ClassVar[bool] = False
    # The load options this strategy reads besides id_strategy.
    needs: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def build(cls, field: str | None, fields: Sequence[str] | None) -> IdFunction:
        raise NotImplementedError


class KeyIds(IdStrategy):
    """The record key (UTF-8): exactly once across re-sent batches, and tombstones have one."""

    name: ClassVar[str] = "key"
    label: ClassVar[str] = "Record key (exactly once across re-sent batches)"
    from_key: ClassVar[bool] = True

    @classmethod
    def build(cls, field: str | None, fields: Sequence[str] | None) -> IdFunction:
        return _by_key


class CoordinateIds(IdStrategy):
    """``topic:partition:offset``: idempotent for redelivery of one record, not for a re-sent batch."""

    name: ClassVar[str] = "coordinates"
    label: ClassVar[str] = "topic:partition:offset"

    @classmethod
    def build(cls, field: str | None, fields: Sequence[str] | None) -> IdFunction:
        return _by_coordinates


class FieldIds(IdStrategy):
    """One field of the value, whatever its type (a string, a number, an embedded document)."""

    name: ClassVar[str] = "field"
    label: ClassVar[str] = "A field of the value"
    needs: ClassVar[tuple[str, ...]] = ("id_field",)

    @classmethod
    def build(cls, field: str | None, fields: Sequence[str] | None) -> IdFunction:
        if not field:
            raise ValueError("id_strategy 'field' needs id_field, the value field to use as _id")
        return _by_field(field)


class FieldsIds(IdStrategy):
    """A business key over several value fields: the ``_id`` an embedded document
    ``{field: value, ...}`` in the order given."""

    name: ClassVar[str] = "fields"
    label: ClassVar[str] = "Several fields of the value (a business key)"
    needs: ClassVar[tuple[str, ...]] = ("id_fields",)

    @classmethod
    def build(cls, field: str | None, fields: Sequence[str] | None) -> IdFunction:
        return _by_fields(check_id_fields(fields))


ID_STRATEGIES: dict[str, type[IdStrategy]] = {
    strategy.name: strategy for strategy in (KeyIds, CoordinateIds, FieldIds, FieldsIds)
}


def id_strategy(name: str) -> type[IdStrategy]:
    """The strategy called ``name``; ``ValueError`` naming the choices for any other name."""
    try:
        return ID_STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown id_strategy {name!r}; choose one of {', '.join(ID_STRATEGIES)}") from None


def id_function(strategy: str, field: str | None = None, fields: Sequence[str] | None = None) -> IdFunction:
    """How a record becomes a document ``_id``; raises ``ValueError`` for settings that cannot work.

    The functions raise ``ValueError`` for a record they cannot make an ``_id`` from: no key, a
    missing id field, or one that is null (a null ``_id`` would make every such record the same
    document).
    """
    return id_strategy(strategy).build(field, fields)


def check_id_fields(fields: Sequence[str] | None) -> tuple[str, ...]:
    """``id_fields`` for ``id_strategy=fields``: 1 to 16 distinct names MongoDB allows in an ``_id``."""
    if not fields or isinstance(fields, str):
        raise ValueError(
            "id_strategy 'fields' needs id_fields, a list of the value fields that make the _id "
            '(for example ["region", "order_id"])'
        )
    names = tuple(fields)
    if len(names) > MAX_ID_FIELDS:
        raise ValueError(f"id_fields has {len(names)} fields; use at most {MAX_ID_FIELDS}")
    if len(set(names)) != len(names):
        raise ValueError(f"id_fields {list(names)} names a field twice")
    bad = [name for name in names if not isinstance(name, str) or not re.match(ID_FIELD_NAME_PATTERN, name)]
    if bad:
        raise ValueError(
            f"id_fields {bad} cannot be field names in an _id document: use non-empty names "
            "without '.', NUL or a leading '$'"
        )
    return names


def _by_key(message: Any, _value: dict[str, Any]) -> Any:
    key = message.key()
    if key is None:
        raise ValueError("record has no key; use id_strategy 'coordinates', 'field' or 'fields'")
    return key.decode("utf-8")


def is_key_ids(id_for: IdFunction) -> bool:
    """Whether ``id_for`` is ``id_strategy='key'``'s function: the record key as UTF-8 text."""
    return id_for is _by_key


def _by_coordinates(message: Any, _value: dict[str, Any]) -> Any:
    return f"{message.topic()}:{message.partition()}:{message.offset()}"


def _by_field(field: str) -> IdFunction:
    def by_field(_message: Any, value: dict[str, Any]) -> Any:
        found = value.get(field)
        if found is None:
            missing = "is null" if field in value else "is missing"
            raise ValueError(f"the _id field {field!r} {missing} in the record's value")
        return found

    return by_field


def _by_fields(fields: tuple[str, ...]) -> IdFunction:
    # An embedded document rather than a joined string: it keeps each part's type (1 and "1"
    # stay apart), needs no separator that a value could contain ("a|b" + "c" vs "a" + "b|c"),
    # and stays queryable as _id.<field>. MongoDB compares embedded _ids field by field in
    # order, and the order is always id_fields' order, so one record always gets one _id.
    def by_fields(_message: Any, value: dict[str, Any]) -> Any:
        absent = [field for field in fields if value.get(field) is None]
        if absent:
            raise ValueError(f"the _id fields {absent} are missing or null in the record's value")
        return {field: value[field] for field in fields}

    return by_fields
