"""Charts of the assembly's report as inline SVG, drawn here: black lines and markers on white,
so they print on a cheap printer and need no plotting library or browser script.

A ratio of None (no figure for that day) leaves a gap in the line, never a drop to zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["line_chart", "sparkline"]

_FONT = 'font-family="DejaVu Sans, Liberation Sans, Arial, sans-serif"'


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """Stretches of consecutive values that have a figure."""
    runs: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    for index, value in enumerate(values):
        if value is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((index, value))
    if current:
        runs.append(current)
    return runs


def line_chart(
    values: Sequence[float | None],
    labels: Sequence[str],
    *,
    title: str,
    ticks: Sequence[tuple[float, str]],
    marks: Sequence[tuple[int, str]] = (),
    width: int = 640,
    height: int = 180,
) -> str:
    """A ratio per step (a day, a week) with the y axis at `ticks` (ratio, its text); `labels`
    name the steps (the first, middle and last are written); `marks` draw a dashed vertical line
    at a step with a short text (a decision taken that day)."""
    if len(values) != len(labels):
        raise ValueError("one label per value")
    left, right, top, bottom = 48, 12, 12, 28
    inner_w, inner_h = width - left - right, height - top - bottom
    top_ratio = max([1.0, *(v for v in values if v is not None)])
    steps = max(len(values) - 1, 1)

    def x(index: int) -> float:
        return left + inner_w * (index / steps if len(values) > 1 else 0.5)

    def y(ratio: float) -> float:
        return top + inner_h * (1 - ratio / top_ratio)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for ratio, text in ticks:
        if ratio > top_ratio:
            continue
        at = y(ratio)
        parts.append(
            f'<line x1="{left}" y1="{at:.1f}" x2="{width - right}" y2="{at:.1f}" '
            'stroke="#000" stroke-width="0.5" stroke-dasharray="2,3"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{at + 4:.1f}" text-anchor="end" font-size="11" {_FONT}>'
            f"{escape(text)}</text>"
        )
    shown = sorted({0, len(labels) // 2, len(labels) - 1}) if labels else []
    for index in shown:
        parts.append(
            f'<text x="{x(index):.1f}" y="{height - 8}" text-anchor="middle" font-size="11" '
            f"{_FONT}>{escape(labels[index])}</text>"
        )
    for index, text in marks:
        at = x(index)
        parts.append(
            f'<line x1="{at:.1f}" y1="{top}" x2="{at:.1f}" y2="{top + inner_h}" stroke="#000" '
            'stroke-width="1" stroke-dasharray="6,3"/>'
        )
        parts.append(
            f'<text x="{at + 3:.1f}" y="{top + 10}" font-size="10" {_FONT}>{escape(text)}</text>'
        )
    for run in _runs(values):
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in run)
        if len(run) > 1:
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="#000" stroke-width="2"/>'
            )
        parts += [f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="#000"/>' for i, v in run]
    parts.append(
        f'<line x1="{left}" y1="{top + inner_h}" x2="{width - right}" y2="{top + inner_h}" '
        'stroke="#000" stroke-width="1"/>'
    )
    parts.append("</svg>")
    return "".join(parts)


def sparkline(
    values: Sequence[float | None], *, title: str, width: int = 120, height: int = 28
) -> str:
    """A small line of a machine's ratio per step, 0 at the bottom and 100 % at the top (higher
    values are drawn at the top edge), for a table cell."""
    steps = max(len(values) - 1, 1)
    pad = 3

    def x(index: int) -> float:
        return pad + (width - 2 * pad) * (index / steps if len(values) > 1 else 0.5)

    def y(ratio: float) -> float:
        return pad + (height - 2 * pad) * (1 - min(ratio, 1.0))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="spark" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="#000" stroke-width="0.5"/>',
    ]
    for run in _runs(values):
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in run)
        if len(run) > 1:
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="#000" stroke-width="1.5"/>'
            )
        else:
            (i, v), *_ = run
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="1.5" fill="#000"/>')
    parts.append("</svg>")
    return "".join(parts)
