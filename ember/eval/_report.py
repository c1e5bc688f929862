"""Reports comparing systems: a console table, JSON, and one self-contained HTML page.

Each shows, per system, accuracy with its bootstrap interval, every other metric, cost
(never a false $0: unknown prices say "unknown"), latency percentiles, calls, retries and
errors. The HTML page has no external assets — inline CSS and SVG — so it can be mailed
or attached to a paper's supplement as one file.
"""

from __future__ import annotations

import datetime
import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.table import Table

from ember.eval._results import EvaluationResults

__all__ = ["comparison_table", "report_dict", "render_html", "write_report"]


def _fmt_latency(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds:.3g}s"


def comparison_table(results: Mapping[str, EvaluationResults], *, title: str = "") -> Table:
    """A rich table: one row per system."""
    table = Table(title=title or None)
    for column in ("system", "accuracy [95% CI]", "errors", "cost", "p50", "p90", "calls", "retries"):
        table.add_column(column, justify="left" if column == "system" else "right", overflow="fold")
    for name, r in results.items():
        table.add_row(
            name, format(r.intervals["accuracy"], ".2f"), str(r.n_errors), r.cost_label,
            _fmt_latency(r.latency["p50"]), _fmt_latency(r.latency["p90"]), str(r.calls), str(r.retries),
        )  # fmt: skip
    return table


def report_dict(
    results: Mapping[str, EvaluationResults], *, dataset: str = "", records: bool = False, settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Everything in the report, JSON-ready (NaN becomes ``null``).

    ``settings`` (e.g. ``{"temperature": 0.0, "max_tokens": None, "systems": {...}}``, as
    ``ember eval`` passes) are stored under ``"settings"``, so a report says how it was made.
    """

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(
        {
            "dataset": dataset,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            **({"settings": dict(settings)} if settings is not None else {}),
            "systems": {name: r.to_dict(records=records) for name, r in results.items()},
        }
    )


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.4em}table{border-collapse:collapse;margin:1em 0;width:100%}
th,td{padding:.35em .6em;border-bottom:1px solid #ddd;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}th{background:#f5f5f5}
.bad{color:#b00}.ok{color:#070}.note{color:#666;font-size:.9em}code{font-size:.92em}
td.out{text-align:left;max-width:22em;overflow-wrap:anywhere;font-family:ui-monospace,monospace;font-size:.85em}
"""


def _accuracy_chart(results: Mapping[str, EvaluationResults]) -> str:
    """Horizontal bars with CI whiskers, one per system, as inline SVG."""
    row, left, width = 28, 180, 440
    height = row * len(results) + 30
    parts = [f'<svg width="{left + width + 80}" height="{height}" role="img" aria-label="accuracy by system">']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        x = left + tick * width
        parts.append(f'<line x1="{x}" y1="0" x2="{x}" y2="{height - 20}" stroke="#eee"/>')
        parts.append(f'<text x="{x}" y="{height - 5}" font-size="11" text-anchor="middle">{tick:.2f}</text>')
    for i, (name, r) in enumerate(results.items()):
        ci, y = r.intervals["accuracy"], i * row + 6
        value = 0.0 if math.isnan(ci.value) else ci.value
        parts.append(f'<text x="{left - 8}" y="{y + 13}" font-size="12" text-anchor="end">{html.escape(name[:28])}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{value * width:.1f}" height="18" fill="#5b8def"/>')
        if not math.isnan(ci.low):
            x0, x1 = left + ci.low * width, left + ci.high * width
            parts.append(f'<line x1="{x0:.1f}" y1="{y + 9}" x2="{x1:.1f}" y2="{y + 9}" stroke="#123" stroke-width="2"/>')
            for x in (x0, x1):
                parts.append(f'<line x1="{x:.1f}" y1="{y + 4}" x2="{x:.1f}" y2="{y + 14}" stroke="#123" stroke-width="2"/>')
        parts.append(f'<text x="{left + width + 6}" y="{y + 13}" font-size="12">{value:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _items_table(results: Mapping[str, EvaluationResults], limit: int) -> str:
    names = list(results)
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        for k, record in enumerate(results[name].records):
            if k >= limit:
                break
            rows.setdefault(record.item_id, {})[name] = record
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = []
    for item_id, by_system in list(rows.items())[:limit]:
        cells = []
        for name in names:
            rec = by_system.get(name)
            if rec is None:
                cells.append("<td class=out></td>")
                continue
            mark = ('<span class="ok">✓</span>' if next(iter(rec.correct.values()), False) else '<span class="bad">✗</span>')
            text = html.escape((rec.output if rec.ok else f"error: {rec.error}")[:160])
            cells.append(f"<td class=out>{mark} {text}</td>")
        body.append(f"<tr><td><code>{html.escape(item_id)}</code></td>{''.join(cells)}</tr>")
    return f"<table><tr><th>item</th>{head}</tr>{''.join(body)}</table>"


def render_html(
    results: Mapping[str, EvaluationResults], *, dataset: str = "", title: str = "Ember evaluation", item_rows: int = 50,
    settings: Mapping[str, Any] | None = None,
) -> str:
    """The whole report as one HTML document; ``settings`` (temperature, max tokens) are stated under the title."""
    metrics = sorted({m for r in results.values() for m in r.metrics} - {"accuracy", "error_rate"})
    head = ["system", "accuracy [95% CI]", *metrics, "items", "errors", "cost", "cost / item", "p50", "p90", "p99", "calls", "retries", "tokens"]
    rows = []
    for name, r in results.items():
        per_item = f"${r.cost_usd / r.n_items:.6f}" if r.cost_usd is not None and r.n_items else "unknown"
        cells = [
            html.escape(name), format(r.intervals["accuracy"], ".3f"), *(format(r.intervals[m], ".3f") for m in metrics),
            r.n_items, f'<span class="{"bad" if r.n_errors else ""}">{r.n_errors}</span>', html.escape(r.cost_label), per_item,
            *(_fmt_latency(r.latency[p]) for p in ("p50", "p90", "p99")), r.calls, r.retries, r.input_tokens + r.output_tokens,
        ]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    stopped = [f"<p class=bad>{html.escape(n)}: stopped early — {html.escape(r.stopped)}</p>" for n, r in results.items() if r.stopped]
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    shown = {k: v for k, v in (settings or {}).items() if k != "systems" and v is not None}
    setting = " · " + ", ".join(f"{html.escape(str(k))} {html.escape(str(v))}" for k, v in shown.items()) if shown else ""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class=note>dataset <b>{html.escape(dataset)}</b>{setting} · {created} · "
        "accuracy intervals: 95% percentile bootstrap (1000 resamples); latency per item, end to end.</p>"
        + "".join(stopped)
        + _accuracy_chart(results)
        + "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"
        + f"<h2>Items (first {item_rows})</h2>" + _items_table(results, item_rows)
        + "</body></html>"
    )  # fmt: skip


def write_report(
    results: Mapping[str, EvaluationResults], path: str | Path, *, dataset: str = "", title: str = "Ember evaluation",
    settings: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``<path>.json`` and ``<path>.html``; returns both paths. ``settings``: see :func:`report_dict`."""
    base = Path(path).expanduser()
    base.parent.mkdir(parents=True, exist_ok=True)
    json_path, html_path = base.with_suffix(".json"), base.with_suffix(".html")
    json_path.write_text(json.dumps(report_dict(results, dataset=dataset, settings=settings), indent=2, default=str))
    html_path.write_text(render_html(results, dataset=dataset, title=title, settings=settings))
    return json_path, html_path
