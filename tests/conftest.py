"""Shared pytest fixtures (kept small and generic)."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest

from node.imaging.series_rules import SeriesRules, load_rules


@pytest.fixture(scope="session")
def series_rules() -> SeriesRules:
    """The default series rules of this checkout (config/series_rules.yaml)."""
    return load_rules()


@pytest.fixture
def require_tool() -> Callable[[str], str]:
    """Return the path of an external command line tool, or skip the test when it is not installed."""

    def find(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            pytest.skip(f"{name} is not installed")
        return path

    return find
