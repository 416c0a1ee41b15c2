"""Pure logic of the drain lease: owners, the fencing rule on slow answers, the heartbeat's verdict,
the SIGTERM handler and the MongoDB client options (with stand-ins for the server)."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymongo.errors import AutoReconnect

from kafka_mongo_etl import lease as lease_module
from kafka_mongo_etl.errors import LeaseLostError, StopRequested
from kafka_mongo_etl.lease import DrainLease, lease_owner
from kafka_mongo_etl.sigterm import stop_on_sigterm


@given(run_id=st.text(min_size=1, max_size=60), try_number=st.none() | st.integers(1, 100))
def test_an_owner_names_the_run_and_try_and_is_unique_per_call(run_id: str, try_number: int | None) -> None:
    first, second = lease_owner(run_id, try_number), lease_owner(run_id, try_number)
    assert first != second
    attempt = "?" if try_number is None else str(try_number)
    assert first.startswith(f"{run_id}/try-{attempt}/")


@dataclass
class UpdateResult:
    matched_count: int


class StandInLeases:
    """A lease collection whose renewals take ``delay`` seconds of a fake monotonic clock."""

    def __init__(self, clock: list[float], delay: float = 0.0, matched: int = 1) -> None:
        self.clock, self.delay, self.matched, self.updates = clock, delay, matched, 0

    def find_one_and_update(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {}

    def update_many(self, *args: Any, **kwargs: Any) -> UpdateResult:
        self.updates += 1
        self.clock[0] += self.delay
        return UpdateResult(self.matched)

    def find_one(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"_id": "drain:t:g", "owner": "someone-else/try-2/abc", "expires_at": "later"}

    def find(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return [self.find_one()]


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(lease_module.time, "monotonic", lambda: now[0])
    return now


@pytest.mark.parametrize(("delay", "passes"), [(0.0, True), (4.9, True), (5.1, False), (30.0, False)])
def test_renew_passes_only_when_half_the_ttl_is_certain_to_remain(clock, delay: float, passes: bool) -> None:
    leases = StandInLeases(clock, delay=delay)
    lease = DrainLease(leases, "drain:t:g", owner="me", ttl=10.0)  # type: ignore[arg-type]
    lease.acquire(wait=0)
    if passes:
        lease.renew()
    else:
        with pytest.raises(LeaseLostError, match=rf"took {delay:.1f}s to confirm drain:t:g"):
            lease.renew()


def test_renew_raises_when_the_server_says_another_owner_holds_it(clock) -> None:
    lease = DrainLease(StandInLeases(clock, matched=0), "drain:t:g", owner="me", ttl=10.0)  # type: ignore[arg-type]
    lease.acquire(wait=0)
    with pytest.raises(LeaseLostError, match="someone-else/try-2/abc holds it"):
        lease.renew()
    assert lease.lost is not None


def test_once_lost_renew_raises_without_asking_the_server(clock) -> None:
    leases = StandInLeases(clock)
    lease = DrainLease(leases, "drain:t:g", owner="me", ttl=10.0)  # type: ignore[arg-type]
    lease.acquire(wait=0)
    lease._mark_lost("lost for a test")
    with pytest.raises(LeaseLostError, match="lost for a test"):
        lease.renew()
    assert leases.updates == 0


class Unreachable(StandInLeases):
    def update_many(self, *args: Any, **kwargs: Any) -> UpdateResult:
        raise AutoReconnect("connection refused")


def test_the_heartbeat_gives_the_lease_up_when_no_renewal_was_confirmed_for_a_ttl() -> None:
    lease = DrainLease(Unreachable([0.0]), "drain:t:g", owner="me", ttl=0.3, where="MongoDB connection 'm'")  # type: ignore[arg-type]
    lease.acquire(wait=0)
    with lease.heartbeat():
        deadline = time.monotonic() + 10
        while lease.lost is None and time.monotonic() < deadline:
            time.sleep(0.02)
    assert lease.lost is not None and "confirmed no renewal" in lease.lost and "'m'" in lease.lost
    with pytest.raises(LeaseLostError):
        lease.renew()


def test_sigterm_runs_the_previous_handler_then_raises_in_the_main_thread() -> None:
    called = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: called.append(signum))
    try:
        with pytest.raises(StopRequested, match="SIGTERM"), stop_on_sigterm():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted at once
        assert called == [signal.SIGTERM]
        # Restored on the way out: the previous handler alone runs now.
        os.kill(os.getpid(), signal.SIGTERM)
        assert called == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_handling_is_left_alone_outside_the_main_thread() -> None:
    errors = []

    def in_a_thread() -> None:
        try:
            with stop_on_sigterm():
                pass
        except Exception as err:  # noqa: BLE001 - the test reports any error
            errors.append(err)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert errors == []


def test_a_lease_never_taken_cannot_pass_the_fencing_check(clock) -> None:
    leases = StandInLeases(clock)
    lease = DrainLease(leases, ("drain:t:g:0", "drain:t:g:1"), owner="me", ttl=10.0)  # type: ignore[arg-type]
    with pytest.raises(LeaseLostError):
        lease.renew()
    assert leases.updates == 0
