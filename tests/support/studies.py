"""Synthetic studies shared between test folders: ``ainode synth`` output, generated once per session.

:func:`synth_case` is the small study (T1CE, T2 and a two-segment SEG; ``--cases 1 --seed 1 --size small``)
that the listener, ledger, job and SR tests all read; it is written once per session and must not be modified
(copy it first).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.cli import synth as synth_command


@dataclass(frozen=True)
class SynthCase:
    root: Path
    t1ce: tuple[Path, ...]
    t2: tuple[Path, ...]
    seg: tuple[Path, ...]

    @property
    def all(self) -> tuple[Path, ...]:
        return self.t1ce + self.t2 + self.seg


def synth_cohort(out: Path, cases: int, seed: int, size: str = "small") -> Path:
    """``ainode synth --out OUT --cases N --seed S --size SIZE`` in this process (the command's own handler,
    without the CLI's logging set-up); returns ``out``."""
    parser = argparse.ArgumentParser()
    synth_command.register(parser.add_subparsers())
    args = parser.parse_args(["synth", "--out", str(out), "--cases", str(cases), "--seed", str(seed),
                              "--size", size])
    assert args.handler(args) == 0
    return out


@pytest.fixture(scope="session")
def synth_case(tmp_path_factory: pytest.TempPathFactory) -> SynthCase:
    """One small synthetic study (T1CE, T2, SEG), generated once per session and shared; read-only."""
    out = tmp_path_factory.getbasetemp() / "scp-synth"
    case = out / "case0000"
    if not (case / "seg").is_dir():
        synth_cohort(out, 1, 1)
    return SynthCase(
        root=case,
        t1ce=tuple(sorted((case / "t1ce").iterdir())),
        t2=tuple(sorted((case / "t2").iterdir())),
        seg=tuple(sorted((case / "seg").iterdir())),
    )
