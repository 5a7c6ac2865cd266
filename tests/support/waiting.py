"""The one polling loop of the tests: a condition, a deadline and a message that says what did not happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], timeout: float, message: str | Callable[[], str],
             interval: float = 0.1) -> T:
    """Poll ``predicate`` every ``interval`` seconds until it returns something truthy, and return that value.

    After ``timeout`` seconds the test fails with "timed out after <timeout> s: <message>"; ``message`` may be a
    callable, evaluated only then (e.g. to append the tail of a log). ``predicate`` may itself call
    :func:`pytest.fail` to stop waiting early (a process it waits on has exited).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            pytest.fail(f"timed out after {timeout:g} s: {text}")
        time.sleep(interval)


def wait_cpu_settled(cpu_seconds: Callable[[], float], threshold_s: float, timeout_s: float,
                     interval: float = 0.5) -> float:
    """Until processes have done their start-up work: poll ``cpu_seconds`` (their utime + stime) every ``interval``
    seconds until it grew by less than ``threshold_s`` in one interval, and return the last reading (after
    ``timeout_s`` the last reading too: a machine too loaded to settle is measured as it is, not failed).

    Lazy imports in background threads (the listener loads the job layer, ~1.5 s of CPU) would otherwise count as
    work a test or a benchmark measures, or hold a process off the CPU when a test expects it to take a connection.
    """
    deadline = time.monotonic() + timeout_s
    last = cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = cpu_seconds()
        if now - last < threshold_s:
            return now
        last = now
    return last
