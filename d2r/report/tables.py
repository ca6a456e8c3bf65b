"""The HTML tables of the benchmark report: its metrics and its settings.

:func:`metrics_table` shows one row per protocol (or one row for flat metrics), with
before / after / change column groups when the metrics before re-ranking are given;
:func:`metrics_notes` says what each metric shown means; :func:`settings_table` shows
the "How this was produced" rows (:func:`d2r.report.settings.run_settings`).  Every
value is HTML-escaped.
"""

from __future__ import annotations

import html
from typing import Any, Mapping, Optional

import numpy as np

__all__ = ["metrics_table", "metrics_notes", "settings_table"]

_METRIC_WORDS = {
    "mAP": "mean average precision, in percent: 100 means every correct image is ranked "
           "above every wrong one",
    "N-S": "UKBench score: how many of the 4 correct images are among the first 4 results "
           "(0 to 4)",
}


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "n/a" if np.isnan(value) else f"{value:.2f}"
    return html.escape("" if value is None else str(value))


def _fmt_change(after: Any, before: Any) -> tuple[str, str]:
    """``(text, css class)`` of after - before (``+1.25``, ``up``)."""
    try:
        diff = float(after) - float(before)
    except (TypeError, ValueError):
        return "", ""
    if np.isnan(diff):
        return "n/a", ""
    return f"{diff:+.2f}", "up" if diff > 0.005 else "down" if diff < -0.005 else ""


def _row_label(name: str) -> str:
    return html.escape(name.capitalize() if name != "all" else "All queries")


def _metric_rows(metrics: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``{row name: {metric: value}}``: one row per protocol, or one row for flat metrics."""
    if metrics and all(isinstance(v, Mapping) for v in metrics.values()):
        return {str(k): v for k, v in metrics.items()}
    return {"all": metrics}


def metrics_table(metrics: Mapping[str, Any],
                  initial: Optional[Mapping[str, Any]] = None) -> str:
    """The metrics as a table; with ``initial``: before / after / change column groups."""
    rows = _metric_rows(metrics)
    columns = list(dict.fromkeys(k for v in rows.values() for k in v))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)

    def cells(row: Mapping[str, Any], cls: str, name: str) -> str:
        return "".join(f'<td class="{cls}" data-protocol="{html.escape(name)}" '
                       f'data-metric="{html.escape(str(c))}">{_fmt(row.get(c))}</td>'
                       for c in columns)

    if initial is None:
        body = "".join(f"<tr><td>{_row_label(n)}</td>{cells(r, 'after', n)}</tr>"
                       for n, r in rows.items())
        return (f'<table class="metrics"><tr><th>Protocol</th>{head}</tr>{body}</table>')
    before = _metric_rows(initial)
    span = len(columns)
    groups = (f'<tr><th rowspan="2">Protocol</th>'
              f'<th colspan="{span}">Before re-ranking</th>'
              f'<th colspan="{span}">After re-ranking</th>'
              f'<th colspan="{span}">Change</th></tr><tr>{head * 3}</tr>')
    body = []
    for name, row in rows.items():
        old = before.get(name, {})
        change = []
        for c in columns:
            text, cls = _fmt_change(row.get(c), old.get(c))
            classes = f"change {cls}".strip()
            change.append(f'<td class="{classes}" data-protocol="{html.escape(name)}" '
                          f'data-metric="{html.escape(str(c))}">{text}</td>')
        body.append(f"<tr><td>{_row_label(name)}</td>{cells(old, 'before', name)}"
                    f"{cells(row, 'after', name)}{''.join(change)}</tr>")
    return f'<table class="metrics">{groups}{"".join(body)}</table>'


def metrics_notes(metrics: Mapping[str, Any]) -> str:
    """One line per metric shown, in plain words."""
    columns = dict.fromkeys(k for v in _metric_rows(metrics).values() for k in v)
    notes = []
    for c in columns:
        if c in _METRIC_WORDS:
            notes.append(f"<b>{html.escape(c)}</b>: {_METRIC_WORDS[c]}")
        elif str(c).startswith("mP@"):
            k = html.escape(str(c)[3:])
            first = "first result" if k == "1" else f"first {k} results"
            notes.append(f"<b>{html.escape(c)}</b>: on average, the percentage of correct "
                         f"images among the {first}")
    return "; ".join(notes)


def settings_table(settings: Any) -> str:
    """``{label: text}`` or ``[(label, text)]`` as a two-column table."""
    items = settings.items() if isinstance(settings, Mapping) else settings
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in items)
    return f'<table class="settings">{body}</table>'
