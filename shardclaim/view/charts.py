"""The report's charts as inline SVG strings (no script needed to see them: a mail client that blocks
scripts still shows every chart). Pure functions of plain values; every text they carry is escaped.

Times are seconds since the epoch (store clock); ``t0``/``t1`` bound the time axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

__all__ = [
    "OUTCOME_COLOURS",
    "STATE_COLOURS",
    "Bar",
    "gantt_svg",
    "grid_svg",
    "histogram_svg",
    "throughput_svg",
]

STATE_COLOURS = {
    "completed": "#2e9d48", "in_use": "#2f7fd8", "expired": "#e0a800", "available": "#d0d4da",
    "failed": "#d23c3c", "invalid": "#a040c0", "missing": "#ffffff",
}  # fmt: skip
OUTCOME_COLOURS = {
    "completed": "#2e9d48", "running": "#2f7fd8", "failed": "#d23c3c", "timed out": "#f07020",
    "released": "#9aa3ad", "expired": "#e0a800", "lost (reset by an operator)": "#a040c0",
}  # fmt: skip
_WIDTH = 1000
_FONT = 'font-family="sans-serif" font-size="11"'


@dataclass(frozen=True, slots=True)
class Bar:
    """One attempt on the timeline."""

    worker: str
    start: float
    end: float
    outcome: str
    label: str  #: its tooltip


def _svg(width: float, height: float, body: Sequence[str], label: str) -> str:
    return (
        f'<svg role="img" aria-label="{escape(label)}" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}">' + "".join(body) + "</svg>"
    )


def grid_svg(states: Sequence[str], *, labels: Sequence[str] | None = None) -> str:
    """One square per shard, row by row, coloured by state; each with its tooltip (``labels``)."""
    n = max(len(states), 1)
    cols = min(n, max(20, math.ceil(math.sqrt(n * 2))))
    cell = max(3.0, min(16.0, _WIDTH / cols))
    gap = 1.0 if cell >= 6 else 0.0
    body = []
    for i, state in enumerate(states):
        x, y = (i % cols) * cell, (i // cols) * cell
        tip = escape(labels[i] if labels is not None else f"shard {i}: {state}")
        body.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell - gap:.1f}" height="{cell - gap:.1f}" '
            f'class="s-{state}" data-shard="{i}"><title>{tip}</title></rect>'
        )
    return _svg(cols * cell, math.ceil(n / cols) * cell, body, f"grid of {len(states)} shards")


def _clock(t: float, span: float = 3600.0) -> str:
    """A time of day, to the tenth of a second when the axis spans less than a minute."""
    try:
        when = datetime.fromtimestamp(t, UTC)
    except (OverflowError, OSError, ValueError):  # a hostile document's year 1 or 9999
        return "?"
    return when.strftime("%H:%M:%S") + (f".{when.microsecond // 100_000}" if span < 60 else "")


def _time_axis(t0: float, t1: float, x0: float, width: float, y: float) -> list[str]:
    out = [f'<line x1="{x0}" y1="{y}" x2="{x0 + width}" y2="{y}" stroke="#888"/>']
    for k in range(6):
        t = t0 + (t1 - t0) * k / 5
        x = x0 + width * k / 5
        anchor = "start" if k == 0 else "end" if k == 5 else "middle"
        out.append(
            f'<text x="{x:.1f}" y="{y + 13}" text-anchor="{anchor}" {_FONT}>{_clock(t, t1 - t0)}</text>'
        )
    return out


def gantt_svg(bars: Sequence[Bar], t0: float, t1: float) -> str:
    """Attempts per worker over time: one row per worker (in order of first start), one bar per attempt
    coloured by how it ended."""
    workers: list[str] = []
    for bar in sorted(bars, key=lambda b: b.start):
        if bar.worker not in workers:
            workers.append(bar.worker)
    row = max(3.0, min(16.0, 600 / max(len(workers), 1)))
    label_w = 170.0 if row >= 9 else 0.0
    plot_w = _WIDTH - label_w
    span = max(t1 - t0, 1e-9)
    body = []
    index = {w: i for i, w in enumerate(workers)}
    if label_w:
        for name, i in index.items():
            body.append(
                f'<text x="{label_w - 4}" y="{i * row + row * 0.75:.1f}" text-anchor="end" {_FONT}>'
                f"{escape(name[:28])}</text>"
            )
    for bar in bars:
        x = label_w + (bar.start - t0) / span * plot_w
        w = max(1.0, (bar.end - bar.start) / span * plot_w)
        colour = OUTCOME_COLOURS.get(bar.outcome, "#555")
        body.append(
            f'<rect x="{x:.1f}" y="{index[bar.worker] * row + 1:.1f}" width="{w:.1f}" height="{row - 2:.1f}" '
            f'fill="{colour}"><title>{escape(bar.label)}</title></rect>'
        )
    height = len(workers) * row
    body += _time_axis(t0, t1, label_w, plot_w, height + 2)
    return _svg(_WIDTH, height + 20, body, f"timeline of {len(bars)} attempts on {len(workers)} workers")


def throughput_svg(
    spans: Sequence[tuple[float, float, float]], t0: float, t1: float, *, buckets: int = 60
) -> str:
    """Records per second over time: each ``(start, end, records)`` spread evenly over its span; a line
    of cumulative records on the same axes (scaled to the chart's height)."""
    span = max(t1 - t0, 1e-9)
    width = span / buckets
    totals = [0.0] * buckets
    for start, end, records in spans:
        a, b = max(start, t0), min(max(end, start), t1)
        if b <= a:  # instantaneous: all in one bucket
            totals[min(buckets - 1, max(0, int((a - t0) / width)))] += records
            continue
        for k in range(max(0, int((a - t0) / width)), min(buckets, int((b - t0) / width) + 1)):
            lo, hi = t0 + k * width, t0 + (k + 1) * width
            totals[k] += records * max(0.0, min(b, hi) - max(a, lo)) / (b - a)
    rates = [t / width for t in totals]
    peak = max(rates) or 1.0
    h, x0, plot_w = 180.0, 60.0, _WIDTH - 70.0
    body = [f'<text x="{x0 - 4}" y="10" text-anchor="end" {_FONT}>{peak:,.0f}/s</text>']
    bar_w = plot_w / buckets
    for k, r in enumerate(rates):
        bh = r / peak * h
        body.append(
            f'<rect x="{x0 + k * bar_w:.1f}" y="{h - bh:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
            f'height="{bh:.1f}" '
            f'fill="#2f7fd8"><title>{_clock(t0 + k * width)}: {r:,.1f} records/s</title></rect>'
        )
    cumulative, points = 0.0, [f"{x0:.1f},{h:.1f}"]
    total = sum(totals) or 1.0
    for k, t in enumerate(totals):
        cumulative += t
        points.append(f"{x0 + (k + 1) * bar_w:.1f},{h - cumulative / total * h:.1f}")
    body.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="#2e9d48" stroke-width="2"/>')
    body += _time_axis(t0, t1, x0, plot_w, h + 2)
    return _svg(_WIDTH, h + 20, body, "records per second over time")


def histogram_svg(durations: Sequence[float], *, bins: int = 20) -> str:
    """How many shards took how long (seconds), ``bins`` equal bins from 0 to the longest."""
    longest = max(durations, default=0.0) or 1.0
    counts = [0] * bins
    for d in durations:
        counts[min(bins - 1, int(d / longest * bins))] += 1
    peak = max(counts) or 1
    h, x0, plot_w = 160.0, 40.0, _WIDTH - 50.0
    bar_w = plot_w / bins
    body = [f'<text x="{x0 - 4}" y="10" text-anchor="end" {_FONT}>{peak}</text>']
    for k, c in enumerate(counts):
        bh = c / peak * h
        lo, hi = longest * k / bins, longest * (k + 1) / bins
        body.append(
            f'<rect x="{x0 + k * bar_w:.1f}" y="{h - bh:.1f}" width="{bar_w - 2:.1f}" height="{bh:.1f}" '
            f'fill="#6a5acd"><title>{c} shards took {lo:,.1f}-{hi:,.1f} s</title></rect>'
        )
    body.append(f'<line x1="{x0}" y1="{h + 1}" x2="{x0 + plot_w}" y2="{h + 1}" stroke="#888"/>')
    for k in (0, bins // 2, bins):
        anchor = "start" if k == 0 else "end" if k == bins else "middle"
        body.append(
            f'<text x="{x0 + k * bar_w:.1f}" y="{h + 14}" text-anchor="{anchor}" {_FONT}>'
            f"{longest * k / bins:,.1f} s</text>"
        )
    return _svg(_WIDTH, h + 20, body, f"histogram of {len(durations)} shard durations")
