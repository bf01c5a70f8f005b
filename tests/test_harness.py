"""The test harness itself: the leak checks in conftest.py must really fail a leaking test."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

LEAKY_TESTS = """
import asyncio
import threading


def test_leaks_a_thread():
    threading.Thread(target=threading.Event().wait, args=(5,), daemon=True, name="leaker").start()


async def test_leaks_a_task():
    asyncio.create_task(asyncio.sleep(5), name="forgotten")


async def test_clean_async():
    await asyncio.sleep(0)


def test_clean_sync():
    pass
"""


def test_leak_checks_fail_leaking_tests(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "asyncio_default_test_loop_scope = function\n"
    )
    pytester.makepyfile(test_leaky=LEAKY_TESTS)
    result = pytester.runpytest_subprocess("-p", "tests.conftest", "-W", "error")
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks_a_thread*",
            "test left threads running: [[]'leaker'[]]",
            "*ERROR at teardown of test_leaks_a_task*",
            "test left asyncio tasks pending: [[]'forgotten: <coroutine object sleep *",
        ]
    )
