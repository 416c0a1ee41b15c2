"""The crash injector's bulk-write kill point dies whatever the interrupted write raised.

A write the injector interrupts must never return to the ETL: an insert step's duplicate
``_id``s come back as ``BulkWriteError`` (an acknowledged write with errors), and when that
escaped the injector the ETL took the prefix's result for the whole write's (found by
``make chaos``: a trial that was not killed, with 4 documents lost and 30 stale).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from chaos import points
from chaos.points import ACKNOWLEDGED_PREFIX, CONSUME_MID_BULK_WRITE, IN_FLIGHT, KillPlan
from trials.work import Work


class Died(BaseException):
    """What the test's stand-in for SIGKILL raises: nothing in the write path may catch it."""


class Target:
    """Just enough of a pymongo ``Collection`` for the injector's checks."""

    name = "records"

    class database:
        name = "db"


@pytest.mark.parametrize("mode", [ACKNOWLEDGED_PREFIX, IN_FLIGHT])
def test_the_kill_comes_even_when_the_interrupted_write_raises(
    monkeypatch, tmp_path: Path, mode: str
) -> None:
    sent: list[int] = []

    def duplicate_ids(self, requests, *args, **kwargs):
        sent.append(len(requests))
        raise BulkWriteError({"writeErrors": [{"index": 0, "code": 11000, "errmsg": "E11000"}]})

    deaths: list[dict] = []

    def die(note: Path, **facts) -> None:
        deaths.append(facts)
        raise Died

    monkeypatch.setattr(Collection, "bulk_write", duplicate_ids)
    monkeypatch.setattr(points, "sigkill_self", die)
    work = Work(action="consume", topic="t", run_id="r", count=10, mongo_db="db")
    plan = KillPlan(CONSUME_MID_BULK_WRITE, 1, call=2, mode=mode, split=0.5, delay=5.0)
    points._kill_in_bulk_write(plan, work, tmp_path / "note")

    with pytest.raises(BulkWriteError):
        Collection.bulk_write(Target(), [1, 2, 3, 4])  # call 1: not the kill point, passes through
    with pytest.raises(Died):
        Collection.bulk_write(Target(), [1, 2, 3, 4])  # call 2: dies although the write raised
    assert len(deaths) == 1 and deaths[0]["call"] == 2
    assert sent == [4, 2] if mode == ACKNOWLEDGED_PREFIX else sent == [4, 4]
