"""Static checks of what `make compose-test` found when docker-compose.yaml first ran (issue 22).

Each test here is the one that would have caught a defect of the compose stack before a container
started: a compose file Debian's docker-compose 1.29 refused, images that could not be pointed at a
local build, fixed host ports, stand-ins drifting from the versions the project pins.
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
LOCAL = REPO / "docker" / "local"
LOCAL_IMAGES_ENV = REPO / "docker" / "local-images.env"
OVERRIDE = REPO / "docker" / "compose.local.yaml"
ENV_EXAMPLE = REPO / ".env.example"

# Each image variable, the official image it defaults to (the compose file's promise to users with a
# registry) and the docker/local/ directory that builds its stand-in.
IMAGES = {
    "AIRFLOW_BASE_IMAGE": ("apache/airflow:slim-3.3.2-python3.11", "airflow"),
    "POSTGRES_IMAGE": ("postgres:16", "postgres"),
    "REDIS_IMAGE": ("redis:7.2-bookworm", "redis"),
    "KAFKA_IMAGE": ("apache/kafka:4.4.0", "kafka"),
    "MONGO_IMAGE": ("mongo:8.0", "mongo"),
}
# Top-level keys Debian's docker-compose 1.29.2 accepts (its config schema); it rejects the rest.
COMPOSE_V1_TOP_LEVEL = {"version", "services", "networks", "volumes", "secrets", "configs"}
POM = "{http://maven.apache.org/POM/4.0.0}"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_debian_docker_compose_accepts_every_top_level_key(raw: dict[str, Any]) -> None:
    # `name:` made docker-compose 1.29 refuse the whole file; the project name lives in .env instead.
    unknown = {key for key in raw if key not in COMPOSE_V1_TOP_LEVEL and not key.startswith("x-")}
    assert unknown == set(), f"docker-compose 1.29 refuses top-level {sorted(unknown)}"
    assert env_file(ENV_EXAMPLE)["COMPOSE_PROJECT_NAME"] == "kafka-to-mongo"


def test_every_image_is_a_variable_defaulting_to_the_official_image(raw: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    for variable, (official, _) in IMAGES.items():
        if variable == "AIRFLOW_BASE_IMAGE":
            continue
        assert f"image: ${{{variable}:-{official}}}" in text, f"{variable} is not the image of its service"
    images = {service.get("image") for service in raw["services"].values()}
    airflow_image = raw["x-airflow-common"]["image"]
    assert {image for image in images if "${" not in image} == {airflow_image}, images


def test_the_airflow_base_is_a_build_argument_defaulting_to_the_official_slim_image(
    raw: dict[str, Any],
) -> None:
    official = IMAGES["AIRFLOW_BASE_IMAGE"][0]
    args = raw["x-airflow-common"]["build"]["args"]
    assert args == {"AIRFLOW_BASE_IMAGE": f"${{AIRFLOW_BASE_IMAGE:-{official}}}"}
    assert re.search(
        rf"^ARG AIRFLOW_BASE_IMAGE={re.escape(official)}\nFROM \$\{{AIRFLOW_BASE_IMAGE\}}$",
        DOCKERFILE.read_text(),
        flags=re.MULTILINE,
    )


def test_each_stand_in_is_built_from_docker_local_on_the_debian_base() -> None:
    local = env_file(LOCAL_IMAGES_ENV)
    assert local.keys() == IMAGES.keys()
    for variable, (official, directory) in IMAGES.items():
        dockerfile = (LOCAL / directory / "Dockerfile").read_text()
        assert "ARG DEBIAN_IMAGE=k2m-local/debian:bookworm\nFROM ${DEBIAN_IMAGE}\n" in dockerfile, directory
        assert local[variable] != official and local[variable].startswith("k2m-local/"), variable


def test_host_ports_are_variables_and_kafka_advertises_the_published_one(raw: dict[str, Any]) -> None:
    # Fixed ports clashed with anything else on the machine (the native stack uses 8080 and 9092).
    published = {name: service.get("ports", []) for name, service in raw["services"].items()}
    assert published["kafka"] == ["127.0.0.1:${KAFKA_HOST_PORT:-9092}:9092"]
    assert published["mongo"] == ["127.0.0.1:${MONGO_HOST_PORT:-27017}:27017"]
    assert published["airflow-apiserver"] == ["127.0.0.1:${AIRFLOW_HOST_PORT:-8080}:8080"]
    advertised = raw["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "HOST://localhost:${KAFKA_HOST_PORT:-9092}" in advertised.split(",")


def _pom_versions(pom: Path) -> dict[str, str]:
    properties = ET.parse(pom).getroot().find(f"{POM}properties")
    assert properties is not None, pom
    return {child.tag.removeprefix(POM): child.text or "" for child in properties}


def test_the_kafka_stand_in_runs_the_broker_version_of_the_dev_stack_and_the_compose_file() -> None:
    image = _pom_versions(LOCAL / "kafka" / "pom.xml")
    devstack = _pom_versions(REPO / "devstack" / "kafka" / "pom.xml")
    shared = {key: devstack[key] for key in ("kafka.version", "log4j.version", "slf4j.version")}
    assert {key: image[key] for key in shared} == shared
    assert IMAGES["KAFKA_IMAGE"][0] == f"apache/kafka:{image['kafka.version']}"


def test_the_mongo_stand_in_pins_the_locked_server_and_driver() -> None:
    lock = (REPO / "requirements-dev.txt").read_text()
    install = re.search(
        r"pip install --no-cache-dir (.+?) \\?\n", (LOCAL / "mongo" / "Dockerfile").read_text()
    )
    assert install, "docker/local/mongo/Dockerfile installs nothing with pip"
    for pin in install[1].split():
        assert re.search(rf"^{re.escape(pin)}$", lock, flags=re.MULTILINE), f"{pin} is not the lock's"


def test_scripts_copied_into_the_images_are_executable_in_git() -> None:
    # The engine's classic builder has no COPY --chmod: the mode must come from the files themselves.
    listed = subprocess.run(
        ["git", "ls-files", "-s", "docker/local"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    modes = {line.split("\t")[1]: line.split()[0] for line in listed}
    scripts = [
        path for path in modes if path.endswith((".sh", ".py", "entrypoint", "clean-logs", "mongo-ping"))
    ]
    assert scripts, "no scripts under docker/local are tracked"
    assert {path: modes[path] for path in scripts if modes[path] != "100755"} == {}
    for dockerfile in LOCAL.glob("*/Dockerfile"):
        assert "--chmod" not in dockerfile.read_text(), dockerfile


def test_the_override_changes_only_what_the_stand_ins_need() -> None:
    override = yaml.safe_load(OVERRIDE.read_text())
    assert set(override) == {"services"}
    changed = {name: set(service) for name, service in override["services"].items()}
    assert changed == {"mongo": {"command", "healthcheck"}, "airflow-scheduler": {"environment"}}
    assert set(override["services"]["airflow-scheduler"]["environment"]) == {
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL",
    }


def test_every_directory_a_copy_lands_in_is_made_first_by_the_airflow_user() -> None:
    # COPY makes a missing parent directory as root, --chown or not, and the build then runs as
    # airflow: pip could not write the package's egg-info into a root-owned /home/airflow/src/plugins.
    made: set[str] = {"/home/airflow"}
    for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines():
        if line.startswith("RUN ") and "mkdir -p" in line:
            for path in line.split("mkdir -p", 1)[1].split("&&")[0].split():
                parts = Path(path).parts
                made.update(str(Path(*parts[:end])) for end in range(2, len(parts) + 1))
        elif line.startswith("COPY ") and "/home/airflow/" in line:
            destination = line.split()[-1]
            directory = (
                destination.rstrip("/") if destination.endswith("/") else str(Path(destination).parent)
            )
            assert directory in made, f"{line!r}: {directory} would be made by COPY, owned by root"


def test_the_kafka_stand_in_runs_a_compose_command_as_given(raw: dict[str, Any]) -> None:
    # kafka-init gives a command on the Kafka image; an ENTRYPOINT that starts the broker swallowed it.
    assert raw["services"]["kafka-init"]["command"][0] == "/opt/kafka/bin/kafka-topics.sh"
    dockerfile = (LOCAL / "kafka" / "Dockerfile").read_text()
    assert not re.search(r"^ENTRYPOINT", dockerfile, flags=re.MULTILINE)
    assert 'CMD ["/opt/kafka/bin/run-broker.sh"]' in dockerfile


def _seconds(duration: str) -> float:
    return float(duration.removesuffix("s"))


def test_a_healthcheck_that_starts_airflow_is_stopped_before_its_timeout(raw: dict[str, Any]) -> None:
    # Docker leaves a check that outlives `timeout` running; on a busy machine Airflow's CLI checks
    # piled up, three per container, each a full Airflow import.
    for name, service in raw["services"].items():
        healthcheck = service.get("healthcheck")
        if not healthcheck:
            continue
        test = healthcheck["test"]
        command = test[1] if test[0] == "CMD-SHELL" else " ".join(test[1:])
        if not re.search(r"\b(airflow|celery) ", command) or "curl" in command:
            continue
        bounded = re.match(r"timeout (\d+) ", command)
        assert bounded, f"{name}: healthcheck {command!r} is not run under timeout"
        assert int(bounded[1]) < _seconds(healthcheck["timeout"]), name


def test_the_airflow_build_context_leaves_out_the_stand_ins() -> None:
    # ./Dockerfile builds from the repository root; the Kafka stand-in's jars (54 MB) are not its business.
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "docker/local" in ignored
    assert not re.search(r"^(COPY|ADD) .*docker/local", DOCKERFILE.read_text(), flags=re.MULTILINE)
