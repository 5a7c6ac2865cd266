"""Synthetic studies shared by the end-to-end pipeline tests (generated once per session, deterministic)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from node.cli import main


def case_dirs(root: Path) -> list[Path]:
    """The case folders ``ainode synth`` wrote under ``root`` (labels and truth live beside them)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name != "truth")


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small-cohort")
    assert main(["synth", "--out", str(root), "--cases", "2", "--seed", "3", "--size", "small"]) == 0
    return root


@pytest.fixture
def small_case(small_cohort: Path, tmp_path: Path) -> Path:
    """A private, modifiable copy of the first small case."""
    source = case_dirs(small_cohort)[0]
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target
