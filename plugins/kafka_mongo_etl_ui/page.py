"""The ETL page's HTML: one server-rendered document, every value escaped.

The page is shown inside the Airflow UI (an iframe under "ETL" in the navigation) and also works
on its own at ``/etl/``. Links to a run's Airflow page replace the whole UI, not the iframe.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from urllib.parse import urlencode

from kafka_mongo_etl_ui.charts import throughput_chart
from kafka_mongo_etl_ui.lag import ConsumerLag
from kafka_mongo_etl_ui.runs import DeadLetters, RunRow, RunSource, Target


@dataclass(frozen=True)
class PageData:
    target: Target
    targets: Sequence[str]
    runs: Sequence[RunRow]
    limit: int
    source: RunSource | None = None
    lag: ConsumerLag | None = None
    dead_letters: DeadLetters | None = None
    problems: Sequence[str] = field(default_factory=tuple)
    # The lag of the other topics the target's latest runs read (a topic map), newest first.
    more_lags: Sequence[ConsumerLag] = field(default_factory=tuple)


STYLE = """
:root { color-scheme: light; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: #1f2328; background: #fff; }
body { margin: 0; padding: 16px 24px 32px; }
h1 { font-size: 20px; margin: 0 16px 0 0; }
h2 { font-size: 16px; margin: 24px 0 8px; }
header { display: flex; flex-wrap: wrap; align-items: center; gap: 8px; }
form { display: flex; gap: 8px; align-items: center; }
select, input, button { font: inherit; padding: 4px 8px; border: 1px solid #b8bec6; border-radius: 6px;
  background: #fff; }
button { background: #017cee; border-color: #017cee; color: #fff; cursor: pointer; }
.muted { color: #5b636e; }
.problem { background: #fff4e5; border: 1px solid #f0b46a; border-radius: 6px; padding: 8px 12px;
  margin: 12px 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid #e4e7eb; white-space: nowrap; }
th { font-weight: 600; background: #f6f8fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.state { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; }
.state-success { background: #dcf5e3; color: #135c2a; }
.state-failed { background: #fde2e2; color: #8a1c1c; }
.state-unknown { background: #eceff3; color: #3d444d; }
.reason { white-space: normal; max-width: 640px; overflow-wrap: anywhere; }
.columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 24px; }
svg.etl-chart { max-width: 100%; height: auto; font-size: 11px; fill: #3d444d; }
svg.etl-chart .axis-title { font-weight: 600; }
"""

# In the UI the page is an iframe whose sandbox blocks navigating the top window; following a
# link from the top document itself is allowed, so a run link opens Airflow's run page in place
# of the whole UI. Outside an iframe, target="_top" does the same without this script.
SCRIPT = """
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[target=_top]");
  if (!link || window.top === window || event.defaultPrevented || event.button !== 0) return;
  if (event.ctrlKey || event.metaKey || event.shiftKey) return;
  try {
    const top = window.top.document;
    const anchor = top.createElement("a");
    anchor.href = link.href;
    top.body.appendChild(anchor);
    anchor.click();
    anchor.remove();
    event.preventDefault();
  } catch (error) {
    // A parent from another origin: leave the link to the browser.
  }
});
"""


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return '<span class="muted">–</span>'
    return f"{value:,.{digits}f}"


def _time(value: dt.datetime | None) -> str:
    if value is None:
        return '<span class="muted">–</span>'
    return escape(value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))


def _state(state: str) -> str:
    kind = state if state in ("success", "failed") else "unknown"
    return f'<span class="state state-{kind}">{escape(state)}</span>'


def _target_form(data: PageData) -> str:
    current = str(data.target)
    choices = sorted({*data.targets, current})
    options = "".join(
        f'<option value="{escape(name)}"{" selected" if name == current else ""}>{escape(name)}</option>'
        for name in choices
    )
    return (
        '<form method="get" action="">'
        '<label for="target">Target</label>'
        f'<select id="target" name="target">{options}</select>'
        "<button type=submit>Show</button></form>"
    )


def _runs_table(runs: Sequence[RunRow]) -> str:
    if not runs:
        return '<p class="muted" id="no-runs">No runs have been recorded for this target yet.</p>'
    rows = []
    for run in runs:
        error = f' title="{escape(run.error)}"' if run.error else ""
        stalled = ' <span class="state state-unknown">stalled</span>' if run.stalled else ""
        if run.lost_to_retention:
            lost = _number(run.lost_to_retention)
            stalled += f' <span class="state state-failed lost">{lost} lost to retention</span>'
        drains = f' <span class="muted drains">({run.drains} drains)</span>' if run.drains > 1 else ""
        if run.tries > run.drains:
            failed = f", {run.failed_tries} failed" if run.failed_tries else ""
            drains += f' <span class="muted tries">({run.tries} tries{failed})</span>'
        rows.append(
            f'<tr class="run" data-run-id="{escape(run.run_id)}" data-topic="{escape(run.topic or "")}">'
            f'<td><a class="run-link" target="_top" href="../{escape(run.run_path)}">'
            f"{escape(run.run_id)}</a>{drains}</td>"
            f'<td class="topic">{escape(run.topic or "–")}</td>'
            f"<td{error}>{_state(run.state)}{stalled}</td>"
            f'<td class="num produced">{_number(run.produced)}</td>'
            f'<td class="num loaded">{_number(run.loaded)}</td>'
            f'<td class="num dead-letters">{_number(run.dead_letters)}</td>'
            f'<td class="num seconds">{_number(run.seconds, 1)}</td>'
            f'<td class="num rate">{_number(run.records_per_second, 1)}</td>'
            f"<td>{_time(run.updated_at)}</td></tr>"
        )
    return (
        '<table id="runs"><thead><tr><th>Run</th><th>Topic</th><th>State</th><th class="num">Produced</th>'
        '<th class="num">Loaded</th><th class="num">Dead letters</th><th class="num">Seconds</th>'
        '<th class="num">Records/s</th><th>Finished</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _more_lags(lags: Sequence[ConsumerLag]) -> str:
    """One line per other topic that loads this target: its group and total lag."""
    if not lags:
        return ""
    rows = "".join(
        f'<tr class="topic-lag" data-topic="{escape(lag.topic)}"><td><code>{escape(lag.topic)}</code></td>'
        f"<td><code>{escape(lag.group_id)}</code></td>"
        f'<td class="num lag">{escape(lag.error) if lag.error is not None else _number(lag.total)}</td></tr>'
        for lag in lags
    )
    return (
        '<p class="muted">Other topics this target\'s latest runs read:</p><table id="more-lags"><thead><tr>'
        '<th>Topic</th><th>Group</th><th class="num">Lag</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def _lag_section(data: PageData) -> str:
    if data.source is None or data.lag is None:
        return (
            '<p class="muted" id="lag-unknown">No run has recorded a topic for this target yet, '
            "so there is no consumer group to measure.</p>"
        )
    lag = data.lag
    intro = (
        f'<p class="muted">Group <code>{escape(lag.group_id)}</code> on topic '
        f"<code>{escape(lag.topic)}</code>: records the next run would drain.</p>"
    )
    if lag.error is not None:
        return f'{intro}<p class="problem" id="lag-error">Lag unavailable: {escape(lag.error)}</p>'
    rows = "".join(
        f'<tr class="partition" data-partition="{p.partition}"><td>{p.partition}</td>'
        f'<td class="num committed">{_number(p.committed)}</td>'
        f'<td class="num high">{_number(p.high)}</td><td class="num lag">{_number(p.lag)}</td></tr>'
        for p in lag.partitions
    )
    return (
        f'{intro}<table id="lag"><thead><tr><th>Partition</th><th class="num">Committed</th>'
        '<th class="num">High watermark</th><th class="num">Lag</th></tr></thead>'
        f"<tbody>{rows}</tbody><tfoot><tr><th>Total</th><th></th><th></th>"
        f'<th class="num" id="lag-total">{_number(lag.total)}</th></tr></tfoot></table>'
    )


def _dead_letter_section(dead: DeadLetters | None, runs: Sequence[RunRow]) -> str:
    in_runs = sum(run.dead_letters or 0 for run in runs)
    by_code: dict[str, int] = {}
    for run in runs:
        for code, count in run.dead_letter_reasons:
            by_code[code] = by_code.get(code, 0) + count
    if any(run.dead_letters is not None for run in runs):
        summary = f'<p>In the runs shown: <strong id="dead-letters-in-runs">{in_runs:,}</strong>.</p>'
    else:
        summary = '<p class="muted">The runs shown record no dead-letter count.</p>'
    if by_code:
        counts = "".join(
            f'<tr class="reason-count"><td><code>{escape(code)}</code></td>'
            f'<td class="num">{count:,}</td></tr>'
            for code, count in sorted(by_code.items(), key=lambda item: (-item[1], item[0]))
        )
        summary += (
            '<table id="reason-counts"><thead><tr><th>Reason</th><th class="num">Records</th></tr></thead>'
            f"<tbody>{counts}</tbody></table>"
        )
    if dead is None:
        return summary
    if not dead.exists:
        return (
            f'{summary}<p class="muted" id="no-dlq">No <code>{escape(dead.collection)}</code> collection.</p>'
        )
    if not dead.latest:
        return f'{summary}<p id="dlq-empty"><code>{escape(dead.collection)}</code> is empty.</p>'
    return (
        f"{summary}<p><code>{escape(dead.collection)}</code> holds about "
        f'<strong id="dlq-total">{dead.total:,}</strong> records; the newest are below.</p>'
    )


def _newest_dead_letters(dead: DeadLetters | None) -> str:
    if dead is None or not dead.latest:
        return ""
    rows = "".join(
        f'<tr class="dead-letter"><td>{_time(letter.failed_at)}</td><td>{escape(letter.run_id or "–")}</td>'
        f'<td class="num">{_number(letter.partition)}</td><td class="num">{_number(letter.offset)}</td>'
        f"<td><code>{escape(letter.code or '–')}</code></td>"
        f'<td class="reason">{escape(letter.reason[:300])}</td></tr>'
        for letter in dead.latest
    )
    return (
        f'<section><h2>Newest dead letters <span class="muted">(<code>{escape(dead.collection)}</code>)'
        "</span></h2>"
        '<table id="dead-letters"><thead><tr><th>Failed</th><th>Run</th><th class="num">Partition</th>'
        '<th class="num">Offset</th><th>Code</th><th>Reason</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></section>"
    )


def render_page(data: PageData, nonce: str) -> str:
    problems = "".join(f'<p class="problem">{escape(problem)}</p>' for problem in data.problems)
    count = len(data.runs)
    runs_note = f"the latest {count} (at most {data.limit}), newest first" if count else "none recorded yet"
    refresh = "?" + urlencode({"target": str(data.target)})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ETL · {escape(str(data.target))}</title>
<style nonce="{nonce}">{STYLE}</style>
<script nonce="{nonce}">{SCRIPT}</script>
</head><body>
<header><h1>ETL · <span id="target-name">{escape(str(data.target))}</span></h1>{_target_form(data)}
<a href="{escape(refresh)}">Refresh</a></header>
{problems}
<h2>Throughput per run</h2>
{throughput_chart(data.runs)}
<h2>Runs <span class="muted">({escape(runs_note)})</span></h2>
{_runs_table(data.runs)}
<div class="columns">
<section><h2>Consumer lag now</h2>{_lag_section(data)}{_more_lags(data.more_lags)}</section>
<section><h2>Dead letters</h2>{_dead_letter_section(data.dead_letters, data.runs)}</section>
</div>
{_newest_dead_letters(data.dead_letters)}
</body></html>
"""
