"""The several-versions-per-key records of the chaos and fault trials (``trials.versions``)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from trials.versions import interleaved, versions_for


@given(count=st.integers(0, 60), versions=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_every_key_gets_every_version_once_in_order(count: int, versions: int, seed: int) -> None:
    order = interleaved(count, list(range(1, versions + 1)), random.Random(seed))

    assert sorted(order) == [(n, v) for n in range(count) for v in range(1, versions + 1)]
    for n in range(count):
        assert [v for m, v in order if m == n] == list(range(1, versions + 1))


def test_the_versions_of_different_keys_are_interleaved() -> None:
    order = interleaved(100, [1, 2, 3], random.Random(7))
    # Not key by key: some key's last version comes before another key's first.
    last = {n: i for i, (n, v) in enumerate(order) if v == 3}
    first = {n: i for i, (n, v) in enumerate(order) if v == 1}
    assert min(last.values()) < max(first.values())


def test_two_or_three_versions_and_the_same_for_the_same_seed() -> None:
    assert {versions_for(seed) for seed in range(50)} == {2, 3}
    assert versions_for(11) == versions_for(11)
