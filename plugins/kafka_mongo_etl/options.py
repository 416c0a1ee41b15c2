"""Every load option, defined once, and the one check of how options combine.

``LOAD_OPTIONS`` is the table: each option's name, default, JSON schema (type, bounds, allowed
values — taken from the registries), title, description, form section, and which task reads it.
Everything else is made from it:

- the ``kafka_to_mongo`` DAG's trigger form (``form_params``);
- ``KafkaToMongoOperator``'s keyword arguments and their defaults (``CONSUME_OPTIONS``);
- the ``ConsumeJob`` the drain runs (``job_values``: where each option goes in the job).

A name is the same at every hop: the form's param ``group_id`` is the operator's ``group_id`` is
the job's ``group_id``. Adding a load option is one entry here plus its behaviour; the tests in
``tests/unit/test_options.py`` check that it reaches the form, the operator and the job.

Airflow 3.3 validates each ``Param`` against its own JSON schema, one at a time; a DAG has no
schema over all of its params, so a rule such as "``id_field`` is required when ``id_strategy`` is
``field``" cannot be said in the form. ``option_problems`` states those rules once;
``check_options`` runs them before anything is produced and again when a drain starts, and fails
the run without retries (``ParamsRefusedError``).

This module imports no client library (no pymongo, no confluent_kafka): the DAG file builds its
form from it at parse time. The write modes and retention-gap policies are implemented in
modules that do import the clients, so their names and labels are declared here and a unit test
checks that they match ``write_models.WRITE_MODELS`` and ``drain.RETENTION_GAP_POLICIES``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kafka_mongo_etl.errors import ParamsRefusedError
from kafka_mongo_etl.ids import ID_FIELD_NAME_PATTERN, ID_STRATEGIES, MAX_ID_FIELDS, id_strategy
from kafka_mongo_etl.parallelism import ONE_TASK, PER_PARTITION
from kafka_mongo_etl.processors import PROCESSORS, chain_problems, parse_specs

if TYPE_CHECKING:
    from airflow.sdk import Param

log = logging.getLogger(__name__)

# Which task reads an option.
PRODUCE = "produce"
CONSUME = "consume"
PLAN = "plan"  # the DAG's drains task: how many consume tasks a run maps

# Form sections, top-down after the unsectioned basics.
KAFKA_SECTION = "Kafka topic and consumer"
ID_SECTION = "Document _id"
DEAD_LETTER_SECTION = "Dead letters"
TOPICS_SECTION = "Many topics"
SHAPE_SECTION = "Document shape (processors)"
CDC_SECTION = "Change events (write mode cdc)"
FORMAT_SECTION = "Record format (Schema Registry)"

INT64_MAX = 2**63 - 1
MAX_COUNT = 10_000_000
# {"num": n} must fit MongoDB's int64 for every n up to start + count - 1, whatever the count.
MAX_START = 2**63 - MAX_COUNT
# Kafka's rule for topic names (legal characters, at most 249 of them; "." and ".." are not).
TOPIC_PATTERN = r"^(?!\.{1,2}$)[a-zA-Z0-9._-]{1,249}$"
# route_by: the whole key, or a dotted path into the key or the value (kafka_mongo_etl.routing).
ROUTE_PATTERN = r"^(key|key(\.[^.\x00]+)+|value(\.[^.\x00]+)+)$"
# MongoDB: database names have none of /\. "$*<>:|? and at most 63 characters;
# collection names do not start with "system." and contain no "$" or NUL.
MONGO_DB_PATTERN = r'^[^/\\. "$*<>:|?]{1,63}$'
MONGO_COLLECTION_PATTERN = r"^(?!system\.)[^$\x00]{1,200}$"
# MongoDB: "<database>.<collection>" at most 255 bytes; a database name under 64 bytes.
MAX_NAMESPACE_BYTES = 255
MAX_DATABASE_BYTES = 63
# The longest collection name a run writes to: the dead letters beside the target.
DEAD_LETTER_SUFFIX = "_dlq"


@dataclass(frozen=True)
class WriteMode:
    """A write mode's name and label, and whether its ``_id``s must come from the record key
    (``needs_key_ids``: it acts on tombstones, which have no value)."""

    name: str
    label: str
    needs_key_ids: bool = False


# Every DAG of the package retries its tasks the same way: a retry starts from the committed
# offsets, so retrying is always safe; the backoff gives a server or broker time to come back.
DAG_DEFAULT_ARGS: dict[str, Any] = {
    "retries": 3,
    "retry_delay": dt.timedelta(seconds=15),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=10),
}

# Implemented by write_models.WRITE_MODELS under the same names (a unit test checks it).
WRITE_MODES: dict[str, WriteMode] = {
    mode.name: mode
    for mode in (
        WriteMode("replace", "Replace (insert, replace the _ids that exist; the latest version wins)"),
        WriteMode("insert", "Insert, keep existing _ids (for records that never change)"),
        WriteMode(
            "update", "Update ($set the record's fields; keeps fields a new version lacks; timestamps)"
        ),
        WriteMode(
            "delete_on_tombstone",
            "Replace, and a tombstone deletes its key's document (id: key)",
            needs_key_ids=True,
        ),
        WriteMode(
            "cdc",
            "Mirror a table from Debezium change events (upsert the row, delete on d; id: key)",
            needs_key_ids=True,
        ),
    )
}
# Implemented by drain.RETENTION_GAP_POLICIES under the same names (a unit test checks it).
RETENTION_GAP_POLICIES: dict[str, str] = {
    "fail": "Fail, loading nothing (the default)",
    "skip": "Skip the deleted records, count them in the audit, and go on",
}
PARALLELISM_CHOICES: dict[str, str] = {
    ONE_TASK: "One task drains every partition",
    PER_PARTITION: "One mapped task per partition (dynamic task mapping)",
}

# Earlier names of options, still accepted in a run's conf (with a warning).
RENAMED = {"consumer_group": "group_id", "stall_timeout_seconds": "stall_timeout"}


def _optional_str(value: Any) -> str | None:
    return str(value) if value else None


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_tuple(value: Any) -> tuple[str, ...] | None:
    return tuple(value) if value else None


def _processor_specs(value: Any) -> tuple[Any, ...] | None:
    """The ``processors`` option as a tuple of specs (a JSON string is read); checked by
    ``option_problems``, so a spec that cannot work is kept here as given."""
    try:
        specs = parse_specs(value)
    except ValueError:
        return value
    return tuple(specs) if specs else None


# Implemented by cdc.TIME_MODES under the same names (a unit test checks it).
CDC_TIME_MODES: dict[str, str] = {
    "exact": "Exact: microsecond and nanosecond times stay numbers, timestamptz an ISO string",
    "date": "BSON dates, cut to the millisecond",
}


@dataclass(frozen=True)
class LoadOption:
    """One load option. ``schema`` is the JSON schema of one value (what the form validates);
    ``job_field`` where the drain's ``ConsumeJob`` keeps it (``"drain.batch_size"``: a field of its
    ``drain`` settings), ``to_job`` how an operator argument (maybe a rendered template string)
    becomes that field. ``form_default`` differs from ``default`` only where the operator has no
    default (``REQUIRED``) but the form offers one."""

    name: str
    default: Any
    schema: Mapping[str, Any]
    title: str
    description: str
    readers: tuple[str, ...]
    section: str | None = None
    choices: Mapping[str, str] | None = None
    job_field: str | None = None
    to_job: Callable[[Any], Any] | None = None
    in_form: bool = True
    form_default: Any = None
    # Printed with a validation error: a pattern alone does not say what is wrong in words.
    hint: str | None = None
    templated: bool = False

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def param(self) -> Param:
        """The trigger form's ``Param`` for this option."""
        from airflow.sdk import Param

        keywords: dict[str, Any] = {**self.schema, "title": self.title, "description": self.description}
        if self.choices is not None:
            keywords["enum"] = list(self.choices)
            keywords["values_display"] = dict(self.choices)
        if self.section is not None:
            keywords["section"] = self.section
        if self.hint is not None:
            keywords["$comment"] = self.hint
        return Param(self.form_default if self.required else self.default, **keywords)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""The default of an option the operator cannot do without (``topic``, ``mongo_db`` …)."""

LOAD_OPTIONS: list[LoadOption] = [
    LoadOption(
        "count",
        500,
        {"type": "integer", "minimum": 1, "maximum": MAX_COUNT},
        "Records to produce",
        "How many numbered records this run produces (1 … 10,000,000).",
        readers=(PRODUCE,),
    ),
    LoadOption(
        "start",
        0,
        {"type": "integer", "minimum": 0, "maximum": MAX_START},
        "First number",
        'The first record is {"num": start}; the last is start + count − 1, which must fit '
        "int64 (start ≤ 2^63 − 10,000,000).",
        readers=(PRODUCE,),
    ),
    LoadOption(
        "topic",
        REQUIRED,
        {"type": "string", "pattern": TOPIC_PATTERN},
        "Kafka topic",
        "Topic to produce to and drain. Letters, digits, '.', '_' and '-'; at most 249.",
        readers=(PRODUCE, CONSUME),
        job_field="topic",
        form_default="testnum",
        hint="Use letters, digits, dots, underscores and hyphens only (at most 249).",
        templated=True,
    ),
    LoadOption(
        "mongo_db",
        REQUIRED,
        {"type": "string", "pattern": MONGO_DB_PATTERN},
        "MongoDB database",
        'Target database. Up to 63 characters; not allowed: space / \\ . " $ * < > : | ?',
        readers=(CONSUME,),
        job_field="mongo_db",
        form_default="testnum",
        hint='Use at most 63 characters, none of them a space or / \\ . " $ * < > : | ?',
        templated=True,
    ),
    LoadOption(
        "mongo_collection",
        REQUIRED,
        {"type": "string", "pattern": MONGO_COLLECTION_PATTERN},
        "MongoDB collection",
        "Target collection (no '$', must not start with 'system.'). Dead letters go to <name>_dlq.",
        readers=(CONSUME,),
        job_field="mongo_collection",
        form_default="testnum",
        hint="Use a name without '$' that does not start with 'system.'.",
        templated=True,
    ),
    LoadOption(
        "partitions",
        3,
        {"type": "integer", "minimum": 1, "maximum": 1000},
        "Partitions for a new topic",
        "Used only when produce creates the topic; an existing topic keeps its own.",
        readers=(PRODUCE,),
        section=KAFKA_SECTION,
    ),
    LoadOption(
        "group_id",
        None,
        {"type": ["null", "string"]},
        "Consumer group",
        "Empty: kafka_to_mongo.<database>.<collection>, one group per target. A new group "
        "starts at the earliest offset, so its first run reads the whole topic (safe, slower).",
        readers=(CONSUME,),
        section=KAFKA_SECTION,
        job_field="group_id",
        to_job=_optional_str,
        templated=True,
    ),
    LoadOption(
        "stall_timeout",
        30,
        {"type": "integer", "minimum": 1, "maximum": 3600},
        "Stall timeout (s)",
        "How long consume waits on a partition that gets no records below its snapshot "
        "before it fails the task, naming the partition and offset (everything loaded is "
        "committed first; the retry goes on from there).",
        readers=(CONSUME,),
        section=KAFKA_SECTION,
        job_field="drain.stall_timeout",
        to_job=float,
    ),
    LoadOption(
        "batch_size",
        5_000,
        {"type": "integer", "minimum": 1, "maximum": 100_000},
        "Records per write",
        "How many records consume reads, writes to MongoDB in one bulk write, and commits at a "
        "time. Larger is faster up to MongoDB's limits; a failed write is retried whole.",
        readers=(CONSUME,),
        section=KAFKA_SECTION,
        job_field="drain.batch_size",
        to_job=int,
    ),
    LoadOption(
        "on_retention_gap",
        "fail",
        {"type": "string"},
        "Records deleted by retention before they were loaded",
        "When the group's committed offset is below the earliest record still on the topic, "
        "the records between were lost to retention. Fail says so and loads nothing; skip "
        "loads from the earliest record left and records how many were lost per partition.",
        readers=(CONSUME,),
        section=KAFKA_SECTION,
        choices=RETENTION_GAP_POLICIES,
        job_field="on_retention_gap",
    ),
    LoadOption(
        "parallelism",
        ONE_TASK,
        {"type": "string"},
        "Drains per run",
        "One consume task for the whole topic, or one per partition, each under the lease of "
        "its partition. Both load each record exactly once; per partition spreads the work "
        "over workers. Both take the same per-partition leases, so they never overlap.",
        readers=(PLAN,),
        section=KAFKA_SECTION,
        choices=PARALLELISM_CHOICES,
    ),
    LoadOption(
        "id_strategy",
        "key",
        {"type": "string"},
        "Document _id",
        "Where each document's _id comes from. Do not change it on a collection that "
        "already holds data: the same records would load again under new ids.",
        readers=(CONSUME,),
        section=ID_SECTION,
        choices={name: strategy.label for name, strategy in ID_STRATEGIES.items()},
        job_field="id_strategy",
    ),
    LoadOption(
        "id_field",
        None,
        {"type": ["null", "string"], "minLength": 1},
        "_id field (only when Document _id is 'A field of the value')",
        "The value field used as _id; required with that strategy (the run fails before "
        "producing without it). A record without the field, or with null, is a dead letter.",
        readers=(CONSUME,),
        section=ID_SECTION,
        job_field="id_field",
        to_job=_optional_str,
    ),
    LoadOption(
        "id_fields",
        None,
        {
            "type": ["null", "array"],
            "items": {"type": "string", "pattern": ID_FIELD_NAME_PATTERN},
            "minItems": 1,
            "maxItems": MAX_ID_FIELDS,
            "uniqueItems": True,
        },
        "_id fields (only when Document _id is 'Several fields of the value')",
        'The value fields of a business key, in order: the _id is {"<field>": value, …}. '
        "Required with that strategy. 1–16 names without '.' or a leading '$'.",
        readers=(CONSUME,),
        section=ID_SECTION,
        job_field="id_fields",
        to_job=_optional_tuple,
        hint="Use 1 to 16 distinct field names without '.', NUL or a leading '$'.",
    ),
    LoadOption(
        "write_mode",
        "replace",
        {"type": "string"},
        "Write mode",
        "Every mode loads each record exactly once. Insert keeps the first version of an _id, so "
        "use it only when a record with a given _id never changes; delete_on_tombstone needs "
        "Document _id 'Record key'.",
        readers=(CONSUME,),
        section=ID_SECTION,
        choices={name: mode.label for name, mode in WRITE_MODES.items()},
        job_field="write_mode",
    ),
    LoadOption(
        "max_dead_letters",
        0,
        {"type": ["null", "integer"], "minimum": 0},
        "Dead letters allowed per run",
        "Records that cannot be loaded go to <collection>_dlq. The run fails (without "
        "retrying, after loading and committing everything else) when there are more than "
        "this many. Empty: no count limit.",
        readers=(CONSUME,),
        section=DEAD_LETTER_SECTION,
        job_field="dead_letter_policy.max_count",
        to_job=_optional_int,
    ),
    LoadOption(
        "max_dead_letter_ratio",
        None,
        {"type": ["null", "number"], "minimum": 0, "maximum": 1},
        "Dead-letter share allowed per run",
        "Fail when more than this share of the drained records are dead letters (0–1, e.g. 0.01 = 1%).",
        readers=(CONSUME,),
        section=DEAD_LETTER_SECTION,
        job_field="dead_letter_policy.max_ratio",
        to_job=_optional_float,
    ),
    LoadOption(
        "lease_wait",
        600.0,
        {"type": "number", "minimum": 0},
        "Lease wait (s)",
        "How long a drain waits for another drain of the same partitions to finish.",
        readers=(CONSUME,),
        job_field="lease_wait",
        to_job=float,
        in_form=False,
    ),
    LoadOption(
        "processors",
        None,
        {
            "type": ["null", "array"],
            "items": {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"enum": list(PROCESSORS)}},
            },
        },
        "Post-processors",
        "An ordered list of steps that shape each record's document, applied after its _id is "
        'made: [{"type": "block", "fields": ["password"]}, {"type": "rename", "fields": '
        '{"addr.zip": "postcode"}}]. Types: ' + ", ".join(PROCESSORS) + ". A record a step cannot "
        "shape is a dead letter. Reference and one example each: docs/processors.md.",
        readers=(CONSUME,),
        section=SHAPE_SECTION,
        job_field="processors",
        to_job=_processor_specs,
    ),
    LoadOption(
        "cdc_times",
        "exact",
        {"type": "string"},
        "Sub-millisecond times",
        "write_mode cdc, schemas.enable=true: what becomes of Debezium's MicroTimestamp, "
        "NanoTimestamp and ZonedTimestamp values (finer than BSON's millisecond dates).",
        readers=(CONSUME,),
        section=CDC_SECTION,
        choices=CDC_TIME_MODES,
        job_field="cdc_times",
    ),
    LoadOption(
        "cdc_keep_source",
        True,
        {"type": "boolean"},
        "Keep the change's source position (_cdc)",
        "write_mode cdc: store the change's op, commit time and log position (lsn, txId) in "
        "each document's _cdc field.",
        readers=(CONSUME,),
        section=CDC_SECTION,
        job_field="cdc_keep_source",
    ),
]

# Appended, not inserted: other options are appended to the table too, and its order is the form's.
LOAD_OPTIONS.append(
    LoadOption(
        "topics",
        None,
        {
            "type": ["null", "object"],
            "propertyNames": {"pattern": TOPIC_PATTERN},
            "additionalProperties": {"type": ["string", "object"]},
        },
        "Topic map (many topics, one run)",
        'Empty: drain "Kafka topic" into "MongoDB database"."MongoDB collection". Otherwise drain '
        'every topic of the map instead, each into its own namespace: {"orders": "shop.orders", '
        '"returns": {"collection": "shop.returns", "write_mode": "update"}}. An object entry may '
        "override any consume option for its topic (id_strategy, id_field, write_mode, group_id, "
        "batch_size, parallelism, …). Each topic is its own drain: its own consumer group "
        "(default: one per target), leases and audit. Produce still writes to Kafka topic only.",
        readers=(PLAN,),
        section=TOPICS_SECTION,
        hint='Map topic names to "<database>.<collection>" or to {"collection": …, overrides}.',
    )
)
LOAD_OPTIONS.append(
    LoadOption(
        "route_by",
        None,
        {"type": ["null", "string"], "pattern": ROUTE_PATTERN},
        "Route records to collections by a field",
        "Empty: every record goes to the target collection. 'value.<field>' (or 'key.<field>', "
        "'key' for the whole key) names, in each record, the collection of the target database it "
        "goes to; a record without the field goes to the target collection, one whose field is not a "
        "usable collection name is a dead letter. Dead letters stay in <target collection>_dlq.",
        readers=(CONSUME,),
        section=TOPICS_SECTION,
        job_field="route_by",
        to_job=_optional_str,
        hint="Use 'key', 'key.<field>' or 'value.<field>' (dots go into embedded documents).",
    )
)


# Implemented by schema_formats (json: the record path's own decoder; a unit test checks the rest).
VALUE_FORMATS: dict[str, str] = {
    "json": "JSON objects (UTF-8 text)",
    "avro": "Avro in Confluent's wire format (schema from the Schema Registry)",
    "json_schema": "JSON Schema in Confluent's wire format (validated against the registry's schema)",
    "protobuf": "Protobuf in Confluent's wire format (the schema's serialized file descriptor)",
}
# The same formats for keys; json is the key's bytes as they are (UTF-8 text).
KEY_FORMATS: dict[str, str] = {
    **VALUE_FORMATS,
    "json": "UTF-8 text (a JSON object where a key field is read)",
}
LOAD_OPTIONS.append(
    LoadOption(
        "value_format",
        "json",
        {"type": "string"},
        "Value format",
        "How record values are encoded. Avro, JSON Schema and Protobuf values carry a schema id (Confluent's "
        "wire format); the schema is fetched from the Schema Registry of the connection below, and "
        "the decoded value is loaded like a JSON object (Avro decimals as Decimal128, timestamps as "
        "dates). A value not in the format, of a schema the registry does not know, or that does "
        "not decode with its schema is a dead letter. docs/schema-registry.md.",
        readers=(CONSUME,),
        section=FORMAT_SECTION,
        choices=VALUE_FORMATS,
        job_field="value_format",
    )
)
LOAD_OPTIONS.append(
    LoadOption(
        "key_format",
        "json",
        {"type": "string"},
        "Key format",
        "How record keys are encoded, for the key _id strategy, route_by 'key...' and processors on "
        "the key. json (the default): the key's bytes as UTF-8 text (a JSON object for key fields). "
        "Avro, JSON Schema and Protobuf keys (Confluent's serializers for keys, subject "
        "<topic>-key) are decoded through the same Schema Registry: the _id is the decoded key, a "
        "primitive as it is, a record or message an embedded document. A key that does not decode "
        "is a dead letter. docs/schema-registry.md.",
        readers=(CONSUME,),
        section=FORMAT_SECTION,
        choices=KEY_FORMATS,
        job_field="key_format",
    )
)
LOAD_OPTIONS.append(
    LoadOption(
        "schema_registry_conn_id",
        "schema_registry_default",
        {"type": "string", "minLength": 1},
        "Schema Registry connection",
        "The Airflow connection of the Schema Registry (value and key formats avro, json_schema, "
        "protobuf): the extra's 'url', or http(s)://host:port/schema; login and password for basic "
        "authentication. A registry that cannot be reached fails the task (retried), never a record.",
        readers=(CONSUME,),
        section=FORMAT_SECTION,
        job_field="schema_registry_conn_id",
    )
)


def option(name: str) -> LoadOption:
    """The option called ``name``."""
    return next(found for found in LOAD_OPTIONS if found.name == name)


def consume_options() -> list[LoadOption]:
    """The options ``KafkaToMongoOperator`` takes, in the table's order."""
    return [found for found in LOAD_OPTIONS if CONSUME in found.readers]


def produce_option_names() -> list[str]:
    """The options ``ProduceNumberedBatchOperator`` takes (each an argument of the same name)."""
    return [found.name for found in LOAD_OPTIONS if PRODUCE in found.readers]


def form_params() -> dict[str, Param]:
    """The ``kafka_to_mongo`` trigger form: every option with ``in_form``, in the table's order."""
    return {found.name: found.param() for found in LOAD_OPTIONS if found.in_form}


def with_current_names(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with options given under an earlier name (``RENAMED``) moved to their name,
    logging a warning; a value under the current name wins over one under an earlier name."""
    moved = dict(values)
    for old, new in RENAMED.items():
        if old in moved:
            value = moved.pop(old)
            log.warning("Option %r is now called %r; use the new name in the run's conf", old, new)
            if moved.get(new) in (None, option(new).default):
                moved[new] = value
    return moved


def job_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ConsumeJob`` fields the consume options in ``values`` set: ``{"group_id": …,
    "drain": {"batch_size": …}, …}`` (a dotted ``job_field`` is a field of a nested settings
    object). Options missing from ``values`` take their default; each goes through ``to_job``."""
    found: dict[str, Any] = {}
    for load_option in consume_options():
        if load_option.job_field is None:
            continue
        value = values.get(load_option.name, load_option.default)
        if value is REQUIRED:
            raise TypeError(f"the load option {load_option.name!r} is required")
        if load_option.to_job is not None:
            value = load_option.to_job(value)
        owner, _, name = load_option.job_field.rpartition(".")
        (found.setdefault(owner, {}) if owner else found)[name] = value
    return found


def key_ids_problem(write_mode: str, strategy: str) -> str | None:
    """The rule between write modes and id strategies, stated once: a mode that acts on
    tombstones needs ``_id``s from the record key (a tombstone has no value to take one from)."""
    mode = WRITE_MODES.get(write_mode)
    chosen = ID_STRATEGIES.get(strategy)
    if mode is None or chosen is None or not mode.needs_key_ids or chosen.from_key:
        return None
    keyed = ", ".join(repr(name) for name, s in ID_STRATEGIES.items() if s.from_key)
    return (
        f"write_mode {write_mode!r} deletes the document of a tombstone's key, so it needs "
        f"id_strategy {keyed} (not {strategy!r}): a tombstone has no value to take an _id from"
    )


def cdc_format_problem(name: str, chosen: str) -> str:
    """Why ``value_format`` or ``key_format`` (``name``) ``chosen`` cannot go with write_mode cdc."""
    return (
        f"write_mode 'cdc' reads Debezium's JSON change events (and takes the _id from their JSON "
        f"key); {name} {chosen} is not supported with it: use {name} json (Connect's JsonConverter)"
    )


def option_problems(values: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``values`` taken together (each one already passed its own schema).

    Reads only the options present; a missing one takes its default.
    """
    problems = []
    strategy = values.get("id_strategy") or option("id_strategy").default
    write_mode = values.get("write_mode") or option("write_mode").default
    for name, choices in (
        ("write_mode", WRITE_MODES),
        ("on_retention_gap", RETENTION_GAP_POLICIES),
        ("cdc_times", CDC_TIME_MODES),
    ):
        if name in values and values[name] not in choices:
            problems.append(f"unknown {name} {values[name]!r}; choose one of {', '.join(choices)}")
    for name, formats in (("value_format", VALUE_FORMATS), ("key_format", KEY_FORMATS)):
        chosen = values.get(name) or option(name).default
        if chosen not in formats:
            problems.append(f"unknown {name} {chosen!r}; choose one of {', '.join(formats)}")
        elif chosen != "json" and write_mode == "cdc":
            problems.append(cdc_format_problem(name, repr(chosen)))
    try:
        id_strategy(strategy).build(values.get("id_field"), values.get("id_fields"))
    except ValueError as err:
        problems.append(str(err))
    if tombstones := key_ids_problem(write_mode, strategy):
        problems.append(tombstones)
    route_by = values.get("route_by")
    if (
        isinstance(route_by, str)
        and route_by.startswith("value")
        and WRITE_MODES.get(write_mode, WRITE_MODES["replace"]).needs_key_ids
    ):
        problems.append(
            f"write_mode {write_mode!r} deletes on tombstones, which have no value to route by: "
            f"route_by {route_by!r} would send their deletes to the target collection; route by "
            "'key' or a 'key.<field>'"
        )
    problems += chain_problems(values.get("processors"), write_mode, strategy)
    start, count = values.get("start"), values.get("count")
    if isinstance(start, int) and isinstance(count, int) and start + count - 1 > INT64_MAX:
        problems.append(
            f"start + count - 1 = {start + count - 1} is beyond int64 ({INT64_MAX}), which MongoDB "
            f"cannot store as a number; use a start of at most {INT64_MAX - count + 1} for {count} records"
        )
    problems += _namespace_problems(values.get("mongo_db"), values.get("mongo_collection"))
    if values.get("topics") is not None:
        problems += topic_map_problems(values)
    return problems


def _namespace_problems(database: Any, collection: Any) -> list[str]:
    if not (isinstance(database, str) and isinstance(collection, str)):
        return []
    problems = []
    if len(database.encode()) > MAX_DATABASE_BYTES:
        problems.append(
            f"mongo_db {database!r} is {len(database.encode())} bytes in UTF-8; MongoDB allows "
            f"{MAX_DATABASE_BYTES}"
        )
    namespace = f"{database}.{collection}{DEAD_LETTER_SUFFIX}"
    if len(namespace.encode()) > MAX_NAMESPACE_BYTES:
        problems.append(
            f"the dead-letter namespace {namespace!r} is {len(namespace.encode())} bytes; MongoDB allows "
            f"{MAX_NAMESPACE_BYTES} for <database>.<collection>: shorten mongo_db or mongo_collection"
        )
    return problems


# What a topic map's entry sets itself: an override of these is refused (say it in the entry).
TOPIC_MAP_SETS = ("topic", "mongo_db", "mongo_collection")


def topic_overridable() -> list[str]:
    """The options a topic map's entry may override: every option a drain or its plan reads,
    but the ones the entry sets itself (``TOPIC_MAP_SETS``) and the map."""
    return [
        found.name
        for found in LOAD_OPTIONS
        if (CONSUME in found.readers or PLAN in found.readers)
        and found.name not in (*TOPIC_MAP_SETS, "topics")
    ]


@dataclass(frozen=True)
class TopicTarget:
    """One entry of the topic map: ``topic`` drained into ``mongo_db.mongo_collection`` with the
    run's options, ``overrides`` (option name → value) replacing some of them."""

    topic: str
    mongo_db: str
    mongo_collection: str
    overrides: Mapping[str, Any]

    def options(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The run's ``values`` as this topic's drain takes them (without the map)."""
        merged = {name: value for name, value in values.items() if name != "topics"}
        merged.update(self.overrides)
        merged.update(topic=self.topic, mongo_db=self.mongo_db, mongo_collection=self.mongo_collection)
        return merged


def _entry_problems(topic: Any, entry: Any) -> tuple[TopicTarget | None, list[str]]:
    """The target of one topic-map entry, or the problems that make it unusable."""
    # Imported here: the DAG file imports this module at parse time, and needs no validator.
    from jsonschema import Draft7Validator
    from jsonschema.exceptions import best_match

    where = f"topics[{topic!r}]"
    problems = []
    if not isinstance(topic, str) or not re.search(TOPIC_PATTERN, topic):
        problems.append(f"{where}: not a Kafka topic name; {option('topic').hint}")
    if isinstance(entry, str):
        namespace, overrides = entry, {}
    elif isinstance(entry, Mapping):
        namespace, overrides = entry.get("collection"), {k: v for k, v in entry.items() if k != "collection"}
    else:
        return None, [*problems, f'{where}: give "<database>.<collection>" or an object, not {entry!r}']
    # A database name holds no '.', so the first one ends it; a collection name may hold more.
    database, dot, collection = namespace.partition(".") if isinstance(namespace, str) else ("", "", "")
    if not (dot and database and collection):
        problems.append(
            f'{where}: the target must be "<database>.<collection>" (as "collection" in an object '
            f"entry), not {namespace!r}"
        )
    else:
        for name, value in (("mongo_db", database), ("mongo_collection", collection)):
            if not re.search(option(name).schema["pattern"], value):
                problems.append(f"{where}: {value!r} is not a usable {name}; {option(name).hint}")
    allowed = topic_overridable()
    for name, value in overrides.items():
        if name not in allowed:
            fixed = " (the entry's target sets it)" if name in TOPIC_MAP_SETS else ""
            problems.append(
                f"{where}: {name!r} cannot be set per topic{fixed}; the options a topic may set are "
                f"collection, {', '.join(allowed)}"
            )
            continue
        found = option(name)
        schema = {**found.schema, **({"enum": list(found.choices)} if found.choices else {})}
        error = best_match(Draft7Validator(schema).iter_errors(value))
        if error is not None:
            problems.append(f"{where}: {name} {value!r} is not allowed: {found.hint or error.message}")
    if problems:
        return None, problems
    return TopicTarget(topic, database, collection, dict(overrides)), []


def topic_targets(topics: Mapping[str, Any]) -> list[TopicTarget]:
    """The topic map's entries, in the map's order; ``ValueError`` naming every unusable one."""
    targets, problems = [], []
    for topic, entry in topics.items():
        target, found = _entry_problems(topic, entry)
        problems += found
        if target is not None:
            targets.append(target)
    if problems:
        raise ValueError("; ".join(problems))
    return targets


def topic_map_problems(values: Mapping[str, Any]) -> list[str]:
    """What is wrong with the run's topic map: its entries, and each topic's options taken
    together (``option_problems`` of what the topic's drain takes, prefixed with the topic)."""
    topics = values.get("topics")
    if not isinstance(topics, Mapping) or not topics:
        return ['topics must be an object mapping topic names to "<database>.<collection>" (or empty)']
    problems = []
    for topic, entry in topics.items():
        target, found = _entry_problems(topic, entry)
        problems += found
        if target is not None:
            problems += [
                f"topics[{topic!r}]: {problem}" for problem in option_problems(target.options(values))
            ]
    return problems


def drain_options(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The options of each topic a run drains: the run's own (one drain, of ``topic``) without a
    topic map, else one per entry of the map with its target and overrides. Each holds every
    option a drain or its plan reads (``parallelism`` included), by name."""
    names = [*(found.name for found in consume_options()), "parallelism"]
    if values.get("topics") is None:
        drains = [dict(values)]
    else:
        drains = [target.options(values) for target in topic_targets(values["topics"])]
    return [{name: found[name] for name in names if name in found} for found in drains]


def check_options(values: Mapping[str, Any], *, done: str = "Nothing was produced or loaded") -> None:
    """Raise ``ParamsRefusedError`` (not retried) naming every problem of ``option_problems``;
    called before producing and when a drain starts. ``done`` says what happened so far."""
    problems = option_problems(values)
    if problems:
        raise ParamsRefusedError(
            "The run's options cannot work together: "
            + "; ".join(problems)
            + f". {done}; run again with other options."
        )


def reference_markdown() -> str:
    """docs/options.md: every load option, generated from ``LOAD_OPTIONS``
    (``PYTHONPATH=plugins python -m kafka_mongo_etl.options > docs/options.md``)."""
    lines = [
        "# Load options",
        "",
        "Generated from `plugins/kafka_mongo_etl/options.py` (`LOAD_OPTIONS`); do not edit by hand:",
        "`PYTHONPATH=plugins .venv/bin/python -m kafka_mongo_etl.options > docs/options.md`.",
        "Each option has the same name in the `kafka_to_mongo` trigger form (and a run's conf), as a",
        "`KafkaToMongoOperator` / `ProduceNumberedBatchOperator` argument, and in the drain's `ConsumeJob`.",
        "",
        "| Option | Default | Read by | Form section | Values |",
        "| --- | --- | --- | --- | --- |",
    ]
    for found in LOAD_OPTIONS:
        default = "required" if found.required else f"`{found.default!r}`"
        if found.required and found.form_default is not None:
            default += f" (form: `{found.form_default!r}`)"
        values = ", ".join(f"`{name}`" for name in found.choices) if found.choices else _schema_words(found)
        section = (found.section or "(top)") if found.in_form else "not in the form"
        lines.append(f"| `{found.name}` | {default} | {', '.join(found.readers)} | {section} | {values} |")
    lines.append("")
    for found in LOAD_OPTIONS:
        lines += [f"## `{found.name}` — {found.title}", "", found.description, ""]
        for name, label in (found.choices or {}).items():
            lines.append(f"- `{name}`: {label}")
        if found.choices:
            lines.append("")
        needed_by = [f"`{name}`" for name, strategy in ID_STRATEGIES.items() if found.name in strategy.needs]
        if needed_by:
            lines += [f"Required by id_strategy {', '.join(needed_by)}.", ""]
        if found.job_field:
            lines += [f"In the drain's job: `ConsumeJob.{found.job_field}`.", ""]
    renamed = ", ".join(f"`{old}` → `{new}`" for old, new in RENAMED.items())
    lines += [
        "## Renamed",
        "",
        f"Earlier names, still accepted in a run's conf with a warning: {renamed}.",
        "",
    ]
    return "\n".join(lines)


def _schema_words(found: LoadOption) -> str:
    kinds = found.schema.get("type")
    words = " or ".join(kinds) if isinstance(kinds, list) else str(kinds)
    bounds = [f"{key} {found.schema[key]:,}" for key in ("minimum", "maximum") if key in found.schema]
    return ", ".join([words, *bounds]) + (f"; {found.hint}" if found.hint else "")


if __name__ == "__main__":
    print(reference_markdown(), end="")
