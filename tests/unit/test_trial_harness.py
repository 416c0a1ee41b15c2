"""The trial core's command (``trials/harness.py``) with a fake injector and no services: the
seeds, the table, the FAILED lines, the details file and the exit code."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import airflow  # noqa: F401 - imported once under the session's AIRFLOW_HOME, not the harness's
import pytest

from trials import harness
from trials.checks import Stack, Verification


def fake_suite(losing: set[tuple[str, int]]) -> harness.Suite:
    """Scenarios ``a`` and ``b``; the trials in ``losing`` lose one of their 10 records."""

    @contextmanager
    def services(_state_dir: Path) -> Iterator[tuple[Stack, dict[str, dict]]]:
        yield Stack("127.0.0.1:1", "mongodb://127.0.0.1:1"), {"kafka_default": {"conn_type": "kafka"}}

    def run(scenario: str, seed: int, _stack: Stack, _trial_dir: Path, trial: int) -> harness.TrialResult:
        lost = int((scenario, trial) in losing)
        assert os.environ["AIRFLOW_CONN_KAFKA_DEFAULT"] == '{"conn_type": "kafka"}'
        checked = Verification(10, 2, 10 - lost, 10 - lost, lost, 0, 0, 0, 0, 0, 0)
        database = f"db_{scenario}_{trial}"
        return harness.TrialResult(scenario, trial, seed, "topic", database, None, checked, 0.5)

    return harness.Suite(
        prog="fake",
        title="Fake faults",
        unit="fake kind",
        option="kinds",
        scenarios=("a", "b"),
        default_trials=2,
        services=services,
        run=run,
        summarize=lambda kind, results: {
            "kind": kind,
            "trials": len(results),
            "lost": sum(r.verification.lost for r in results),
            "ok": sum(r.ok for r in results),
        },
        describe=lambda result: result.verification.describe(),
    )


@pytest.fixture
def dropped(monkeypatch) -> list[str]:
    """The databases the harness drops; the process environment restored afterwards."""
    monkeypatch.setattr(os, "environ", os.environ.copy())
    names: list[str] = []
    monkeypatch.setattr(harness, "drop_database", lambda _stack, name: names.append(name))
    return names


def test_the_master_seed_repeats_every_trials_seed() -> None:
    seeds = {(s, n): harness.trial_seed(7, s, n) for s in ("a", "b") for n in (1, 2)}

    assert seeds == {(s, n): harness.trial_seed(7, s, n) for s in ("a", "b") for n in (1, 2)}
    assert len(set(seeds.values())) == 4
    assert harness.trial_seed(8, "a", 1) != seeds["a", 1]


def test_a_lost_record_fails_the_run_and_the_rest_is_reported(dropped, capsys, tmp_path: Path) -> None:
    results = tmp_path / "results.json"

    code = harness.main(fake_suite({("b", 2)}), ["--seed", "7", "--results", str(results)])

    out = capsys.readouterr().out
    assert code == 1
    assert "Fake faults: 2 trials per fake kind, seed 7" in out
    assert "python -m fake --trials 2 --seed 7 --kinds a,b   (make fake TRIALS=2 SEED=7)" in out
    table = "| kind | trials | lost | ok |\n|------|--------|------|----|\n"
    assert table + "| a    |      2 |    0 |  2 |\n| b    |      2 |    1 |  1 |\n" in out
    assert f"FAILED b trial 2 seed {harness.trial_seed(7, 'b', 2)}: 9/10 docs" in out
    # A passed trial's database goes, a failed one's stays for a look.
    assert dropped == ["db_a_1", "db_a_2", "db_b_1"]
    details = json.loads(results.read_text())
    assert details["seed"] == 7 and details["trials_per_kind"] == 2
    assert [(t["scenario"], t["trial"], t["ok"]) for t in details["trials"]] == [
        ("a", 1, True),
        ("a", 2, True),
        ("b", 1, True),
        ("b", 2, False),
    ]
    assert [problem[:15] for problem in details["trials"][3]["problems"]] == ["9/10 docs (2 ve"]
    assert "ids" not in details["trials"][0]["verification"]


def test_a_clean_run_exits_0_with_the_scenarios_asked_for(dropped, capsys) -> None:
    assert harness.main(fake_suite(set()), ["--trials", "1", "--kinds", "b"]) == 0

    out = capsys.readouterr().out
    assert "| b    |      1 |    0 |  1 |" in out and "| a " not in out and "FAILED" not in out
    assert dropped == ["db_b_1"]


def test_an_unknown_scenario_is_refused(dropped, capsys) -> None:
    with pytest.raises(SystemExit):
        harness.main(fake_suite(set()), ["--kinds", "a,c"])

    assert "unknown kinds ['c']" in capsys.readouterr().err
