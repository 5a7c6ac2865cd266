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
