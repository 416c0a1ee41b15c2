"""Static checks of docker-compose.yaml, .env.example, docker/airflow.env and the Dockerfile.

There is no Docker engine where these run, so nothing here starts a container. The file is loaded the
way Compose loads it (YAML with anchors and merge keys, then ``${VAR}`` interpolation from the env file,
then the Compose Specification's JSON schema) and the wiring the DAG depends on is asserted: service
names, readiness ordering, listeners, connection ids, the topic and the secrets' source. Then the
findings of issue 12: one source of Airflow settings shared with the native stack, no topic
auto-creation, an image whose packages `pip check` accepts, drivers pinned and named, memory, logs.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
GITIGNORE = REPO / ".gitignore"
REQUIREMENTS = REPO / "requirements.txt"
SHARED_SETTINGS = REPO / "docker" / "airflow.env"
DOCKER_DOC = REPO / "docs" / "docker.md"
SCHEMA_FILE = Path(__file__).with_name("compose-spec.json")
DAG_FILE = REPO / "dags" / "kafka_to_mongo.py"

# The DAG's defaults, which the compose file must provide; test_dag_defaults_match_what_compose_provides
# checks them against dags/kafka_to_mongo.py.
DAG_ID = "kafka_to_mongo"
DAG_KAFKA_CONN_ID = "kafka_default"
DAG_MONGO_CONN_ID = "mongo_default"
DAG_DEFAULT_TOPIC = "testnum"
DAG_DEFAULT_PARTITIONS = 3

AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
    "airflow-cli",
    "airflow-log-groomer",
}
EXPECTED_SERVICES = AIRFLOW_SERVICES | {"postgres", "redis", "kafka", "kafka-init", "mongo"}
# Run to completion on `up`; everything that needs them waits with service_completed_successfully.
ONE_SHOT_SERVICES = {"airflow-init", "kafka-init"}
HOST_KAFKA_ADDRESS = ("localhost", 9092)

# Compose interpolation: $$ is a literal $; ${VAR}, $VAR, ${VAR:-default}, ${VAR-default},
# ${VAR:?error}, ${VAR?error}, ${VAR:+alternative}, ${VAR+alternative}.
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?+])(?P<argument>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


class MissingVariable(Exception):
    """A ``${VAR:?message}`` reference whose variable is not set (Compose refuses to start)."""


def interpolate(value: str, env: dict[str, str]) -> str:
    """Substitute variables in one string the way Compose does."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["invalid"] is not None:
            raise ValueError(f"invalid interpolation in {value!r} at {match.start()}")
        name = match["braced"] or match["plain"]
        operator, argument = match["operator"], match["argument"] or ""
        is_set = name in env
        is_set_and_not_empty = bool(env.get(name))
        present = is_set_and_not_empty if operator and operator.startswith(":") else is_set
        if operator in (":-", "-"):
            return env[name] if present else argument
        if operator in (":?", "?"):
            if not present:
                raise MissingVariable(f"{name}: {argument}")
            return env[name]
        if operator in (":+", "+"):
            return argument if present else ""
        return env.get(name, "")

    return _INTERPOLATION.sub(substitute, value)


def walk_strings(node: Any) -> Iterator[str]:
    """Every string value in a loaded YAML document (keys are not interpolated by Compose)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for child in node.values():
            yield from walk_strings(child)
    elif isinstance(node, list):
        for child in node:
            yield from walk_strings(child)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: interpolate_tree(child, env) for key, child in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(child, env) for child in node]
    return node


def variables_without_default(document: Any) -> set[str]:
    """Variables Compose needs from the environment: ${VAR}, $VAR, ${VAR?..} and ${VAR:?..}."""
    names = set()
    for text in walk_strings(document):
        for match in _INTERPOLATION.finditer(text):
            name = match["braced"] or match["plain"]
            if name and match["operator"] in (None, "?", ":?"):
                names.add(name)
    return names


def parse_env_file(path: Path) -> dict[str, str]:
    """The subset of Compose's .env syntax that .env.example uses: KEY=VALUE lines and # comments."""
    env = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, separator, value = line.partition("=")
        assert separator and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path}:{number}: {line!r}"
        env[key] = value
    return env


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (Compose allows a mapping or a list of KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def command_args(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(arg) for arg in command]


def option_value(args: list[str], option: str) -> str:
    assert args.count(option) == 1, f"{option} must appear once in {args}"
    return args[args.index(option) + 1]


def parse_listeners(value: str) -> dict[str, tuple[str, int]]:
    """KAFKA_(ADVERTISED_)LISTENERS: 'NAME://host:port,...' -> {NAME: (host, port)}."""
    listeners = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        listeners[name] = (host, int(port))
    return listeners


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """Short-syntax port mappings [ip:]host:container -> {container port: host port}."""
    mappings = {}
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        assert len(parts) >= 2, f"port {entry!r} publishes no fixed host port"
        mappings[int(parts[-1].split("/")[0])] = int(parts[-2])
    return mappings


def image_tag(image: str) -> str | None:
    """The tag of an image reference, or None when it has none (``repo``, ``host:5000/repo``)."""
    last_component = image.rsplit("/", 1)[-1].split("@")[0]
    return last_component.split(":", 1)[1] if ":" in last_component else None


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return parse_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """docker-compose.yaml as YAML, anchors and merge keys resolved, before interpolation."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any], env_example: dict[str, str]) -> dict[str, Any]:
    """The file as Compose sees it when .env is a copy of .env.example."""
    return interpolate_tree(raw, env_example)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def common_env(compose: dict[str, Any]) -> dict[str, str]:
    return environment(compose["x-airflow-common"])


@pytest.fixture(scope="module")
def shared_env() -> dict[str, str]:
    """docker/airflow.env, read as Compose reads an env_file."""
    return parse_env_file(SHARED_SETTINGS)


@pytest.fixture(scope="module")
def kafka_advertised(services: dict[str, dict[str, Any]]) -> dict[str, tuple[str, int]]:
    return parse_listeners(environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"])


@pytest.fixture(scope="module")
def internal_kafka_addresses(
    services: dict[str, dict[str, Any]], kafka_advertised: dict[str, tuple[str, int]]
) -> set[str]:
    """Advertised Kafka addresses that other containers can resolve: the service name or its hostname."""
    container_names = {"kafka", services["kafka"].get("hostname")}
    return {f"{host}:{port}" for host, port in kafka_advertised.values() if host in container_names}


# --- The helpers follow Compose's interpolation rules -----------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$$x", "$x"),
        ("a$${HOSTNAME}b", "a${HOSTNAME}b"),
        ("${SET}", "x"),
        ("$SET-", "x-"),
        ("${UNSET}", ""),
        ("${UNSET:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${EMPTY-d}", ""),
        ("${SET:+y}", "y"),
        ("${UNSET+y}", ""),
    ],
)
def test_interpolation_follows_compose(text: str, expected: str) -> None:
    assert interpolate(text, {"SET": "x", "EMPTY": ""}) == expected


@pytest.mark.parametrize("text", ["${EMPTY:?needed}", "${UNSET?needed}"])
def test_interpolation_refuses_a_missing_required_variable(text: str) -> None:
    with pytest.raises(MissingVariable, match="needed"):
        interpolate(text, {"EMPTY": ""})


def test_variables_without_default_ignores_defaults_and_escapes() -> None:
    document = {"a": ["${X}", "${Y:-1}", "${Z:?m}", "$$W", "$V", "${U:+alt}"]}
    assert variables_without_default(document) == {"X", "Z", "V"}


# --- The Compose Specification ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def test_compose_file_is_valid_against_the_compose_spec(
    schema_validator: jsonschema.protocols.Validator, compose: dict[str, Any]
) -> None:
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in schema_validator.iter_errors(compose)
    ]
    assert errors == []


@pytest.mark.parametrize(
    ("path", "bad_value"),
    [
        (("services", "kafka", "imagee"), "apache/kafka:4.4.0"),  # unknown key
        (("services", "kafka", "healthcheck", "interval"), 10),  # wrong type: a duration string
        (("services", "kafka", "depends_on"), {"mongo": {"condition": "service_ready"}}),  # bad enum
    ],
)
def test_schema_validation_rejects_a_broken_file(
    schema_validator: jsonschema.protocols.Validator,
    compose: dict[str, Any],
    path: tuple[str, ...],
    bad_value: Any,
) -> None:
    broken = copy.deepcopy(compose)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad_value
    assert list(schema_validator.iter_errors(broken)), f"the schema accepted {path} = {bad_value!r}"


# --- Services, readiness and images -----------------------------------------------------------------


def test_every_expected_service_is_defined(services: dict[str, dict[str, Any]]) -> None:
    assert EXPECTED_SERVICES - services.keys() == set()


def test_every_long_running_service_has_a_healthcheck_and_restarts(
    services: dict[str, dict[str, Any]],
) -> None:
    long_running = {
        name
        for name, service in services.items()
        if name not in ONE_SHOT_SERVICES and not service.get("profiles")
    }
    assert long_running >= {"postgres", "redis", "kafka", "mongo", "airflow-apiserver", "airflow-worker"}
    for name in sorted(long_running):
        healthcheck = services[name].get("healthcheck")
        assert healthcheck, f"{name} has no healthcheck"
        assert not healthcheck.get("disable"), f"{name} disables its healthcheck"
        assert healthcheck.get("test") and healthcheck["test"][0] in ("CMD", "CMD-SHELL"), name
        assert services[name].get("restart") in ("always", "unless-stopped"), name


def test_one_shot_jobs_run_once_and_are_waited_for(services: dict[str, dict[str, Any]]) -> None:
    for name in sorted(ONE_SHOT_SERVICES):
        assert services[name].get("restart", "no") == "no", f"{name} would run in a loop"
        waiters = [
            other
            for other, service in services.items()
            if (service.get("depends_on") or {}).get(name, {}).get("condition")
            == "service_completed_successfully"
        ]
        assert waiters, f"nothing waits for {name} to finish"


def test_depends_on_waits_for_readiness_not_for_start(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: short depends_on syntax only waits for start"
        for target, spec in depends_on.items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = spec.get("condition")
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target}'s missing healthcheck"
            else:
                assert condition == "service_completed_successfully", f"{name} -> {target}: {condition}"
                assert target in ONE_SHOT_SERVICES, f"{name} waits for long-running {target} to exit"


def test_services_wait_for_what_they_use(services: dict[str, dict[str, Any]]) -> None:
    def waits_for(name: str) -> dict[str, str]:
        return {target: spec["condition"] for target, spec in services[name]["depends_on"].items()}

    for name in AIRFLOW_SERVICES:
        assert waits_for(name)["postgres"] == "service_healthy", name
    for name in AIRFLOW_SERVICES - {"airflow-init", "airflow-cli"}:
        assert waits_for(name)["airflow-init"] == "service_completed_successfully", name
    # The worker runs the tasks: they need the execution API, the topic and MongoDB.
    assert (
        waits_for("airflow-worker").items()
        >= {
            "airflow-apiserver": "service_healthy",
            "kafka-init": "service_completed_successfully",
            "mongo": "service_healthy",
            "redis": "service_healthy",
        }.items()
    )
    assert waits_for("kafka-init") == {"kafka": "service_healthy"}


def test_nothing_sleeps_to_wait_for_a_service(raw: dict[str, Any]) -> None:
    sleeping = [text for text in walk_strings(raw["services"]) if re.search(r"\bsleep\b", text)]
    assert sleeping == []


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service.get("image")
        assert image, f"{name} has neither image nor build"
        tag = image_tag(image)
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned to a version"


def dockerfile_bases(dockerfile: Path = DOCKERFILE) -> list[str]:
    """The FROM images of a Dockerfile as built without --build-arg: ``${ARG}`` is the ARG's default."""
    text = dockerfile.read_text()
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)$", text, flags=re.MULTILINE))
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    return [re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m[1], m[0]), base) for base in bases]


def test_the_built_image_is_pinned_to_the_locked_airflow_version() -> None:
    bases = dockerfile_bases()
    assert bases, "Dockerfile has no FROM"
    for base in bases:
        tag = image_tag(base)
        assert tag and tag != "latest", f"Dockerfile: base image {base!r} is not pinned"
    locked = re.search(r"^apache-airflow==(\S+)$", REQUIREMENTS.read_text(), flags=re.MULTILINE)
    assert locked, "requirements.txt does not pin apache-airflow"
    assert bases[-1].startswith(f"apache/airflow:slim-{locked[1]}-"), (bases[-1], locked[1])


# --- Airflow ----------------------------------------------------------------------------------------


def test_airflow_services_share_one_image_and_environment(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], common_env: dict[str, str]
) -> None:
    common = compose["x-airflow-common"]
    assert common_env, "x-airflow-common has no environment"
    for name in sorted(AIRFLOW_SERVICES):
        service = services[name]
        assert (service.get("build"), service.get("image")) == (common["build"], common["image"]), name
        assert service["volumes"] == common["volumes"], name
        env = environment(service)
        differing = {key for key, value in common_env.items() if env.get(key) != value}
        assert differing == set(), f"{name} lacks or overrides the common {sorted(differing)}"


def test_airflow_runs_celery_on_redis_and_postgres_without_examples(
    common_env: dict[str, str], shared_env: dict[str, str]
) -> None:
    assert shared_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert shared_env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert common_env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert "@redis:6379/" in common_env["AIRFLOW__CELERY__BROKER_URL"]
    assert common_env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg://")
    assert common_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://")
    assert common_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"


def test_shared_airflow_secrets_come_from_the_env_file(raw: dict[str, Any]) -> None:
    raw_env = environment(raw["x-airflow-common"])
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", raw_env[key]), f"{key} is not a required ${{VAR}}"


def test_dags_are_mounted_and_the_package_is_installed_in_the_image(compose: dict[str, Any]) -> None:
    volumes = compose["x-airflow-common"]["volumes"]
    assert "./dags:/opt/airflow/dags" in volumes
    # One copy of the package: the image's installed one (a mounted plugins/ would shadow nothing,
    # since site-packages comes first on sys.path, and only mislead).
    assert not any(str(volume).startswith("./plugins") for volume in volumes)
    dockerfile = DOCKERFILE.read_text()
    for package in ("kafka_mongo_etl", "kafka_mongo_etl_ui"):
        assert re.search(rf"^COPY .*plugins/{package} /home/airflow/src/plugins/{package}$", dockerfile, re.M)


def test_airflow_commands(services: dict[str, dict[str, Any]]) -> None:
    assert command_args(services["airflow-apiserver"]) == ["api-server"]
    assert published_ports(services["airflow-apiserver"]) == {8080: 8080}
    assert command_args(services["airflow-scheduler"]) == ["scheduler"]
    assert command_args(services["airflow-dag-processor"]) == ["dag-processor"]
    assert command_args(services["airflow-triggerer"]) == ["triggerer"]
    assert command_args(services["airflow-worker"]) == ["celery", "worker"]
    assert services["airflow-cli"]["profiles"] == ["debug"]


def test_worker_is_scalable(services: dict[str, dict[str, Any]]) -> None:
    worker = services["airflow-worker"]
    assert "container_name" not in worker
    assert "hostname" not in worker
    assert "ports" not in worker


def test_airflow_init_migrates_and_writes_the_admin_password(
    services: dict[str, dict[str, Any]],
    common_env: dict[str, str],
    shared_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Run airflow-init's script with a stub `airflow`: the passwords file must hold the .env password."""
    init = services["airflow-init"]
    assert command_args(init)[:2] == ["bash", "-c"]
    script = command_args(init)[2]
    passwords_file = Path(common_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    # The file must live on a volume every Airflow service mounts, or the API server never sees it.
    mount_targets = [volume.split(":")[1] for volume in services["airflow-apiserver"]["volumes"]]
    assert str(passwords_file.parent) in mount_targets

    stub_bin = tmp_path / "bin"
    stub_bin.mkdir()
    calls = tmp_path / "airflow-calls"
    (stub_bin / "airflow").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (stub_bin / "airflow").chmod(0o755)
    (stub_bin / "python").symlink_to(sys.executable)
    env = {
        # What the container gets: its env_file, then its environment (which wins).
        **shared_env,
        **environment(init),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / passwords_file.name),
        "PATH": f"{stub_bin}{os.pathsep}{os.environ['PATH']}",
    }
    subprocess.run(["bash", "-c", script], env=env, check=True, timeout=60)

    assert calls.read_text().splitlines()[0] == "db migrate"
    written = tmp_path / passwords_file.name
    users = [entry.split(":")[0] for entry in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")]
    assert json.loads(written.read_text()) == {user: env["AIRFLOW_ADMIN_PASSWORD"] for user in users}
    assert stat.S_IMODE(written.stat().st_mode) == 0o600


# --- Connections, Kafka and MongoDB -----------------------------------------------------------------


def dag_file_defaults() -> dict[str, Any]:
    """Defaults read from the DAG file's syntax tree (no Airflow import): keyword defaults of the DAG
    factory (dag_id, kafka_conn_id, mongo_conn_id); and each form param's default, from the option
    table the form is made of (``kafka_mongo_etl.options``, which imports no client)."""
    defaults: dict[str, Any] = {}
    for node in ast.walk(ast.parse(DAG_FILE.read_text())):
        if isinstance(node, ast.FunctionDef):
            arguments = node.args.args[len(node.args.args) - len(node.args.defaults) :]
            for argument, default in zip(arguments, node.args.defaults, strict=True):
                if isinstance(default, ast.Constant):
                    defaults[argument.arg] = default.value
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and isinstance(value, ast.Call)
                    and getattr(value.func, "id", None) == "Param"
                    and value.args
                    and isinstance(value.args[0], ast.Constant)
                ):
                    defaults[f"param:{key.value}"] = value.args[0].value
    from kafka_mongo_etl.options import LOAD_OPTIONS  # plugins/ is on pytest's path

    for option in LOAD_OPTIONS:
        defaults.setdefault(
            f"param:{option.name}", option.form_default if option.required else option.default
        )
    return defaults


def test_dag_defaults_match_what_compose_provides() -> None:
    defaults = dag_file_defaults()
    assert {
        "dag_id": defaults.get("dag_id"),
        "kafka_conn_id": defaults.get("kafka_conn_id"),
        "mongo_conn_id": defaults.get("mongo_conn_id"),
        "topic": defaults.get("param:topic"),
        "partitions": defaults.get("param:partitions"),
    } == {
        "dag_id": DAG_ID,
        "kafka_conn_id": DAG_KAFKA_CONN_ID,
        "mongo_conn_id": DAG_MONGO_CONN_ID,
        "topic": DAG_DEFAULT_TOPIC,
        "partitions": DAG_DEFAULT_PARTITIONS,
    }


def connection(common_env: dict[str, str], conn_id: str) -> dict[str, Any]:
    variable = f"AIRFLOW_CONN_{conn_id.upper()}"
    assert variable in common_env, f"no {variable} for the DAG's connection {conn_id}"
    return json.loads(common_env[variable])


def test_kafka_connection_points_at_the_internal_listener(
    common_env: dict[str, str], internal_kafka_addresses: set[str]
) -> None:
    kafka = connection(common_env, DAG_KAFKA_CONN_ID)
    assert kafka["conn_type"] == "kafka"
    assert kafka["extra"]["bootstrap.servers"] in internal_kafka_addresses


def test_mongo_connection_uses_the_mongo_service_and_its_root_user(
    common_env: dict[str, str], services: dict[str, dict[str, Any]]
) -> None:
    mongo = connection(common_env, DAG_MONGO_CONN_ID)
    mongo_env = environment(services["mongo"])
    assert mongo["conn_type"] == "mongo"
    assert (mongo["host"], mongo["port"]) == ("mongo", 27017)
    assert mongo["login"] == mongo_env["MONGO_INITDB_ROOT_USERNAME"]
    assert mongo["password"] == mongo_env["MONGO_INITDB_ROOT_PASSWORD"]
    assert mongo["extra"]["authSource"] == "admin"


def test_kafka_advertises_a_container_and_a_host_listener(
    services: dict[str, dict[str, Any]],
    kafka_advertised: dict[str, tuple[str, int]],
    internal_kafka_addresses: set[str],
) -> None:
    kafka_env = environment(services["kafka"])
    bound = parse_listeners(kafka_env["KAFKA_LISTENERS"])
    protocols = dict(item.split(":") for item in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))

    assert internal_kafka_addresses, f"no advertised listener resolvable by containers: {kafka_advertised}"
    host_listeners = [name for name, address in kafka_advertised.items() if address == HOST_KAFKA_ADDRESS]
    assert host_listeners, f"no advertised listener for the host at localhost:9092: {kafka_advertised}"
    # The host listener is reachable only if its container port is published on the same host port.
    assert published_ports(services["kafka"]) == {bound[host_listeners[0]][1]: HOST_KAFKA_ADDRESS[1]}
    for name, (_, port) in kafka_advertised.items():
        assert bound[name][1] == port, f"listener {name} is advertised on {port} but bound on {bound[name]}"
        assert name in protocols, f"listener {name} has no security protocol"
    controller = kafka_env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in bound and controller not in kafka_advertised
    assert kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"] in kafka_advertised


def test_kafka_is_a_single_kraft_node(services: dict[str, dict[str, Any]]) -> None:
    kafka_env = environment(services["kafka"])
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka_env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{kafka_env['KAFKA_NODE_ID']}@kafka:29093"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
    ):
        assert kafka_env[key] == "1", key
    healthcheck = " ".join(services["kafka"]["healthcheck"]["test"])
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in healthcheck


def test_topic_job_creates_the_dag_default_topic(
    raw: dict[str, Any],
    services: dict[str, dict[str, Any]],
    env_example: dict[str, str],
    internal_kafka_addresses: set[str],
) -> None:
    job = services["kafka-init"]
    args = command_args(job)
    assert job["image"] == services["kafka"]["image"]
    assert args[0] == "/opt/kafka/bin/kafka-topics.sh"
    assert {"--create", "--if-not-exists"} <= set(args)
    assert option_value(args, "--topic") == DAG_DEFAULT_TOPIC
    assert option_value(args, "--bootstrap-server") in internal_kafka_addresses
    assert option_value(args, "--replication-factor") == "1"
    assert option_value(args, "--partitions") == env_example["KAFKA_TOPIC_PARTITIONS"]
    # Without the variable, the partition count falls back to the DAG's default.
    unset = {key: value for key, value in env_example.items() if key != "KAFKA_TOPIC_PARTITIONS"}
    default_args = command_args(interpolate_tree(raw["services"]["kafka-init"], unset))
    assert option_value(default_args, "--partitions") == str(DAG_DEFAULT_PARTITIONS)


def test_mongo_has_auth_a_credentialed_healthcheck_and_a_volume(
    raw: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    raw_env = environment(raw["services"]["mongo"])
    assert raw_env["MONGO_INITDB_ROOT_USERNAME"].startswith("${MONGO_ROOT_USER")
    assert raw_env["MONGO_INITDB_ROOT_PASSWORD"].startswith("${MONGO_ROOT_PASSWORD")
    test = " ".join(services["mongo"]["healthcheck"]["test"])
    assert "mongosh" in test and "db.adminCommand('ping')" in test
    assert "--password" in test and "MONGO_INITDB_ROOT_PASSWORD" in test
    volume, _, target = services["mongo"]["volumes"][0].partition(":")
    assert target == "/data/db" and volume in raw["volumes"]


# --- .env.example -------------------------------------------------------------------------------------


def test_env_example_covers_every_variable_without_a_default(
    raw: dict[str, Any], env_example: dict[str, str]
) -> None:
    needed = variables_without_default(raw)
    assert needed >= {
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_API_SECRET_KEY",
        "MONGO_ROOT_PASSWORD",
    }
    assert needed - env_example.keys() == set()
    assert [name for name in needed if not env_example[name]] == []


def test_compose_refuses_to_start_without_the_required_secrets(
    raw: dict[str, Any], env_example: dict[str, str]
) -> None:
    without_secret = {key: value for key, value in env_example.items() if key != "AIRFLOW_JWT_SECRET"}
    with pytest.raises(MissingVariable, match="AIRFLOW_JWT_SECRET"):
        interpolate_tree(raw, without_secret)


def test_env_example_marks_its_secrets_as_dev_only_placeholders() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    secrets = [
        index for index, line in enumerate(lines) if re.match(r"[A-Z_]*(SECRET|PASSWORD|KEY)[A-Z_]*=", line)
    ]
    assert len(secrets) >= 5
    for index in secrets:
        comments = []
        for previous in reversed(lines[:index]):
            if not previous.startswith("#"):
                break
            comments.append(previous)
        assert any("DEV-ONLY" in comment for comment in comments), f"{lines[index]} is not marked DEV-ONLY"


def test_env_file_is_git_ignored() -> None:
    assert "/.env" in GITIGNORE.read_text().splitlines()


# --- One source of Airflow settings: docker/airflow.env ---------------------------------------------


def test_every_airflow_service_reads_the_shared_settings_file(
    raw: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert raw["x-airflow-common"]["env_file"] == ["docker/airflow.env"]
    for name in sorted(AIRFLOW_SERVICES):
        assert services[name].get("env_file") == ["docker/airflow.env"], name
    assert (REPO / "docker/airflow.env").is_file()


def test_the_native_stack_reads_the_same_settings_file() -> None:
    from devstack.airflow import SHARED_SETTINGS as NATIVE_SETTINGS
    from devstack.airflow import shared_settings

    assert NATIVE_SETTINGS == SHARED_SETTINGS
    # The same keys and values, parsed the way the native stack parses them.
    assert {
        f"AIRFLOW__{section.upper()}__{key.upper()}": value
        for section, values in shared_settings().items()
        for key, value in values.items()
    } == parse_env_file(SHARED_SETTINGS)


def test_nothing_in_compose_overrides_a_shared_setting(
    services: dict[str, dict[str, Any]], shared_env: dict[str, str]
) -> None:
    """Compose gives `environment` precedence over `env_file`: a key in both would silently win here
    and differ from what the native stack (and its tests) run."""
    for name in sorted(AIRFLOW_SERVICES):
        assert set(environment(services[name])) & set(shared_env) == set(), name


def test_every_shared_setting_is_an_airflow_option(shared_env: dict[str, str]) -> None:
    from airflow.configuration import conf

    conf.load_providers_configuration()
    unknown = []
    for name in shared_env:
        section, key = re.fullmatch(r"AIRFLOW__([A-Z0-9_]+?)__([A-Z0-9_]+)", name).groups()
        if not conf.has_option(section.lower(), key.lower()):
            unknown.append(name)
    assert unknown == []


def test_shared_settings_file_is_plain_key_value_lines() -> None:
    """Compose and devstack parse it alike only without quotes, spaces around '=' or expansions."""
    for number, line in enumerate(SHARED_SETTINGS.read_text().splitlines(), start=1):
        if line and not line.startswith("#"):
            assert re.fullmatch(r"AIRFLOW__[A-Z0-9_]+=[^\s\"'$]+", line), f"airflow.env:{number}: {line!r}"


def test_database_urls_name_the_driver_the_native_stack_uses(
    common_env: dict[str, str], tmp_path: Path
) -> None:
    from devstack.postgres import PostgresServer

    native = PostgresServer(tmp_path).url().split("://")[0]
    assert native == "postgresql+psycopg"
    assert common_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].split("://")[0] == native
    assert common_env["AIRFLOW__CELERY__RESULT_BACKEND"].split("://")[0] == f"db+{native}"


# --- The image ----------------------------------------------------------------------------------------


def locked_versions() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line.strip())
        if match:
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_the_lock_pins_both_postgres_drivers_and_the_celery_stack() -> None:
    pins = locked_versions()
    # psycopg 3 for the sync engine and the result backend; asyncpg for Airflow's async engine.
    for package in (
        "psycopg",
        "psycopg-binary",
        "asyncpg",
        "apache-airflow-providers-celery",
        "celery",
        "redis",
    ):
        assert package in pins, package


def test_the_lock_passes_pip_check() -> None:
    """What `pip check` does in the image, done on the lock: every requirement of every locked package
    (for this Python and platform, without extras) is met by the locked version of a locked package.
    The requirements come from the packages' metadata, read from this virtualenv, which holds the same
    versions (make venv installs the lock)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = locked_versions()
    problems = []
    for name, version in sorted(pins.items()):
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            problems.append(f"{name}=={version} is locked but not installed here; run make venv")
            continue
        if dist.version != version:
            problems.append(f"{name}: {dist.version} installed, {version} locked; run make venv")
            continue
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            needed = canonicalize_name(requirement.name)
            if needed not in pins:
                problems.append(f"{name} {version} requires {requirement}, which the lock lacks")
            elif not requirement.specifier.contains(pins[needed], prereleases=True):
                problems.append(f"{name} {version} requires {requirement}, the lock has {pins[needed]}")
    assert problems == []


def dockerfile_runs() -> list[str]:
    """The Dockerfile's RUN instructions, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [line[4:].strip() for line in text.splitlines() if line.startswith("RUN ")]


def test_the_image_is_the_slim_image_plus_the_lock_and_fails_unless_pip_check_passes() -> None:
    bases = dockerfile_bases()
    assert bases[-1].startswith("apache/airflow:slim-"), f"{bases[-1]}: not the slim image"
    [install] = [run for run in dockerfile_runs() if 'pip" install' in run or "pip install" in run]
    steps = [step.strip() for step in install.split("&&")]
    assert steps[0] == 'python -m venv "${VIRTUAL_ENV}"'
    assert "--no-deps" in steps[1] and steps[1].endswith("-r /home/airflow/requirements.txt")
    assert "--no-deps" in steps[2] and steps[2].endswith("install --no-cache-dir --no-deps /home/airflow/src")
    assert steps[3].endswith('"${VIRTUAL_ENV}/bin/pip" check')
    # Chained with && only: a failed `pip check` fails the RUN, so the build (the version check after
    # it is Python, where a ";" is no shell separator).
    assert not re.search(r"\|\||;", " && ".join(steps[:4])), install
    assert re.search(
        r"^COPY .*\brequirements\.txt /home/airflow/requirements\.txt$", DOCKERFILE.read_text(), re.M
    )
    assert re.search(r'^ENV PATH="\$\{VIRTUAL_ENV\}/bin:\$\{PATH\}"$', DOCKERFILE.read_text(), re.M)
    assert not (REPO / "docker" / "requirements-compose.txt").exists()


# --- Kafka, memory, logs --------------------------------------------------------------------------------


def test_the_broker_never_creates_a_topic_on_its_own(services: dict[str, dict[str, Any]]) -> None:
    """Otherwise produce's first metadata request creates a new topic with 1 partition, before
    ensure_topic creates it with the partitions asked for (as the local stack's broker is set)."""
    assert environment(services["kafka"])["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    from devstack.kafka import KafkaBroker

    native = KafkaBroker(Path("/nonexistent")).server_properties()
    assert "auto.create.topics.enable=false" in native.splitlines()


def _gigabytes(java_size: str) -> float:
    number, unit = re.fullmatch(r"(\d+)([mMgG])", java_size).groups()
    return int(number) / (1024 if unit in "mM" else 1)


def test_heaps_and_caches_are_sized_for_an_8_gb_docker(
    services: dict[str, dict[str, Any]], shared_env: dict[str, str]
) -> None:
    heap = environment(services["kafka"])["KAFKA_HEAP_OPTS"]
    assert _gigabytes(re.search(r"-Xmx(\S+)", heap)[1]) <= 0.5, heap
    mongo = command_args(services["mongo"])
    assert float(option_value(mongo, "--wiredTigerCacheSizeGB")) <= 0.5, mongo
    # Each running task is a process of its own (~130 MB measured); 4 per worker keeps one under 1 GB.
    assert int(shared_env["AIRFLOW__CELERY__WORKER_CONCURRENCY"]) <= 4
    assert int(shared_env["AIRFLOW__API__WORKERS"]) == 1


def test_the_docs_ask_for_8_gb_and_give_the_budget() -> None:
    text = DOCKER_DOC.read_text()
    assert "8 GB" in text
    assert "about 4 GB" not in text
    assert "## Memory" in text


def test_a_log_groomer_trims_the_shared_logs_volume(
    raw: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    groomer = services["airflow-log-groomer"]
    assert command_args(groomer) == ["bash", "/clean-logs"]
    assert "airflow-logs:/opt/airflow/logs" in groomer["volumes"]
    env = environment(groomer)
    assert int(env["AIRFLOW__LOG_RETENTION_DAYS"]) >= 1
    assert int(env["AIRFLOW__LOG_CLEANUP_FREQUENCY_MINUTES"]) >= 1
    assert groomer["restart"] == "always"
    # The logs volume is the one every service writes its task and component logs to.
    assert "airflow-logs" in raw["volumes"]
