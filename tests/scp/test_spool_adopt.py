"""Spool.adopt: a received file moved into its series folder, the folder made first when it is not there (a
series' first instance, or one whose folder a purge removed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from node.spool import Spool


def _received(spool: Spool, name: str, data: bytes) -> Path:
    path = spool.incoming / name
    path.write_bytes(data)
    return path


def test_adopt_makes_missing_folders_and_moves_the_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first = spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    spool.adopt(first, _received(spool, "a.part", b"one"), 3, "0" * 64)
    assert spool.path(first).read_bytes() == b"one"
    second = spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.6")  # the folder is there now
    spool.adopt(second, _received(spool, "b.part", b"two"), 3, "0" * 64)
    shutil.rmtree(spool.study_dir("1.2.3"))  # purged
    spool.adopt(first, _received(spool, "c.part", b"three"), 5, "0" * 64)
    assert spool.path(first).read_bytes() == b"three"
    assert list(spool.incoming.iterdir()) == []


def test_adopt_of_a_missing_file_raises_and_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    target = spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    with pytest.raises(FileNotFoundError):
        spool.adopt(target, spool.incoming / "gone.part", 3, "0" * 64)
    assert not spool.path(target).exists()
