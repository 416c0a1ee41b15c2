"""devstack.registry's build cache: Maven runs on the first use and again only when the pom or a
source file changes (a stand-in for mvn records the calls; the real build runs in the
integration tests' schema_registry fixture)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from devstack import registry
from devstack.process import StackError


@pytest.fixture
def sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[list[str]]]:
    source, build = tmp_path / "registry", tmp_path / "cache" / "target"
    (source / "src" / "main" / "java").mkdir(parents=True)
    (source / "pom.xml").write_text("<project/>")
    (source / "src" / "main" / "java" / "A.java").write_text("class A {}")
    monkeypatch.setattr(registry, "SOURCE", source)
    monkeypatch.setattr(registry, "BUILD_DIR", build)
    monkeypatch.setattr(registry, "BUILD_HASH", build.parent / "source.sha256")
    monkeypatch.setattr(registry, "RUNNER_JAR", build / "registry-run-1-runner.jar")
    monkeypatch.setattr(registry, "require_java_and_maven", lambda: None)
    calls: list[list[str]] = []

    def fake_mvn(argv: list[str], **_: Any) -> subprocess.CompletedProcess:
        calls.append(argv)
        (build / "lib").mkdir(parents=True, exist_ok=True)
        (build / "registry-run-1-runner.jar").write_bytes(b"jar")
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(registry.subprocess, "run", fake_mvn)
    return source, calls


def test_maven_builds_once_and_again_when_a_source_changes(sources) -> None:
    source, calls = sources
    jar = registry.build_registry()
    assert jar == registry.RUNNER_JAR and len(calls) == 1
    assert f"-Dregistry.build.dir={registry.BUILD_DIR}" in calls[0] and "package" in calls[0]
    assert any(arg.startswith("-Dmaven.repo.local=") for arg in calls[0])
    registry.build_registry()
    assert len(calls) == 1
    (source / "src" / "main" / "java" / "A.java").write_text("class A { int x; }")
    registry.build_registry()
    assert len(calls) == 2
    (source / "pom.xml").write_text("<project><!-- changed --></project>")
    registry.build_registry()
    assert len(calls) == 3


def test_a_failed_build_says_what_maven_said_and_is_not_cached(sources, monkeypatch) -> None:
    def failing(argv: list[str], **_: Any) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(argv, 1, "[ERROR] artifact not found: x:y:1", "")

    monkeypatch.setattr(registry.subprocess, "run", failing)
    with pytest.raises(StackError, match="artifact not found"):
        registry.build_registry()
    assert not registry.BUILD_HASH.exists()
