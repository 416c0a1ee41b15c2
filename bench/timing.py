"""Repeated measurements, their medians, and the order contenders take turns in."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One timed run of one contender: ``records`` moved in ``seconds`` (wall clock)."""

    seconds: float
    records: int
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Series:
    """Every sample of one contender; its median rate is what the report compares."""

    label: str
    samples: list[Sample] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        rates = [s.records / s.seconds for s in self.samples if s.seconds > 0]
        return {
            "label": self.label,
            "records": [s.records for s in self.samples],
            "seconds": [round(s.seconds, 4) for s in self.samples],
            "median_seconds": round(statistics.median(s.seconds for s in self.samples), 4),
            # None when no sample took measurable time (a peer whose every record landed at once).
            "median_records_per_second": round(statistics.median(rates), 1) if rates else None,
            "detail": [s.detail for s in self.samples],
        }


def rotated(items: Sequence[T], rep: int) -> list[T]:
    """``items`` starting at position ``rep``: no contender always runs first (warm caches, GC)."""
    shift = rep % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def alternate(contenders: Sequence[Any], reps: int, measure: Callable[[Any], Sample]) -> dict[str, Any]:
    """``reps`` rounds of ``measure(contender)`` for each contender (each with a ``name`` and a
    ``label``), taking turns; every contender's samples and medians by name."""
    series = {c.name: Series(c.label) for c in contenders}
    for rep in range(reps):
        for contender in rotated(contenders, rep):
            sample = measure(contender)
            series[contender.name].samples.append(sample)
            log.info("%s: %s records in %.2fs", contender.name, sample.records, sample.seconds)
    return {name: s.as_dict() for name, s in series.items()}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)
