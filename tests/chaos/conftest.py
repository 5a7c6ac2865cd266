"""Fixtures of the chaos suite: synthetic studies, a receiving PACS, ``ainode serve`` processes cleaned up after
each test, and a small filesystem to fill. Every test here runs real processes for a few minutes: all are
marked ``slow``. Each prints one ``CHAOS`` line of figures (run with ``-s`` to see them)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest

from node.values import Destination
from tests.chaos.harness import ServeProcess, free_port, node_env, study_uid
from tests.support.scp import StoreSCP

if not sys.platform.startswith("linux"):
    pytest.skip("the chaos suite reads /proc and mounts filesystems (Linux)", allow_module_level=True)


@pytest.fixture(scope="session")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four small synthetic studies (T1CE, T2, SEG), generated once per session."""
    from node.synth.generate import generate_cohort

    folder = tmp_path_factory.mktemp("chaos-studies")
    generate_cohort(folder, 4, 31, size="small")
    return [folder / f"case{n:04d}" for n in range(4)]


def study_files(study: Path) -> list[Path]:
    return sorted(study.rglob("*.dcm"))


class Pacs(StoreSCP):
    """The receiving PACS (a pynetdicom Storage SCP writing ``<SOP Instance UID>.dcm``)."""

    def reports(self, uid: str | None = None) -> list[Path]:
        """The SRs received (of study ``uid``)."""
        found = []
        for sop in list(self.received):
            ds = pydicom.dcmread(self.directory / f"{sop}.dcm", stop_before_pixels=True)
            if ds.Modality == "SR" and (uid is None or ds.StudyInstanceUID == uid):
                found.append(self.directory / f"{sop}.dcm")
        return found


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    receiver = Pacs(tmp_path / "pacs", free_port())
    yield receiver
    receiver.stop()


NodeFactory = Callable[..., ServeProcess]


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[NodeFactory]:
    """``make_node(destination, spool=None, **env)``: an ``ainode serve`` (not started) whose processes are all
    killed at teardown."""
    made: list[ServeProcess] = []

    def factory(destination: Destination | None, spool: Path | None = None, **env: str) -> ServeProcess:
        root = tmp_path / f"node{len(made)}"
        root.mkdir()
        args = ("--quiet-period", "2") + (("--destination", str(destination)) if destination else ())
        node = ServeProcess(root, spool or root / "spool", free_port(), node_env(**env), args)
        made.append(node)
        return node

    yield factory
    for node in made:
        node.cleanup()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs mounted for the test (root only), unmounted after."""
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("mount is not available")
    folder = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    done = subprocess.run([mount, "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        with contextlib.suppress(OSError):
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=60)


__all__ = ["Pacs", "study_files", "study_uid"]
