"""A recurring problem is logged the first time and then at most once per period, counted always."""

from __future__ import annotations

from collector.lograte import Occasional


def test_the_first_time_and_then_once_a_period_with_every_time_counted() -> None:
    now = [1000.0]
    problem = Occasional(600, clock=lambda: now[0])
    said = []
    for step in (0, 1, 300, 298, 1, 599, 601):  # at 1000, 1001, 1301, 1599, 1600, 2199, 2800
        now[0] += step
        said.append(problem.happened())
    assert said == [True, False, False, False, True, False, True]
    assert problem.count == 7
