"""Charts drawn on the server as SVG: no CDN, no JavaScript.

Each chart is an <svg> with a viewBox (it scales to its box: width 100 %), a <title>, a <desc> and an aria-label,
axes with labelled ticks, and a <title> tooltip on every bar or point. Every chart goes with a table of the same
numbers (`Chart.headers` / `Chart.rows`), which the template shows beside it (templates/admin/providers/includes/
chart.html), so nothing is only in the picture.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 480, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 26, 30
MAX_X_LABELS = 8
_ids = itertools.count(1)

BLUE, RED, ORANGE, GREY, GREEN = "#2f6fae", "#c62828", "#e65100", "#757575", "#2e7d32"


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence  # numbers (int, float, Decimal) or None for "no value"
    colour: str = BLUE


@dataclass
class Chart:
    title: str
    svg: SafeString
    headers: list[str] = field(default_factory=list)
    rows: list[list] = field(default_factory=list)  # the same numbers as the picture, as text


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 4, 6 or 8 x 10^n at or above `value` (1 for nothing): its quarters (the ticks) are round."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 4, 6, 8, 10):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def fmt(value, unit: str = "") -> str:
    """A number as shown on an axis or in a tooltip: integers plain, small decimals with up to 6 places."""
    if value is None:
        return "-"
    if isinstance(value, Decimal) or (isinstance(value, float) and not float(value).is_integer()):
        number = float(value)
        text = (f"{number:,.6f}" if abs(number) < 1 else f"{number:,.2f}").rstrip("0").rstrip(".")
    else:
        text = f"{int(value):,}"
    return f"{text} {unit}".strip() if unit else text


def _numbers(series: Sequence[Series]) -> list[float]:
    return [float(v) for s in series for v in s.values if v is not None]


def _frame(title: str, labels: Sequence[str], top: float, unit: str, series: Sequence[Series]) -> list[str]:
    """The svg's opening, title, description, grid lines, y ticks, x labels and legend."""
    n = max(len(labels), 1)
    chart_id = f"chart-{next(_ids)}"
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    summary = ", ".join(f"{s.name}: total {fmt(sum(_numbers([s])), unit)}, peak {fmt(max(_numbers([s]), default=0), unit)}"
                        for s in series)
    desc = f"{len(labels)} points from {labels[0]} to {labels[-1]}. {summary}." if labels else "No data."
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" aria-describedby="{chart_id}-desc" preserveAspectRatio="xMidYMid meet">',
        f"<title>{escape(title)}</title>",
        f'<desc id="{chart_id}-desc">{escape(desc)}</desc>',
        '<g class="axis" font-size="11" fill="#666">',
    ]
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(_tick(value, top)))}</text>')
    longest = max((len(label) for label in labels), default=1)
    fits = max(1, min(MAX_X_LABELS, int(plot_w // (longest * 6.5 + 10))))  # 11 px text: ~6.5 units a character
    step = max(1, math.ceil(n / fits))
    for i, label in enumerate(labels):
        if i % step == 0:
            x = LEFT + plot_w * (i + 0.5) / n
            parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 10}" text-anchor="middle">{escape(label)}</text>')
    parts.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#999"/>')
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" stroke="#999"/>')
    if unit:
        parts.append(f'<text x="4" y="14">{escape(unit)}</text>')
    x = LEFT
    for s in series:
        parts.append(f'<rect x="{x}" y="6" width="10" height="10" fill="{s.colour}"/>'
                     f'<text x="{x + 14}" y="15">{escape(s.name)}</text>')
        x += 24 + 7 * len(s.name)
    parts.append("</g>")
    return parts


def _tick(value: float, top: float):
    return int(value) if top >= 4 and float(value).is_integer() else round(value, 6)


def _scale(values: list[float]) -> float:
    return nice_ceiling(max(values, default=0))


def bar_chart(*, title: str, labels: Sequence[str], series: Sequence[Series], unit: str = "",
              colours: Sequence[str] | None = None) -> SafeString:
    """Bars per label; several series are drawn over each other, first behind (e.g. calls, then errors).
    `colours` (one per label) overrides the first series' colour bar by bar (e.g. a health status)."""
    top = _scale(_numbers(series))
    parts = _frame(title, labels, top, unit, series)
    n = max(len(labels), 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / n
    for depth, s in enumerate(series):
        width = slot * (0.8 - 0.3 * depth / max(len(series), 1))
        for i, value in enumerate(s.values):
            if value is None:
                continue
            h = plot_h * float(value) / top
            x = LEFT + slot * i + (slot - width) / 2
            colour = colours[i] if colours and depth == 0 else s.colour
            parts.append(f'<rect x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{max(width, 1):.1f}" '
                         f'height="{h:.1f}" fill="{colour}"><title>{escape(labels[i])}: {escape(s.name)} '
                         f'{escape(fmt(value, unit))}</title></rect>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every text above is escaped


def line_chart(*, title: str, labels: Sequence[str], series: Sequence[Series], unit: str = "") -> SafeString:
    """One line per series, a dot per value; a None value breaks the line."""
    top = _scale(_numbers(series))
    parts = _frame(title, labels, top, unit, series)
    n = max(len(labels), 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    for s in series:
        points, runs = [], [[]]
        for i, value in enumerate(s.values):
            if value is None:
                runs.append([])
                continue
            x, y = LEFT + plot_w * (i + 0.5) / n, TOP + plot_h - plot_h * float(value) / top
            runs[-1].append(f"{x:.1f},{y:.1f}")
            points.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{s.colour}"><title>{escape(labels[i])}: '
                          f'{escape(s.name)} {escape(fmt(value, unit))}</title></circle>')
        parts.extend(f'<polyline fill="none" stroke="{s.colour}" stroke-width="2" points="{" ".join(run)}"/>'
                     for run in runs if len(run) > 1)
        parts.extend(points)
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every text above is escaped
