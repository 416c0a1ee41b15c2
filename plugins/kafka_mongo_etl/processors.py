"""Post-processors: an ordered chain, defined by configuration, that shapes each record's value
(and the ``_id`` made from its key) before it becomes a document.

The load option ``processors`` is a list of JSON objects, each ``{"type": <name>, ...}``; the
record path applies them in that order to the decoded value, after the ``_id`` is made (so the
id strategy reads the record as it arrived, as the MongoDB Kafka connector's ``DocumentIdAdder``
does) and before the document is checked against MongoDB's rules and encoded to BSON. With no
processors the record path is the one it always was (``records.json_document``): a load without
them pays nothing. docs/processors.md has one example of each.

==================  ===============================================================================
type                what it does
==================  ===============================================================================
``allow``           keep only the fields at ``fields`` (dotted paths, ``*`` wildcards), ``on`` the
                    value (default) or the key
``block``           remove the fields at ``fields``, ``on`` the value or the key
``rename``          rename fields by a map ``{"<path>": "<new name>"}``, ``on`` the value or the key
``rename_regex``    rename every field whose name matches ``pattern`` (``re.sub`` with
                    ``replace``), optionally only where its path matches ``paths``
``remove_nulls``    remove the fields whose value is null (at every level, or the top only)
``kafka_metadata``  what ``_kafka`` shows besides the fence: ``topic``, ``partition``, ``offset``
                    (the default), ``timestamp``, ``key``, ``headers``; ``[]`` for none
``insert_timestamp``  ``field`` = the time the document was first written (kept by later writes)
``modify_timestamp``  ``field`` = the time of the write that stored this version
``function``        ``function`` (a dotted path, the Kafka provider's ``apply_function`` idiom)
                    called as ``function(value, message, **kwargs)``; it returns the new value
==================  ===============================================================================

Paths: ``a.b`` is the field ``b`` of the embedded document ``a``; a path goes through an array
into each of its documents; each part may be a wildcard (``fnmatch``: ``*``, ``?``, ``[...]``).

**One exit.** A processor never fails a batch: what it cannot do for one record (a rename onto a
field the record has, a user function that raises or returns what MongoDB cannot store) raises
``ProcessorRefusal``, which the record path turns into a dead letter with the refusal's code
(``records.BAD_RECORD_CODES``). What a chain makes is then checked by MongoDB's rules like any
value.

**The fence stays.** ``_kafka.applied`` (docs/fencing.md) is always written; ``kafka_metadata``
chooses only what is shown beside it. ``insert_timestamp`` is kept from the stored document by
every later write (``$ifNull`` inside the fenced pipeline; ``WriteHints``), and both timestamps
change only when the fence lets the write through.

This module imports no client library: the option check (``options.check_options``) validates a
chain's specs with it before anything runs.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import importlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

# What ``_kafka`` may show besides the fence (``applied``), and what it shows by default.
KAFKA_FIELDS = ("partition", "offset", "topic", "timestamp", "key", "headers")
DEFAULT_KAFKA_FIELDS = ("topic", "partition", "offset")
# Field names a processor may not set: the _id is the id strategy's, _kafka the fence's.
RESERVED_FIELDS = ("_id", "_kafka")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# The dead-letter codes a chain can give a record (listed with the others in
# records.BAD_RECORD_CODES; a unit test checks they are there).
FUNCTION_FAILED = "function_failed"
FUNCTION_RESULT = "function_result"
RENAME_CONFLICT = "rename_conflict"

ResultCheck = Callable[[dict[str, Any]], "str | None"]
"""What the record path says is wrong with a value by MongoDB's rules (``None``: nothing)."""


class ProcessorRefusal(Exception):
    """A processor cannot make a document of this record; ``code`` is its dead-letter code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class SpecError(ValueError):
    """A processor spec that cannot work; the message names the entry and what to do."""


@dataclass(frozen=True)
class WriteHints:
    """What a write model must know of the chain: ``insert_only`` fields keep their stored value
    on every rewrite; ``own_kafka``: documents carry their own ``_kafka`` display fields, which a
    rewrite stores beside the fence instead of partition and offset."""

    insert_only: tuple[str, ...] = ()
    own_kafka: bool = False


class Processor:
    """One step of the chain. ``apply`` takes a value (or key) document and returns the new one;
    it may change its argument in place. Raises ``ProcessorRefusal`` for a record it cannot
    shape; ``from_spec`` raises ``SpecError`` for settings that cannot work."""

    kind: ClassVar[str]
    summary: ClassVar[str]
    # The spec's settings besides "type", and those it must have.
    settings: ClassVar[tuple[str, ...]] = ()
    required: ClassVar[tuple[str, ...]] = ()
    # Whether "on": "key" is allowed (the key document that a key _id is made from).
    keyed: ClassVar[bool] = False
    on: str = "value"

    def apply(self, fields: dict[str, Any], message: Any, check: ResultCheck) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def build(cls, spec: Mapping[str, Any], label: str) -> Processor:
        raise NotImplementedError


def _paths(value: Any, label: str, setting: str = "fields") -> tuple[tuple[str, ...], ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise SpecError(f'{label}: "{setting}" must be a non-empty list of dotted paths, e.g. ["a", "b.c"]')
    return tuple(_path(path, label) for path in value)


def _path(path: Any, label: str) -> tuple[str, ...]:
    if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
        raise SpecError(f"{label}: {path!r} is not a dotted path (names joined by '.', none empty)")
    return tuple(path.split("."))


def _name(value: Any, label: str, what: str, reserved: bool = True) -> str:
    if (
        not isinstance(value, str)
        or not value
        or "." in value
        or value.startswith("$")
        or "\x00" in value
        or (reserved and value in RESERVED_FIELDS)
    ):
        taken = f", {' or '.join(RESERVED_FIELDS)}" if reserved else ""
        raise SpecError(
            f"{label}: {what} must be a field name: not empty, without '.', NUL or a leading '$'{taken} "
            f"(got {value!r})"
        )
    return value


class _Tree:
    """Dotted paths as a tree of name patterns: ``children`` by pattern, ``ends`` where a path ends."""

    def __init__(self, paths: Sequence[tuple[str, ...]]) -> None:
        self.children: dict[str, _Tree] = {}
        self.ends = False
        for path in paths:
            node = self
            for part in path:
                node = node.children.setdefault(part, _Tree(()))
            node.ends = True

    def below(self, name: str) -> tuple[bool, list[_Tree]]:
        """Whether a path ends at ``name``, and the subtrees that go on below it."""
        ends, further = False, []
        for pattern, child in self.children.items():
            if _matches(name, pattern):
                ends = ends or child.ends
                if child.children:
                    further.append(child)
        return ends, further


def _merged(trees: list[_Tree]) -> _Tree:
    if len(trees) == 1:
        return trees[0]
    merged = _Tree(())
    merged.ends = any(tree.ends for tree in trees)
    for tree in trees:
        for pattern, child in tree.children.items():
            if pattern in merged.children:
                merged.children[pattern] = _merged([merged.children[pattern], child])
            else:
                merged.children[pattern] = child
    return merged


def _allowed(fields: dict[str, Any], tree: _Tree) -> dict[str, Any]:
    kept = {}
    for name, value in fields.items():
        ends, further = tree.below(name)
        if ends:
            kept[name] = value
        elif further:
            below = _merged(further)
            if isinstance(value, dict):
                kept[name] = _allowed(value, below)
            elif isinstance(value, list):
                kept[name] = [_allowed(item, below) for item in value if isinstance(item, dict)]
    return kept


def _blocked(fields: dict[str, Any], tree: _Tree) -> dict[str, Any]:
    kept = {}
    for name, value in fields.items():
        ends, further = tree.below(name)
        if ends:
            continue
        if further and isinstance(value, dict):
            value = _blocked(value, _merged(further))
        elif further and isinstance(value, list):
            below = _merged(further)
            value = [_blocked(item, below) if isinstance(item, dict) else item for item in value]
        kept[name] = value
    return kept


def _on(spec: Mapping[str, Any], label: str) -> str:
    on = spec.get("on", "value")
    if on not in ("value", "key"):
        raise SpecError(f'{label}: "on" is "value" (the default) or "key", not {on!r}')
    return on


class Allow(Processor):
    """Keep only the fields at the given paths (and the documents on the way to them)."""

    kind: ClassVar[str] = "allow"
    summary: ClassVar[str] = "keep only these fields"
    settings: ClassVar[tuple[str, ...]] = ("fields", "on")
    required: ClassVar[tuple[str, ...]] = ("fields",)
    keyed: ClassVar[bool] = True

    def __init__(self, paths: tuple[tuple[str, ...], ...], on: str = "value") -> None:
        self.paths, self.on, self.tree = paths, on, _Tree(paths)

    @classmethod
    def build(cls, spec: Mapping[str, Any], label: str) -> Processor:
        return cls(_paths(spec.get("fields"), label), _on(spec, label))

    def apply(self, fields: dict[str, Any], message: Any, check: ResultCheck) -> dict[str, Any]:
        return _allowed(fields, self.tree)


class Block(Allow):
    """Remove the fields at the given paths."""

    kind: ClassVar[str] = "block"
    summary: ClassVar[str] = "remove these fields"

    def apply(self, fields: dict[str, Any], message: Any, check: ResultCheck) -> dict[str, Any]:
        return _blocked(fields, self.tree)


def _renamed(
    fields: dict[str, Any], path: tuple[str, ...], new_name: Callable[[str, tuple[str, ...]], str]
) -> dict[str, Any]:
    """``fields`` with each name replaced by ``new_name(name, its path)``, at every level (through
    arrays into their documents); a new name that another field has is refused."""
    renamed: dict[str, Any] = {}
    for name, value in fields.items():
        here = (*path, name)
        if isinstance(value, dict):
            value = _renamed(value, here, new_name)
        elif isinstance(value, list):
            value = [_renamed(item, here, new_name) if isinstance(item, dict) else item for item in value]
        target = new_name(name, here)
        if target in renamed or (target != name and target in fields):
            raise ProcessorRefusal(
                RENAME_CONFLICT,
                f"renaming {'.'.join(here)[:80]!r} to {target[:40]!r} would overwrite a field of that name "
                "(change the rename, or block one of the two fields before it)",
            )
        renamed[target] = value
    return renamed


class Rename(Processor):
    """Rename fields by a map from a dotted path (wildcards allowed) to the new name."""

    kind: ClassVar[str] = "rename"
    summary: ClassVar[str] = "rename fields by a map {path: new name}"
    settings: ClassVar[tuple[str, ...]] = ("fields", "on")
    required: ClassVar[tuple[str, ...]] = ("fields",)
    keyed: ClassVar[bool] = True

    def __init__(self, renames: dict[str, str], on: str = "value") -> None:
        self.renames, self.on = renames, on
        self.patterns = [(tuple(path.split(".")), name) for path, name in renames.items()]

    @classmethod
    def build(cls, spec: Mapping[str, Any], label: str) -> Processor:
        renames = spec.get("fields")
        if not isinstance(renames, Mapping) or not renames:
            raise SpecError(
                f'{label}: "fields" must be a map {{"<dotted path>": "<new name>"}}, e.g. {{"a.b": "c"}}'
            )
        for path, name in renames.items():
            _path(path, label)
            _name(name, label, f"the new name of {path!r}", reserved=False)
        return cls(dict(renames), _on(spec, label))

    def new_name(self, name: str, path: tuple[str, ...]) -> str:
        for pattern, target in self.patterns:
            if len(pattern) == len(path) and all(map(_matches, path, pattern)):
                return target
        return name

    def apply(self, fields: dict[str, Any], message: Any, check: ResultCheck) -> dict[str, Any]:
        return _renamed(fields, (), self.new_name)


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


class RenameRegex(Processor):
    """Rename every field whose name matches ``pattern``: ``re.sub(pattern, replace, name)``, where
    the field's dotted path matches ``paths`` (a regex, default: every field)."""

    kind: ClassVar[str] = "rename_regex"
    summary: ClassVar[str] = "rename fields by a regular expression"
    settings: ClassVar[tuple[str, ...]] = ("pattern", "replace", "paths", "on")
    required: ClassVar[tuple[str, ...]] = ("pattern", "replace")
    keyed: ClassVar[bool] = True

    def __init__(self, pattern: str, replace: str, paths: str | None = None, on: str = "value") -> None:
        self.pattern, self.replace, self.on = re.compile(pattern), replace, on
        self.paths = re.compile(paths) if paths is not None else None

    @classmethod
    def build(cls, spec: Mapping[str, Any], label: str) -> Processor:
        regexes = {name: spec.get(name) for name in ("pattern", "paths") if spec.get(name) is not None}
        for name, regex in regexes.items():
            if not isinstance(regex, str):
                raise SpecError(f'{label}: "{name}" must be a regular expression (a string)')
            try:
                re.compile(regex)
            except re.error as err:
                raise SpecError(f'{label}: "{name}" {regex!r} is not a regular expression: {err}') from None
        if not isinstance(spec.get("replace"), str):
            raise SpecError(f'{label}: "replace" must be a string (the replacement; "" removes the match)')
        return cls(spec["pattern"], spec["replace"], spec.get("paths"), _on(spec, label))

    def new_name(self, name: str, path: tuple[str, ...]) -> str:
        if self.paths is not None and not self.paths.fullmatch(".".join(path)):
            return name
        return self.pattern.sub(self.replace, name)

    def apply(self, fields: dict[str, Any], message: Any, check: ResultCheck) -> dict[str, Any]:
        return _renamed(fields, (), self.new_name)


def _without_nulls(fields: dict[str, Any]) -> dict[str, Any]:
    kept = {}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, dict):
            value = _without_nulls(value)
        elif isinstance(value, list):
            value = [_without_nulls(item) if isinstance(item, dict) else item for item in value]
        kept[name] = value
    return kept


class RemoveNulls(Processor):
    """Remove the fields whose value is null: at every level (``nested``, the default; array
    elements are not fields and stay), or at the top only."""

    kind: ClassVar[str] = "remove_nulls"
    summary: ClassVar[str] = "remove fields whose value is null"
    settings: ClassVar[tuple[str, ...]] = ("nested",)

    def __init__(self, nested: bool = True) -> None:
        self.nested = nested

    @classmethod
    def build(cls, spec: Mapping[str, Any], label: str) -> Processor:
        nested = spec.get("nested", True)
        if not isinstance(nested, bool):
            raise SpecError(f'{label}: "nested" must be true or false')
        return cls(nested)

    def apply(self, fields: dict[str, Any], message: Any, check: ResultCheck) -> dict[str, Any]:
        if self.nested:
            return _without_nulls(fields)
        return {name: value for name, value in fields.items() if value is not None}


class KafkaMetadata(Processor):
    """What ``_kafka`` shows beside the fence (``applied``, always kept): ``fields`` from
    ``KAFKA_FIELDS``; ``[]`` shows nothing but the fence."""

    kind: ClassVar[str] = "kafka_metadata"
    summary: ClassVar[str] = "choose what _kafka shows besides the fence"
    settings: ClassVar[tuple[str, ...]] = ("fields",)
    required: ClassVar[tuple[str, ...]] = ("fields",)

    def __init__(self, fields: tuple[str, ...]) -> None:
        self.fields = fields

    @classmethod
    def build(cls, spec: Mapping[str, Any], label: str) -> Processor:
        fields = spec.get("fields")
        if isinstance(fields, str) or not isinstance(fields, Sequence):
            raise SpecError(f'{label}: "fields" must be a list of {", ".join(KAFKA_FIELDS)} ([] for none)')
        unknown = [name for name in fields if name not in KAFKA_FIELDS]
        if unknown:
            raise SpecError(f"{label}: unknown fields {unknown}; choose from {', '.join(KAFKA_FIELDS)}")
        return cls(tuple(dict.fromkeys(fields)))

    def apply(self, fields: dict[str, Any], message: Any, check: ResultCheck) -> dict[str, Any]:
        return fields  # it shapes _kafka, which the record path adds after the chain

    def shown(self, message: Any) -> dict[str, Any]:
        """``_kafka``'s display fields for ``message`` (the fence is added by the record path)."""
        shown: dict[str, Any] = {}
        for name in self.fields:
            if name == "partition":
                shown[name] = message.partition()
            elif name == "offset":
                shown[name] = message.offset()
            elif name == "topic":
                shown[name] = message.topic()
            elif name == "timestamp":
                kind, millis = message.timestamp()
                # TIMESTAMP_NOT_AVAILABLE (0): the broker and producer gave none.
                shown[name] = dt.datetime.fromtimestamp(millis / 1000, dt.UTC) if kind else None
            elif name == "key":
                shown[name] = _text_or_bytes(message.key())
            elif name == "headers":
                shown[name] = [
                    {"key": key, "value": _text_or_bytes(value)} for key, value in message.headers() or ()
                ]
        return shown


def _text_or_bytes(raw: bytes | None) -> str | bytes | None:
    """UTF-8 bytes as text, others as they are (BSON binary)."""
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def now() -> dt.datetime:
    """The time a timestamp processor sets, at BSON's millisecond precision."""
    moment = dt.datetime.now(dt.UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class ModifyTimestamp(Processor):
    """``field`` = the time the record was made into a document (just before its write): the
    stored value is that of the version stored last, since the fence lets only newer ones in."""

    kind: ClassVar[str] = "modify_timestamp"
    summary: ClassVar[str] = "set a field to the time of the write"
    settings: ClassVar[tuple[str, ...]] = ("field",)
    default_field: ClassVar[str] = "_modified_at"

    def __init__(self, field: str) -> None:
        self.field = field

    @classmethod
    def build(cls, spec: Mapping[str, Any], label: str) -> Processor:
        return cls(_name(spec.get("field", cls.default_field), label, '"field"'))

    def apply(self, fields: dict[str, Any], message: Any, check: ResultCheck) -> dict[str, Any]:
        fields[self.field] = now()
        return fields


class InsertTimestamp(ModifyTimestamp):
    """``field`` = the time the document was first written: every later write of its ``_id``
    keeps the stored value (``WriteHints.insert_only``)."""

    kind: ClassVar[str] = "insert_timestamp"
    summary: ClassVar[str] = "set a field to the time the document was created"
    default_field: ClassVar[str] = "_inserted_at"


class Function(Processor):
    """A user function, by dotted path (the Kafka provider's ``apply_function`` idiom): called
    as ``function(value, message, **kwargs)`` with the value document and the
    ``confluent_kafka.Message``; returns the new value document. Raising, or returning anything
    but a document MongoDB can store, makes the record a dead letter (``function_failed``,
    ``function_result``); nothing it does fails the batch."""

    kind: ClassVar[str] = "function"
    summary: ClassVar[str] = "call a user function per record (a dotted path)"
    settings: ClassVar[tuple[str, ...]] = ("function", "kwargs")
    required: ClassVar[tuple[str, ...]] = ("function",)

    def __init__(self, path: str, function: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        self.path, self.function, self.kwargs = path, function, kwargs

    @classmethod
    def build(cls, spec: Mapping[str, Any], label: str) -> Processor:
        path, kwargs = spec.get("function"), spec.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise SpecError(f'{label}: "kwargs" must be a map of keyword arguments')
        return cls(path, import_function(path, label), dict(kwargs))

    def apply(self, fields: dict[str, Any], message: Any, check: ResultCheck) -> dict[str, Any]:
        try:
            result = self.function(fields, message, **self.kwargs)
        except Exception as err:  # noqa: BLE001 - the user's code: its error is this record's, not the batch's
            raise ProcessorRefusal(
                FUNCTION_FAILED, f"the function {self.path} raised {type(err).__name__}: {err}"
            ) from None
        if not isinstance(result, dict):
            raise ProcessorRefusal(
                FUNCTION_RESULT,
                f"the function {self.path} returned {type(result).__name__}, not a document (a dict)",
            )
        problem = check(result)
        if problem is not None:
            raise ProcessorRefusal(
                FUNCTION_RESULT,
                f"the function {self.path} returned a document MongoDB cannot store: {problem}",
            )
        return result


def import_function(path: Any, label: str = "function") -> Callable[..., Any]:
    """The callable at the dotted ``path`` (``package.module.name``); ``SpecError`` saying why not."""
    if not isinstance(path, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", path):
        raise SpecError(f'{label}: "function" must be a dotted path "package.module.function", not {path!r}')
    module_name, _, name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - an import runs the user's module: any error refuses it
        raise SpecError(
            f"{label}: cannot import {module_name!r} ({type(err).__name__}: {err}); put it on the "
            "workers' Python path (plugins/ or an installed package)"
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise SpecError(f"{label}: {module_name!r} has no function {name!r}")
    return function


PROCESSORS: dict[str, type[Processor]] = {
    kind.kind: kind
    for kind in (
        Allow,
        Block,
        Rename,
        RenameRegex,
        RemoveNulls,
        KafkaMetadata,
        InsertTimestamp,
        ModifyTimestamp,
        Function,
    )
}


def build_processor(spec: Any, index: int) -> Processor:
    """The processor of ``processors[index]``; ``SpecError`` naming the entry and what to do."""
    label = f"processors[{index}]"
    if not isinstance(spec, Mapping) or spec.get("type") not in PROCESSORS:
        kind = spec.get("type") if isinstance(spec, Mapping) else None
        raise SpecError(
            f'{label} must be an object with a "type" of {", ".join(PROCESSORS)}'
            + (f", not {kind!r}" if kind is not None else f" (got {spec!r})")
        )
    kind = PROCESSORS[spec["type"]]
    label = f"{label} ({kind.kind})"
    unknown = sorted(set(spec) - {"type", "on", *kind.settings})
    if unknown:
        raise SpecError(f"{label}: unknown settings {unknown}; its settings are {', '.join(kind.settings)}")
    if not kind.keyed and spec.get("on", "value") != "value":
        raise SpecError(f'{label}: only allow, block, rename and rename_regex act "on": "key"')
    missing = [name for name in kind.required if name not in spec]
    if missing:
        raise SpecError(f"{label}: missing {', '.join(missing)}")
    return kind.build(spec, label)


class Chain:
    """The processors of a load, in order: ``value`` steps shape the value, ``key`` steps the key
    document a key ``_id`` is made from; ``kafka`` says what ``_kafka`` shows."""

    def __init__(self, processors: Sequence[Processor] = ()) -> None:
        self.processors = tuple(processors)
        self.value = tuple(p for p in self.processors if p.on == "value" and not isinstance(p, KafkaMetadata))
        self.key = tuple(p for p in self.processors if p.on == "key")
        kafka = [p for p in self.processors if isinstance(p, KafkaMetadata)]
        self.kafka = kafka[-1] if kafka else None
        self.hints = WriteHints(
            insert_only=tuple(p.field for p in self.processors if isinstance(p, InsertTimestamp)),
            own_kafka=self.kafka is not None,
        )

    def __bool__(self) -> bool:
        return bool(self.processors)

    def apply(self, fields: dict[str, Any], message: Any, check: ResultCheck) -> dict[str, Any]:
        """The value after every value step, in order; ``ProcessorRefusal`` for a record one of
        them cannot shape. ``check`` says what MongoDB would refuse in a document (the record
        path's rules), for the steps that run user code."""
        for processor in self.value:
            fields = processor.apply(fields, message, check)
        return fields

    def kafka_field(self, message: Any, position: dict[str, Any]) -> dict[str, Any]:
        """``_kafka``: ``position`` (the record path's, ``records.kafka_position``: topic,
        partition, offset and the fence ``applied``), or what ``kafka_metadata`` shows and the fence."""
        if self.kafka is None:
            return position
        return {**self.kafka.shown(message), "applied": position["applied"]}

    def shape_key(self, key: dict[str, Any], message: Any) -> dict[str, Any]:
        """``key`` (a record's key as an object) after every key step: ``ValueError`` (the record
        path's ``no_id``) when a step refuses it or the steps leave no field."""
        try:
            for step in self.key:
                key = step.apply(key, message, _no_check)
        except ProcessorRefusal as err:
            raise ValueError(f"the key processors cannot shape the key: {err}") from None
        if not key:
            raise ValueError("the key processors left no field of the key to make the _id from")
        return key

    def key_ids(self, id_for: Callable[[Any, dict[str, Any]], Any]) -> Callable[[Any, dict[str, Any]], Any]:
        """``id_for``, or with key steps the ``_id`` the key steps make of the record's key (a
        JSON object): ``ValueError`` (the record path's ``no_id``) for a key they cannot use."""
        if not self.key:
            return id_for

        def by_processed_key(message: Any, _value: dict[str, Any]) -> Any:
            raw = message.key()
            if raw is None:
                raise ValueError("record has no key, which the key processors shape into the _id")
            try:
                key = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                raise ValueError("the key is not JSON; key processors need a JSON object key") from None
            if not isinstance(key, dict):
                kind = type(key).__name__
                raise ValueError(f"the key is JSON but not an object ({kind}); key processors need one")
            key = self.shape_key(key, message)
            _check_key_id(key)
            return key

        return by_processed_key


def _no_check(_fields: dict[str, Any]) -> None:
    return None


def _check_key_id(key: dict[str, Any]) -> None:
    """The rules of an embedded-document ``_id`` that a tombstone's delete (never encoded as a
    document) must meet too: names without ``$`` prefix or ``.``, integers in int64, UTF-8."""
    stack: list[Any] = [key]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for name, value in item.items():
                if name.startswith("$") or "." in name or "\x00" in name:
                    raise ValueError(
                        f"the key document has the field name {name[:40]!r}, which an _id cannot have"
                    )
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and not INT64_MIN <= item <= INT64_MAX:
            raise ValueError("the key document has an integer beyond int64")
    json.dumps(key, ensure_ascii=False).encode("utf-8")  # UnicodeEncodeError (a ValueError): lone surrogates


def build_chain(specs: Sequence[Any] | str | None) -> Chain:
    """The chain of the ``processors`` option (a list of specs, or its JSON text); ``ValueError``
    naming every entry that cannot work."""
    specs = parse_specs(specs)
    processors, problems = [], []
    for index, spec in enumerate(specs):
        try:
            processors.append(build_processor(spec, index))
        except SpecError as err:
            problems.append(str(err))
    if problems:
        raise SpecError("; ".join(problems))
    return Chain(processors)


def parse_specs(specs: Sequence[Any] | str | None) -> list[Any]:
    """The ``processors`` option as a list (a JSON string, from a template or a conf, is read)."""
    if specs is None or specs == "":
        return []
    if isinstance(specs, str):
        try:
            specs = json.loads(specs)
        except ValueError as err:
            raise SpecError(f"processors is not JSON: {err}") from None
    if isinstance(specs, Mapping) or not isinstance(specs, Sequence) or isinstance(specs, str):
        raise SpecError(
            'processors must be a list of objects, e.g. [{"type": "block", "fields": ["password"]}]'
        )
    return list(specs)


def chain_problems(specs: Any, write_mode: str, id_strategy: str) -> list[str]:
    """What is wrong with the ``processors`` option, alone and with the write mode and id
    strategy (for ``options.option_problems``)."""
    try:
        chain = build_chain(specs)
    except SpecError as err:
        return [str(err)]
    if chain.key and (id_strategy != "key" or write_mode == "cdc"):
        return [
            'processors "on": "key" shape the _id made from the record key: they need id_strategy "key" '
            f"(not {id_strategy!r}) and a write mode other than cdc (its _id is the event key)"
        ]
    return []
