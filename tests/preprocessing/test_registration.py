# mypy: allow-untyped-calls
"""Rigid T2 -> T1CE registration: accuracy on a known motion, divergence detection, ANTs backend."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import SimpleITK as sitk

from node.errors import ProcessingError
from node.imaging.registration import (
    AffineParams,
    RigidParams,
    displacement_mm,
    register_affine,
    register_rigid,
    resample_to_spacing,
    rotation_angle_deg,
    validate_rigid,
)

from . import synthetic as syn
from .conftest import Case


def brain_points(mask: sitk.Image, step: int = 97) -> np.ndarray:
    zyx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[::step]
    return np.array([mask.TransformIndexToPhysicalPoint([int(v) for v in p[::-1]]) for p in zyx])


def mean_error_mm(found: sitk.Transform, truth: sitk.Transform, points: np.ndarray) -> float:
    a = np.array([found.TransformPoint(p) for p in points.tolist()])
    b = np.array([truth.TransformPoint(p) for p in points.tolist()])
    return float(np.linalg.norm(a - b, axis=1).mean())


def test_simpleitk_recovers_known_motion_within_1mm(medium_case: Case) -> None:
    pre = medium_case.pre
    points = brain_points(pre.brain_mask)
    truth = medium_case.motion.GetInverse()  # T1CE points -> T2 points
    assert displacement_mm(truth, points).mean() > 5.0  # the motion is real
    assert mean_error_mm(pre.registration.transform, truth, points) <= 1.0
    assert pre.registration.method == "simpleitk-rigid-mattes"
    assert pre.registration.metric < -0.2


def test_registered_t2_lines_up_with_t1ce(medium_case: Case) -> None:
    """The lesion is bright on both sequences: after registration the T2 lesion sits inside the T1CE mask."""
    pre = medium_case.pre
    lesion = sitk.GetArrayViewFromImage(pre.lesions[0].mask) > 0
    t2 = sitk.GetArrayViewFromImage(pre.t2)
    brain = sitk.GetArrayViewFromImage(pre.brain_mask) > 0
    assert t2[lesion].mean() > t2[brain & ~lesion].mean() + 1.0


def test_unrelated_images_raise_processing_error() -> None:
    study = syn.make_study(t1_size=(120, 140, 120), t2_size=(160, 170, 24), lesions=())
    fixed = resample_to_spacing(study.t1ce, 1.0, "linear")
    rng = np.random.default_rng(1)
    noise = sitk.GetImageFromArray(rng.uniform(0, 100, (60, 70, 60)).astype(np.float32))
    noise.SetSpacing((2.0, 2.0, 2.0))
    noise.SetOrigin(fixed.GetOrigin())
    with pytest.raises(ProcessingError, match="registration"):
        register_rigid(fixed, noise, None, RigidParams(iterations=20))


@pytest.mark.parametrize(
    ("transform", "metric", "needle"),
    [
        (syn.rigid((0.0, 0.0, 35.0), (0.0, 0.0, 0.0)), -0.5, "diverged"),  # 35 deg between two series
        (syn.rigid((0.0, 0.0, 2.0), (0.0, 60.0, 0.0)), -0.5, "diverged"),  # 6 cm shift
        (syn.rigid((0.0, 0.0, 2.0), (1.0, 0.0, 0.0)), -0.01, "failed"),  # no shared information
        (syn.rigid((0.0, 0.0, 2.0), (1.0, 0.0, 0.0)), float("nan"), "failed"),
    ],
)
def test_divergence_gates(transform: sitk.Transform, metric: float, needle: str) -> None:
    fixed = syn.grid((100, 100, 100), (1.0, 1.0, 1.0))
    with pytest.raises(ProcessingError, match=needle):
        validate_rigid(transform, metric, fixed, RigidParams())


def test_plausible_registration_passes_the_gates() -> None:
    fixed = syn.grid((100, 100, 100), (1.0, 1.0, 1.0))
    validate_rigid(syn.rigid((3.0, 0.0, 4.0), (5.0, -3.0, 4.0)), -0.5, fixed, RigidParams())


def test_rotation_angle_of_a_known_rotation() -> None:
    assert rotation_angle_deg(syn.rigid((0.0, 0.0, 7.0), (1.0, 2.0, 3.0))) == pytest.approx(7.0, abs=1e-6)


@pytest.mark.slow
def test_ants_backend_recovers_known_motion(medium_case: Case) -> None:
    """The method's tool on the same raw pair (resampled and N4-corrected as the pipeline does)."""
    pytest.importorskip("ants")
    pre = medium_case.pre
    from node.imaging.brain import brain_mask
    from node.imaging.registration import N4Params, n4_correct

    study = medium_case.study
    t1 = resample_to_spacing(study.t1ce, 1.0, "linear")
    t2 = resample_to_spacing(study.t2, 1.0, "linear")
    t1 = n4_correct(t1, brain_mask(t1), N4Params())
    t2 = n4_correct(t2, brain_mask(t2), N4Params())
    result = register_rigid(t1, t2, pre.brain_mask, RigidParams(backend="ants"))
    assert result.method == "ants-rigid-mattes"
    assert mean_error_mm(result.transform, medium_case.motion.GetInverse(), brain_points(pre.brain_mask)) <= 1.0


def test_simpleitk_registration_is_deterministic() -> None:
    motion = syn.rigid((2.0, 0.0, -3.0), (3.0, 2.0, -2.0))
    study = syn.make_study(t1_size=(120, 140, 120), t2_size=(160, 170, 24), t2_motion=motion, lesions=())
    fixed = resample_to_spacing(study.t1ce, 1.0, "linear")
    moving = resample_to_spacing(study.t2, 1.0, "linear")
    first = register_rigid(fixed, moving, None, RigidParams())
    second = register_rigid(fixed, moving, None, RigidParams())
    assert first.metric == second.metric
    assert np.allclose(first.transform.GetParameters(), second.transform.GetParameters(), atol=1e-9)


@pytest.fixture
def two_itk_threads() -> Iterator[None]:
    saved = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    yield
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(saved)


@pytest.mark.usefixtures("two_itk_threads")
def test_registrations_are_bitwise_reproducible_with_several_itk_threads() -> None:
    """Multi-threaded Mattes MI summed the threads' parts in finishing order: transforms differed run to run."""
    motion = syn.rigid((2.0, 0.0, -3.0), (3.0, 2.0, -2.0))
    study = syn.make_study(t1_size=(160, 180, 150), t2_size=(200, 210, 40), t2_motion=motion, lesions=())
    fixed = resample_to_spacing(study.t1ce, 1.0, "linear")
    moving = resample_to_spacing(study.t2, 1.0, "linear")
    rigid = {tuple(register_rigid(fixed, moving, None, RigidParams()).transform.GetParameters()) for _ in range(4)}
    affine = {tuple(register_affine(fixed, moving, AffineParams())[0].GetParameters()) for _ in range(4)}
    assert len(rigid) == 1 and len(affine) == 1
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 2  # restored after each registration
