"""Spool.adopt: a received file moved into its series folder, the folder made first when it is not there (a
series' first instance, or one whose folder a purge removed); Spool.link_or_adopt: a second name where hard links
work, else (or over a racing copy, when asked) the file moved there."""

from __future__ import annotations

import errno
import os
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


def test_link_or_adopt_links_where_it_can_and_moves_where_it_must(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    target = spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    source = _received(spool, "a.part", b"one")
    stored, moved = spool.link_or_adopt(target, source, 3, "0" * 64)
    assert not moved and source.exists() and spool.path(target).read_bytes() == b"one"  # two names, one file
    assert stored.relative_path == target and source.stat().st_nlink == 2
    racing = _received(spool, "b.part", b"two")
    with pytest.raises(FileExistsError):  # the start-up's recovery only puts a file where none is
        spool.link_or_adopt(target, racing, 3, "0" * 64)
    _stored, moved = spool.link_or_adopt(target, racing, 3, "0" * 64, over_existing=True)  # the listener's
    assert moved and not racing.exists() and spool.path(target).read_bytes() == b"two"

    def no_links(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # FAT, some network shares
    other = spool.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.6")
    third = _received(spool, "c.part", b"three")
    _stored, moved = spool.link_or_adopt(other, third, 5, "0" * 64)
    assert moved and not third.exists() and spool.path(other).read_bytes() == b"three"
