"""Fixtures of the deployment tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.exclusive import heavy_deployment


@pytest.fixture
def heavy_deployment_lock() -> Iterator[None]:
    """Run this test's whole node alone among the heavy deployment tests (:mod:`tests.support.exclusive`)."""
    with heavy_deployment():
        yield
