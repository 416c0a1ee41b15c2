"""When the on-arrival trigger fires (``kafka_mongo_etl.arrivals.Coalescer``), on a made-up clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kafka_mongo_etl.arrivals import ARRIVED, LEFT_BEHIND, Coalescer, TopicLag


def lag(high: int, committed: int) -> TopicLag:
    """One partition's lag: ``high`` records, ``committed`` of them committed (negative: none)."""
    return TopicLag(high={0: high}, pending={0: high - max(committed, 0)}, committed={0: committed})


def events(coalescer: Coalescer, looks: list[tuple[float, TopicLag]]) -> list[tuple[float, str]]:
    fired = []
    for now, seen in looks:
        reason = coalescer.reason(seen, now)
        if reason is not None:
            coalescer.fired(seen, reason, now)
            fired.append((now, reason))
    return fired


def test_the_first_look_fires_if_records_wait_and_a_quiet_topic_never_fires() -> None:
    assert events(Coalescer(60, 3600), [(0, lag(100, -1))]) == [(0, ARRIVED)]
    assert events(Coalescer(60, 3600), [(t, lag(100, 100)) for t in range(0, 1000, 5)]) == []


def test_records_a_failed_run_left_behind_fire_once_nothing_drains_them() -> None:
    coalescer = Coalescer(60, 3600)
    looks = [(0, lag(100, -1))]  # arrivals: the run starts
    looks += [(t, lag(100, 10 * (t // 5))) for t in range(5, 35, 5)]  # it commits 10 every 5 s
    looks += [(t, lag(100, 60)) for t in range(35, 200, 5)]  # then fails at 60 of 100

    assert events(coalescer, looks) == [(0, ARRIVED), (90, LEFT_BEHIND)]


def test_a_drain_that_makes_progress_is_never_doubled() -> None:
    # A long drain: commits move every 50 s (shorter than quiet_interval), for an hour.
    looks = [(0, lag(100_000, -1))] + [(t, lag(100_000, t)) for t in range(5, 3600, 5) if t % 50 == 0]

    assert events(Coalescer(60, 3600), looks) == [(0, ARRIVED)]


def test_arrivals_fire_at_once_even_while_a_drain_runs() -> None:
    looks = [(0, lag(100, -1)), (5, lag(100, 50)), (10, lag(150, 100)), (15, lag(150, 120))]

    assert events(Coalescer(60, 3600), looks) == [(0, ARRIVED), (10, ARRIVED)]


def test_a_lag_that_nothing_drains_fires_ever_more_rarely_until_commits_move_again() -> None:
    coalescer = Coalescer(60, 300)
    stuck = [(t, lag(100, 40)) for t in range(0, 1500, 5)]

    fired = events(coalescer, stuck)

    assert fired == [(0, ARRIVED), (60, LEFT_BEHIND), (180, LEFT_BEHIND), (420, LEFT_BEHIND)] + [
        (t, LEFT_BEHIND) for t in range(720, 1500, 300)
    ]
    # A drain commits again, then stops: the back-off starts over.
    after = events(coalescer, [(1500, lag(100, 70))] + [(t, lag(100, 70)) for t in range(1505, 1660, 5)])
    assert after == [(1560, LEFT_BEHIND)]


@given(
    commits=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=200),
    quiet=st.integers(min_value=10, max_value=120),
)
def test_never_more_than_one_quiet_event_per_quiet_interval(commits: list[int], quiet: int) -> None:
    """Whatever a drain does (commits of 0..5 records per 5 s look), quiet events come at least
    ``quiet_interval`` apart, and only after ``quiet_interval`` with no commit."""
    coalescer = Coalescer(quiet, 3600)
    committed = 0
    last_move = previous = None
    for i, step in enumerate(commits):
        now, committed = 5.0 * (i + 1), min(1000, committed + step)
        seen = lag(1000, committed)
        if coalescer.committed is None or seen.committed != coalescer.committed:
            last_move = now
        reason = coalescer.reason(seen, now)
        if reason is not None:
            coalescer.fired(seen, reason, now)
        if reason == LEFT_BEHIND:
            assert now - last_move >= quiet
            assert previous is None or now - previous >= quiet
            previous = now
