"""Small SVG plots written by hand: a line chart with bands, horizontal bars, a heatmap.

Each function returns one ``<svg>`` element as text, well-formed XML, sized by its
``viewBox`` so that it scales with the page, with a ``<title>`` for screen readers and a
tooltip (``<title>``) on every mark. Text is escaped: class, feature and annotator names come
from users. No plotting library is imported: a round draws a handful of small plots, and
these take microseconds and no import time.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: characters of a class or feature name shown in a plot (the whole name is its tooltip)
NAME_CHARS = 28
#: colours that colour-blind readers tell apart (Okabe and Ito)
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")


def escape(value: Any) -> str:
    """Text for HTML or SVG (XML): ``& < > " '`` escaped."""
    return html.escape(str(value), quote=True)


def is_missing(value: Any) -> bool:
    """None, pandas' NA, NaN or an infinity."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float | np.floating) and not math.isfinite(value)


def finite(values: Sequence[Any] | None) -> list[float]:
    """The values that are numbers, as floats."""
    return [float(v) for v in values or () if not is_missing(v)]


def shorten(name: str, limit: int = NAME_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _text_width(text: str, size: float = 11.0) -> float:
    """A text's width in px, roughly (no font metrics without a browser)."""
    return len(text) * size * 0.58


# -- SVG plots ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Line:
    """One series of a line chart: ``y`` per x (None: no value), an optional band
    (``lower``, ``upper``) and per-point tooltips (``notes``)."""

    name: str
    y: Sequence[float | None]
    lower: Sequence[float | None] | None = None
    upper: Sequence[float | None] | None = None
    dashed: bool = False
    notes: Sequence[str] | None = None


@dataclass(frozen=True)
class Mark:
    """An error bar: a value and its interval at one x."""

    name: str
    x: float
    y: float
    lower: float
    upper: float


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _svg_open(width: float, height: float, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" role="img" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
    )


def _legend(names: Sequence[tuple[str, str, bool]], x0: float, y: float) -> str:
    """``(name, colour, dashed)`` swatches in one row from ``x0``."""
    parts, x = [], x0
    for name, colour, dashed in names:
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        parts.append(
            f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 18:.1f}" y2="{y:.1f}" stroke="{colour}" '
            f'stroke-width="2.5"{dash}/>'
            f'<text x="{x + 22:.1f}" y="{y + 4:.1f}" class="legend">{escape(name)}</text>'
        )
        x += 30 + _text_width(name)
    return "".join(parts)


def svg_line_chart(
    x: Sequence[float],
    lines: Sequence[Line],
    *,
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float | None, float | None] = (None, None),
    rules: Sequence[tuple[float, str]] = (),
    marks: Sequence[Mark] = (),
    digits: int = 3,
    width: float = 680,
    height: float = 280,
) -> str:
    """A line chart of ``lines`` over ``x`` (rounds): bands shaded, missing values left as
    gaps, each point with a tooltip; ``rules`` are labeled horizontal reference lines and
    ``marks`` error bars.

    Parameters
    ----------
    x : sequence of float, shape (n,)
    lines : each with ``y`` (and band, notes) of shape (n,)
    y_range : fixed ends of the y axis; None: from the data
    """
    n = len(x)
    for line in lines:
        for name in ("y", "lower", "upper", "notes"):
            values = getattr(line, name)
            if values is not None and len(values) != n:
                raise ValueError(f"line {line.name!r}: {name} has {len(values)} values, x has {n}")
    left, right, top, bottom = 60.0, 16.0, 40.0, 44.0
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [float(v) for v in x]
    x_low, x_high = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    values = [
        v for line in lines for v in finite([*line.y, *(line.lower or ()), *(line.upper or ())])
    ]
    values += [v for v, _ in rules] + [v for m in marks for v in (m.lower, m.upper)]
    y_low = y_range[0] if y_range[0] is not None else min(values, default=0.0)
    y_high = y_range[1] if y_range[1] is not None else max(values, default=1.0)
    if y_high <= y_low:
        y_low, y_high = y_low - 0.5, y_high + 0.5
    if y_range[0] is None or y_range[1] is None:
        pad = (y_high - y_low) * 0.06
        y_low = y_low - pad if y_range[0] is None else y_low
        y_high = y_high + pad if y_range[1] is None else y_high

    def px(v: float) -> float:
        return left + (v - x_low) / (x_high - x_low) * plot_w

    def py(v: float) -> float:
        return top + (1 - (v - y_low) / (y_high - y_low)) * plot_h

    out = [_svg_open(width, height, title)]
    out.append(
        f'<rect x="{left:.1f}" y="{top:.1f}" width="{plot_w:.1f}" height="{plot_h:.1f}" '
        'class="frame"/>'
    )
    for tick in _nice_ticks(y_low, y_high):
        if y_low <= tick <= y_high:
            out.append(
                f'<line x1="{left:.1f}" x2="{left + plot_w:.1f}" y1="{py(tick):.1f}" '
                f'y2="{py(tick):.1f}" class="grid"/><text x="{left - 6:.1f}" '
                f'y="{py(tick) + 4:.1f}" class="tick" text-anchor="end">{tick:g}</text>'
            )
    step = max(1, math.ceil((x_high - x_low) / 12))
    for tick in range(math.ceil(x_low), math.floor(x_high) + 1, step):
        out.append(
            f'<text x="{px(tick):.1f}" y="{top + plot_h + 16:.1f}" class="tick" '
            f'text-anchor="middle">{tick}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 8:.1f}" class="axis" '
        f'text-anchor="middle">{escape(x_label)}</text>'
        f'<text x="14" y="{top + plot_h / 2:.1f}" class="axis" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">{escape(y_label)}</text>'
    )
    for value, label in rules:
        out.append(
            f'<line x1="{left:.1f}" x2="{left + plot_w:.1f}" y1="{py(value):.1f}" '
            f'y2="{py(value):.1f}" class="rule"/><text x="{left + plot_w - 4:.1f}" '
            f'y="{py(value) - 4:.1f}" class="tick" text-anchor="end">{escape(label)}</text>'
        )
    for i, line in enumerate(lines):
        colour = PALETTE[i % len(PALETTE)]
        if line.lower is not None and line.upper is not None:
            run: list[tuple[float, float, float]] = []
            for xv, lo, hi in [*zip(xs, line.lower, line.upper, strict=True), (0, None, None)]:
                if is_missing(lo) or is_missing(hi):
                    if len(run) == 1:  # a band of one round: a bar of its interval
                        a, lo_, hi_ = run[0]
                        out.append(
                            f'<rect x="{px(a) - 4:.1f}" y="{py(hi_):.1f}" width="8" '
                            f'height="{max(py(lo_) - py(hi_), 0.5):.1f}" fill="{colour}" '
                            'fill-opacity="0.15" stroke="none"/>'
                        )
                    elif run:
                        upper = " ".join(f"{px(a):.1f},{py(h):.1f}" for a, _, h in run)
                        lower = " ".join(f"{px(a):.1f},{py(lo_):.1f}" for a, lo_, _ in run[::-1])
                        out.append(
                            f'<polygon points="{upper} {lower}" fill="{colour}" '
                            'fill-opacity="0.15" stroke="none"/>'
                        )
                    run = []
                else:
                    run.append((xv, float(lo), float(hi)))
        path, pen_down = [], False
        for xv, yv in zip(xs, line.y, strict=True):
            if is_missing(yv):
                pen_down = False
                continue
            path.append(f"{'L' if pen_down else 'M'}{px(xv):.1f} {py(float(yv)):.1f}")
            pen_down = True
        dash = ' stroke-dasharray="5 3"' if line.dashed else ""
        if path:
            out.append(
                f'<path d="{" ".join(path)}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
            )
        for j, (xv, yv) in enumerate(zip(xs, line.y, strict=True)):
            if is_missing(yv):
                continue
            note = line.notes[j] if line.notes is not None else ""
            tip = f"{line.name}, {x_label} {xv:g}: {float(yv):.{digits}f}" + (
                f" ({note})" if note else ""
            )
            # a dashed line's points are rings, so a solid point under one stays visible
            look = (
                f'r="4.5" fill="none" stroke="{colour}" stroke-width="1.5"'
                if line.dashed
                else f'r="3.2" fill="{colour}"'
            )
            out.append(
                f'<circle cx="{px(xv):.1f}" cy="{py(float(yv)):.1f}" {look}>'
                f"<title>{escape(tip)}</title></circle>"
            )
    for mark in marks:
        cx = px(mark.x)
        out.append(
            f'<g class="mark"><title>{escape(mark.name)}: {mark.y:.{digits}f} '
            f"[{mark.lower:.{digits}f}, {mark.upper:.{digits}f}]</title>"
            f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{py(mark.lower):.1f}" '
            f'y2="{py(mark.upper):.1f}"/>'
            f'<line x1="{cx - 5:.1f}" x2="{cx + 5:.1f}" y1="{py(mark.lower):.1f}" '
            f'y2="{py(mark.lower):.1f}"/><line x1="{cx - 5:.1f}" x2="{cx + 5:.1f}" '
            f'y1="{py(mark.upper):.1f}" y2="{py(mark.upper):.1f}"/></g>'
        )
    legend = [(line.name, PALETTE[i % len(PALETTE)], line.dashed) for i, line in enumerate(lines)]
    legend += [(m.name, "#222", False) for m in marks[:1]]
    out.append(_legend(legend, left, 16))
    out.append("</svg>")
    return "".join(out)


def svg_bar_chart(
    categories: Sequence[str],
    groups: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    value_label: str,
    value_max: float | None = None,
    digits: int = 2,
    highlight: Sequence[str] = (),
    width: float = 680,
) -> str:
    """Horizontal bars: one row per category, one bar per group in it (missing: no bar).
    Categories in ``highlight`` get a marker beside their name.

    Parameters
    ----------
    categories : sequence of str, shape (k,)
    groups : name -> values of shape (k,), >= 0
    """
    k = len(categories)
    for name, values in groups.items():
        if len(values) != k:
            raise ValueError(f"group {name!r} has {len(values)} values for {k} categories")
    bar_h = 12.0
    row_h = bar_h * max(1, len(groups)) + 8
    shown = [shorten(str(c)) for c in categories]
    label_w = min(220.0, max([_text_width(s) for s in shown] + [40.0]) + 20)
    top, bottom, right = 34.0, 40.0, 60.0
    plot_w = width - label_w - right
    height = top + row_h * max(k, 1) + bottom
    everything = [v for values in groups.values() for v in finite(values)]
    high = value_max if value_max is not None else max(everything, default=1.0)
    high = high if high > 0 else 1.0

    def px(v: float) -> float:
        return label_w + min(max(v, 0.0), high) / high * plot_w

    out = [_svg_open(width, height, title)]
    for tick in _nice_ticks(0.0, high, 4):
        if tick <= high:
            out.append(
                f'<line x1="{px(tick):.1f}" x2="{px(tick):.1f}" y1="{top:.1f}" '
                f'y2="{top + row_h * k:.1f}" class="grid"/><text x="{px(tick):.1f}" '
                f'y="{top + row_h * k + 14:.1f}" class="tick" text-anchor="middle">{tick:g}</text>'
            )
    out.append(
        f'<text x="{label_w + plot_w / 2:.1f}" y="{height - 8:.1f}" class="axis" '
        f'text-anchor="middle">{escape(value_label)}</text>'
    )
    marked = set(highlight)
    for i, (category, label) in enumerate(zip(categories, shown, strict=True)):
        y0 = top + i * row_h + 4
        flag = " ◆" if category in marked else ""
        out.append(
            f'<text x="{label_w - 8:.1f}" y="{y0 + row_h / 2:.1f}" class="tick" '
            f'text-anchor="end"><title>{escape(category)}</title>{escape(label)}{flag}</text>'
        )
        for j, (group, values) in enumerate(groups.items()):
            value = values[i]
            if is_missing(value):
                continue
            y = y0 + j * bar_h
            colour = PALETTE[j % len(PALETTE)]
            length = px(float(value)) - label_w
            out.append(
                f'<rect x="{label_w:.1f}" y="{y:.1f}" width="{max(length, 0.5):.1f}" '
                f'height="{bar_h - 2:.1f}" fill="{colour}">'
                f"<title>{escape(category)}, {escape(group)}: "
                f"{float(value):.{digits}f}</title></rect>"
                f'<text x="{label_w + length + 4:.1f}" y="{y + bar_h - 3:.1f}" class="value">'
                f"{float(value):.{digits}f}</text>"
            )
    if len(groups) > 1:
        out.append(
            _legend(
                [(g, PALETTE[j % len(PALETTE)], False) for j, g in enumerate(groups)], label_w, 16
            )
        )
    out.append("</svg>")
    return "".join(out)


def _blue(share: float) -> str:
    """A colour from white (0) to dark blue (1)."""
    low, high = (247, 251, 255), (8, 48, 107)
    s = min(max(share, 0.0), 1.0)
    return "#" + "".join(f"{round(a + (b - a) * s):02x}" for a, b in zip(low, high, strict=True))


def svg_heatmap(
    matrix: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    *,
    title: str,
    row_label: str,
    column_label: str,
) -> str:
    """A matrix of counts as coloured cells, shaded by each row's share (a confusion
    matrix: the recall of each actual class), the count written in cells large enough.

    Parameters
    ----------
    matrix : np.ndarray of int, shape (len(rows), len(columns)), >= 0
    """
    if matrix.shape != (len(rows), len(columns)):
        raise ValueError(f"matrix has shape {matrix.shape}, labels {len(rows)} x {len(columns)}")
    k = max(len(rows), len(columns), 1)
    cell = min(44.0, max(12.0, 520.0 / k))
    row_names = [shorten(str(r)) for r in rows]
    col_names = [shorten(str(c)) for c in columns]
    label_w = min(220.0, max([_text_width(s) for s in row_names] + [40.0]) + 14)
    label_h = min(160.0, max([_text_width(s) for s in col_names] + [30.0]) * 0.72 + 14)
    top, left = 24.0, label_w + 22
    width = left + cell * len(columns) + 20
    height = top + cell * len(rows) + label_h + 24
    totals = matrix.sum(axis=1)
    out = [_svg_open(width, height, title)]
    for i, row in enumerate(rows):
        y = top + i * cell
        out.append(
            f'<text x="{left - 6:.1f}" y="{y + cell / 2 + 4:.1f}" class="tick" '
            f'text-anchor="end"><title>{escape(row)}</title>{escape(row_names[i])}</text>'
        )
        for j, column in enumerate(columns):
            count = int(matrix[i, j])
            share = count / totals[i] if totals[i] else 0.0
            x = left + j * cell
            diagonal = ' class="diagonal"' if str(row) == str(column) else ""
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell:.1f}" height="{cell:.1f}" '
                f'fill="{_blue(share)}"{diagonal}><title>{escape(row_label)} {escape(row)}, '
                f"{escape(column_label)} {escape(column)}: {count} ({share:.0%} of {escape(row)})"
                "</title></rect>"
            )
            if cell >= 20 and count:
                ink = "#fff" if share > 0.55 else "#111"
                out.append(
                    f'<text x="{x + cell / 2:.1f}" y="{y + cell / 2 + 4:.1f}" class="count" '
                    f'text-anchor="middle" style="fill:{ink}">{count}</text>'
                )
    base = top + cell * len(rows) + 6
    for j, _column in enumerate(columns):
        x = left + j * cell + cell / 2
        out.append(
            f'<text x="{x:.1f}" y="{base + 4:.1f}" class="tick" text-anchor="end" '
            f'transform="rotate(-45 {x:.1f} {base + 4:.1f})"><title>{escape(_column)}</title>'
            f"{escape(col_names[j])}</text>"
        )
    out.append(
        f'<text x="{left + cell * len(columns) / 2:.1f}" y="{height - 6:.1f}" class="axis" '
        f'text-anchor="middle">{escape(column_label)}</text>'
        f'<text x="12" y="{top + cell * len(rows) / 2:.1f}" class="axis" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + cell * len(rows) / 2:.1f})">{escape(row_label)}</text>'
    )
    out.append("</svg>")
    return "".join(out)
