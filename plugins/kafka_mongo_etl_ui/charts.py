"""Server-side SVG charts: no JavaScript library, nothing fetched from a CDN.

The throughput chart puts one run per slot, oldest on the left: a bar for the documents it
loaded (right axis) and a point on a line for its records per second (left axis). Every bar and
point carries a ``<title>`` (the browser's tooltip) and ``data-run-id``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from kafka_mongo_etl_ui.runs import RunRow

RATE_COLOUR = "#c05f10"
LOADED_COLOUR = "#6c9bd2"
FAILED_COLOUR = "#d64545"


@dataclass(frozen=True)
class ChartBox:
    width: int = 760
    height: int = 260
    left: int = 64
    right: int = 72
    top: int = 30
    bottom: int = 44

    @property
    def plot_width(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> float:
        return self.height - self.top - self.bottom

    @property
    def baseline(self) -> float:
        return self.top + self.plot_height


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that is at least ``value`` (1 for nothing to show)."""
    if value <= 0 or math.isnan(value):
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * magnitude * (1 + 1e-9):
            return step * magnitude
    return 10.0 * magnitude


def compact_number(value: float) -> str:
    """1234 -> "1.2k", 2500000 -> "2.5M": short enough for an axis label."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}" if value != int(value) else str(int(value))


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def _time_format(times: Sequence[dt.datetime]) -> tuple[str, str]:
    """A label format precise enough to tell the runs apart, and the day when they share one."""
    if not times:
        return "%m-%d %H:%M", ""
    first, last = min(times).astimezone(dt.UTC), max(times).astimezone(dt.UTC)
    if first.date() != last.date():
        return "%m-%d %H:%M", ""
    day = f" on {first:%Y-%m-%d}"
    return ("%H:%M:%S", day) if last - first < dt.timedelta(hours=1) else ("%H:%M", day)


def throughput_chart(runs: Sequence[RunRow], box: ChartBox = ChartBox()) -> str:
    """An ``<svg>`` of records/s and loaded per run; ``runs`` newest first, as the table lists them."""
    ordered = list(reversed(runs))
    label = f"Records per second and documents loaded for the last {len(ordered)} runs, oldest first"
    parts = [
        f'<svg class="etl-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {box.width} '
        f'{box.height}" width="{box.width}" height="{box.height}" role="img" '
        f'aria-label="{escape(label)}">'
    ]
    if not ordered:
        parts.append(
            f'<text x="{box.width / 2:.0f}" y="{box.height / 2:.0f}" text-anchor="middle" '
            'class="empty">No runs of this target yet</text></svg>'
        )
        return "".join(parts)

    rate_max = nice_ceiling(max((run.records_per_second or 0.0) for run in ordered))
    loaded_max = nice_ceiling(float(max((run.loaded or 0) for run in ordered)))
    slot = box.plot_width / len(ordered)
    bar_width = max(min(slot * 0.6, 28.0), 1.0)

    def x_of(index: int) -> float:
        return box.left + slot * (index + 0.5)

    def y_of(value: float, top: float) -> float:
        return box.baseline - box.plot_height * (value / top)

    # Grid and both axes' labels, four steps.
    for step in range(5):
        fraction = step / 4
        y = box.baseline - box.plot_height * fraction
        parts.append(
            f'<line class="grid" x1="{box.left}" x2="{box.width - box.right}" y1="{_fmt(y)}" '
            f'y2="{_fmt(y)}" stroke="#d0d4da" stroke-width="1"/>'
        )
        parts.append(
            f'<text class="axis rate" x="{box.left - 6}" y="{_fmt(y + 4)}" text-anchor="end" '
            f'fill="{RATE_COLOUR}">{escape(compact_number(rate_max * fraction))}</text>'
        )
        parts.append(
            f'<text class="axis loaded" x="{box.width - box.right + 6}" y="{_fmt(y + 4)}" '
            f'fill="{LOADED_COLOUR}">{escape(compact_number(loaded_max * fraction))}</text>'
        )
    parts.append(
        f'<text class="axis-title" x="{box.left - 6}" y="{box.top - 12}" text-anchor="end" '
        f'fill="{RATE_COLOUR}">records/s</text>'
        f'<text class="axis-title" x="{box.width - box.right + 6}" y="{box.top - 12}" '
        f'fill="{LOADED_COLOUR}">loaded</text>'
    )

    # Bars first, so the line and its points are drawn over them.
    for index, run in enumerate(ordered):
        if run.loaded is None:
            continue
        y = y_of(float(run.loaded), loaded_max)
        colour = FAILED_COLOUR if run.state == "failed" else LOADED_COLOUR
        parts.append(
            f'<rect class="bar loaded" data-run-id="{escape(run.run_id)}" '
            f'x="{_fmt(x_of(index) - bar_width / 2)}" y="{_fmt(y)}" width="{_fmt(bar_width)}" '
            f'height="{_fmt(box.baseline - y)}" fill="{colour}" fill-opacity="0.55">'
            f"<title>{escape(run.run_id)}: {run.loaded:,} loaded ({escape(run.state)})</title></rect>"
        )

    # The line breaks where a run has no rate (it failed before the drain finished).
    segments: list[list[str]] = [[]]
    points: list[str] = []
    for index, run in enumerate(ordered):
        if run.records_per_second is None:
            segments.append([])
            continue
        x, y = x_of(index), y_of(run.records_per_second, rate_max)
        segments[-1].append(f"{_fmt(x)},{_fmt(y)}")
        points.append(
            f'<circle class="point rate" data-run-id="{escape(run.run_id)}" cx="{_fmt(x)}" '
            f'cy="{_fmt(y)}" r="3.5" fill="{RATE_COLOUR}">'
            f"<title>{escape(run.run_id)}: {run.records_per_second:,.1f} records/s</title></circle>"
        )
    for segment in segments:
        if len(segment) > 1:
            parts.append(
                f'<polyline class="line rate" fill="none" stroke="{RATE_COLOUR}" stroke-width="2" '
                f'points="{" ".join(segment)}"/>'
            )
    parts.extend(points)

    # Time labels under at most six slots, always the first and the last.
    time_format, day = _time_format([run.updated_at for run in ordered if run.updated_at])
    every = max(1, math.ceil(len(ordered) / 6))
    labelled = sorted({*range(0, len(ordered), every), len(ordered) - 1})
    for index in labelled:
        when = ordered[index].updated_at
        text = when.astimezone(dt.UTC).strftime(time_format) if when else "?"
        parts.append(
            f'<text class="axis time" x="{_fmt(x_of(index))}" y="{box.baseline + 18}" '
            f'text-anchor="middle">{escape(text)}</text>'
        )
    parts.append(
        f'<line class="baseline" x1="{box.left}" x2="{box.width - box.right}" y1="{_fmt(box.baseline)}" '
        f'y2="{_fmt(box.baseline)}" stroke="#8a9099" stroke-width="1"/>'
        f'<text class="axis-title" x="{box.left + box.plot_width / 2:.0f}" y="{box.height - 6}" '
        f'text-anchor="middle">run finished{escape(day)} (UTC), oldest to newest</text>'
    )
    parts.append("</svg>")
    return "".join(parts)
