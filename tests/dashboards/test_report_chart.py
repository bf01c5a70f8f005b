"""The report's SVG charts: parsed back as XML, a day without a figure is a gap in the line (not
a fall to zero), and every point sits where its ratio says."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from dashboards.report_chart import line_chart, sparkline

SVG = "{http://www.w3.org/2000/svg}"
TICKS = [(0.0, "0 %"), (0.5, "50 %"), (1.0, "100 %")]


def points(svg: str) -> list[list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    return [
        [tuple(map(float, pair.split(","))) for pair in line.attrib["points"].split()]  # type: ignore[misc]
        for line in root.iter(f"{SVG}polyline")
    ]


def test_a_day_without_a_figure_breaks_the_line() -> None:
    svg = line_chart(
        [0.5, 0.6, None, 0.8, 0.9], ["1/3", "2/3", "3/3", "4/3", "5/3"], title="Prensas",
        ticks=TICKS,
    )  # fmt: skip
    root = ET.fromstring(svg)
    assert root.attrib["role"] == "img" and root.find(f"{SVG}title").text == "Prensas"  # type: ignore[union-attr]
    runs = points(svg)
    assert [len(run) for run in runs] == [2, 2]
    assert len(list(root.iter(f"{SVG}circle"))) == 4
    # The y axis: 0 at the bottom (height 180 - 28), 100 % at the top (12); 50 % halfway.
    (x0, y0), (x1, y1) = runs[0]
    assert y0 == pytest.approx(12 + 140 * 0.5) and y1 == pytest.approx(12 + 140 * 0.4)
    assert x0 == 48 and x1 == pytest.approx(48 + 580 / 4)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts == ["0 %", "50 %", "100 %", "1/3", "3/3", "5/3"]


def test_a_mark_names_a_decision_and_escapes_it() -> None:
    svg = line_chart([0.2, 0.3], ["a", "b"], title="t", ticks=TICKS, marks=[(1, "2º turno <sí>")])
    root = ET.fromstring(svg)
    assert "2º turno <sí>" in [t.text for t in root.iter(f"{SVG}text")]


def test_values_over_100_percent_raise_the_top_of_the_chart() -> None:
    (run,) = points(line_chart([1.2, 0.6], ["a", "b"], title="t", ticks=TICKS))
    assert run[0][1] == pytest.approx(12) and run[1][1] == pytest.approx(12 + 140 * 0.5)
    with pytest.raises(ValueError, match="one label per value"):
        line_chart([0.1], [], title="t", ticks=TICKS)


def test_sparkline_keeps_to_its_box() -> None:
    svg = sparkline([0.0, 1.5, None, 0.5], title="press-1")
    runs = points(svg)
    assert len(runs) == 1 and all(3 <= y <= 25 for _, y in runs[0])
    assert len(list(ET.fromstring(svg).iter(f"{SVG}circle"))) == 1  # the lone last day
    assert ET.fromstring(sparkline([], title="none")).find(f"{SVG}polyline") is None
