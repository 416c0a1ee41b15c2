"""Repeated measurements, their medians, and the order contenders take turns in."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Sample:
    """One timed run of one contender: ``records`` moved in ``seconds`` (wall clock)."""

    seconds: float
    records: int
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Series:
    """Every sample of one contender; its median is what the report compares."""

    name: str
    label: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def median_rate(self) -> float:
        """Median records per second (the median of the per-sample rates)."""
        return statistics.median(s.records / s.seconds for s in self.samples if s.seconds > 0)

    def median_detail(self, key: str) -> float | None:
        values = [s.detail[key] for s in self.samples if s.detail.get(key) is not None]
        return statistics.median(values) if values else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "records": [s.records for s in self.samples],
            "seconds": [round(s.seconds, 4) for s in self.samples],
            "median_seconds": round(self.median_seconds, 4),
            "median_records_per_second": round(self.median_rate, 1),
            "detail": [s.detail for s in self.samples],
        }


def timed(work: Callable[[], T]) -> tuple[float, T]:
    """Wall-clock seconds of ``work()`` and what it returned."""
    began = time.perf_counter()
    result = work()
    return time.perf_counter() - began, result


def rotated(items: Sequence[T], rep: int) -> list[T]:
    """``items`` starting at position ``rep``: no contender always runs first (warm caches, GC)."""
    if not items:
        return []
    shift = rep % len(items)
    return [*items[shift:], *items[:shift]]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)
