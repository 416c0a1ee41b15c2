"""devstack.debezium without a JVM: the connector's and the worker's settings."""

from __future__ import annotations

from xml.etree import ElementTree

from devstack.debezium import POM, ConnectDebezium, PostgresCapture
from devstack.postgres import LOGICAL_DECODING, PostgresServer


def test_a_capture_uses_pgoutput_creates_its_topics_and_sets_both_converters(tmp_path) -> None:
    server = PostgresServer(tmp_path / "pg", port=5999, extra_settings=LOGICAL_DECODING)
    capture = PostgresCapture(
        "Demo-1", server, "shop", ("public.a", "public.b"), "demo", schemas_enable=False
    )
    config = capture.config()
    assert config["plugin.name"] == "pgoutput"
    assert config["slot.name"] == config["publication.name"] == "demo_1"
    assert config["table.include.list"] == "public.a,public.b"
    assert (config["database.port"], config["database.user"]) == ("5999", "airflow")
    assert config["database.password"] == server.password()
    # The stack's broker never creates topics on demand: Connect must, with one replica.
    assert config["topic.creation.default.replication.factor"] == "1"
    assert config["key.converter.schemas.enable"] == config["value.converter.schemas.enable"] == "false"
    assert capture.topic("public.a") == "demo.public.a"
    assert (
        PostgresCapture("x", server, "d", ("public.a",), "p", extra={"plugin.name": "decoderbufs"}).config()[
            "plugin.name"
        ]
        == "decoderbufs"
    )


def test_the_worker_keeps_offsets_in_a_file_under_its_state(tmp_path) -> None:
    worker = ConnectDebezium(tmp_path, "127.0.0.1:9092", rest_port=18083)
    properties = dict(line.split("=", 1) for line in worker.worker_properties().splitlines())
    assert properties["offset.storage.file.filename"] == str(tmp_path / "offsets.dat")
    assert properties["listeners"] == "http://127.0.0.1:18083"
    assert properties["bootstrap.servers"] == "127.0.0.1:9092"


def test_the_pom_pins_connect_to_the_version_debezium_was_built_against() -> None:
    # Debezium 3.6.1.Final is built against Kafka 4.3.0; with connect-runtime 4.4.0 its task dies
    # with NoClassDefFoundError org/apache/kafka/common/utils/Sanitizer.
    pom = ElementTree.parse(POM).getroot()
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    versions = {child.tag.split("}")[1]: child.text for child in pom.find("m:properties", ns)}
    assert (versions["debezium.version"], versions["connect.version"]) == ("3.6.1.Final", "4.3.0")
