# mypy: allow-untyped-calls
"""Shared synthetic study, preprocessed once per session (the slowest fixture of this folder, ~5-10 s)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import SimpleITK as sitk

from node.imaging.preprocess import load_preprocess_settings, preprocess
from node.imaging.types import LoadedStudy, PreprocessedStudy

from . import synthetic as syn


@dataclass(frozen=True)
class Case:
    study: LoadedStudy
    pre: PreprocessedStudy
    motion: sitk.Transform  # T2 points -> world (T1CE) points; registration should find its inverse


@pytest.fixture(scope="session")
def medium_case() -> Case:
    """Brain-sized T1CE at 1 mm, T2 at 0.8 x 0.8 x 5 mm moved by 4.5 deg / 6.5 mm, one 12 mm lesion."""
    motion = syn.rigid((3.0, -2.0, 3.5), (4.0, -3.0, 4.0))
    study = syn.make_study(
        t1_size=(176, 208, 176),
        t2_size=(240, 260, 32),
        t2_spacing=(0.8, 0.8, 5.0),
        t2_motion=motion,
        lesions=(syn.Lesion((-30.0, -10.0, 20.0), 12.0),),
    )
    pre = preprocess(study, load_preprocess_settings())
    return Case(study=study, pre=pre, motion=motion)
