"""The QC key image end to end (issue 11, item 2): the real job (process_study) on the small synthetic study writes
a companion whose last Secondary Capture shows the reference region and every lesion of the pipeline, outlined
where the pipeline's own masks are; with a reference that fails its QC the reference view still shows what was
found, marked failed. The preprocessed study the pipeline used is captured with a spy on ``key_slices``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import SimpleITK as sitk

from node.imaging import keyslices, pipeline
from node.imaging.keyslices import KeySlice, LpsView
from node.imaging.pipeline import PipelineConfig
from node.imaging.types import PreprocessedStudy
from node.jobs.process import ProcessResult, process_study
from node.sr.keyimage import outline
from node.sr.qcpage import COLOURS
from node.sr.validate import validate_object, validate_sr
from tests.support.studies import SynthCase, synth_case

__all__ = ["synth_case"]


@dataclass(frozen=True)
class Run:
    result: ProcessResult
    pre: PreprocessedStudy  # what the pipeline preprocessed (its lesion masks and reference ROI)
    slices: tuple[KeySlice, ...]


def _run(case: SynthCase, models_dir: Path, out: Path, config: PipelineConfig | None = None) -> Run:
    seen: list[tuple[PreprocessedStudy, tuple[KeySlice, ...]]] = []

    def spy(pre: PreprocessedStudy) -> tuple[KeySlice, ...]:
        slices = keyslices.key_slices(pre)
        seen.append((pre, slices))
        return slices

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "key_slices", spy)
        result = process_study(case.root, out, models_dir=models_dir, config=config, companions=("sc", "pdf"))
    (pre, slices), = seen
    return Run(result, pre, slices)


@pytest.fixture(scope="module")
def normal(synth_case: SynthCase, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    yield _run(synth_case, models_dir, tmp_path_factory.mktemp("qc-normal"))


@pytest.fixture(scope="module")
def failed(synth_case: SynthCase, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The same study with a pons QC no region can pass (CV limit 0.001): the reference fails its QC."""
    config = PipelineConfig.load()
    pons = dataclasses.replace(config.preprocess.pons, max_cv=0.001)
    config = dataclasses.replace(config, preprocess=dataclasses.replace(config.preprocess, pons=pons))
    yield _run(synth_case, models_dir, tmp_path_factory.mktemp("qc-failed"), config)


def _lps(image: sitk.Image, view: LpsView) -> npt.NDArray[np.bool_]:
    return np.asarray(view.apply(sitk.GetArrayFromImage(image)) > 0)


def _sc_pages(result: ProcessResult) -> list[pydicom.Dataset]:
    pages = [pydicom.dcmread(p) for p in result.companion_paths]
    return sorted((ds for ds in pages if ds.Modality != "DOC"), key=lambda ds: int(ds.InstanceNumber))


def _near(pixels: npt.NDArray[np.uint8], colour: str) -> npt.NDArray[np.bool_]:
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return np.asarray(np.abs(pixels.astype(int) - target).max(axis=2) <= 30)


def _crop_offset(region: npt.NDArray[np.bool_], full: npt.NDArray[np.bool_]) -> tuple[int, int]:
    """Where the cropped ``region`` sits in ``full`` (same slice): the offset that makes them coincide."""
    (r0, c0), (r1, c1) = np.argwhere(region).min(axis=0), np.argwhere(full).min(axis=0)
    return int(r1 - r0), int(c1 - c0)


@pytest.mark.slow  # two real pipeline runs (~30 s each on the shared machine)
def test_the_views_follow_the_pipeline_masks(normal: Run) -> None:
    pre, slices = normal.pre, normal.slices
    view = LpsView.of(pre.t1ce)
    assert [s.kind for s in slices] == ["reference"] + ["lesion"] * len(pre.lesions)
    assert [s.segment_number for s in slices[1:]] == [seg.segment_number for seg in pre.lesions]
    for segment, key in zip(pre.lesions, slices[1:], strict=True):
        mask = _lps(segment.mask, view)
        areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
        assert areas[key.slice_index] == areas.max() > 0  # the slice of the largest cross-section
        role, region = key.regions[0]
        assert role == "lesion" and region.sum() == areas.max()
        dr, dc = _crop_offset(region, mask[key.slice_index])
        rows, cols = np.nonzero(outline(region))
        full = mask[key.slice_index]
        for r, c in zip(rows + dr, cols + dc, strict=True):  # each outline pixel is in the lesion, next to outside
            assert full[r, c]
            assert not (full[r - 1, c] and full[r + 1, c] and full[r, c - 1] and full[r, c + 1])
        t1 = view.apply(sitk.GetArrayFromImage(pre.t1ce))[key.slice_index]
        assert np.array_equal(key.image, t1[dr : dr + key.image.shape[0], dc : dc + key.image.shape[1]])
    reference = slices[0]
    assert not reference.failed and pre.pons.method in ("seg", "auto") and "QC passed" in reference.title
    roi = _lps(pre.pons.mask, view)
    assert roi[reference.slice_index].any()
    assert reference.regions[0][0] == "reference"
    assert reference.regions[0][1].sum() == roi[reference.slice_index].sum()


@pytest.mark.slow
def test_the_companion_shows_the_qc_page_and_it_validates(normal: Run) -> None:
    result = normal.result
    assert validate_sr(result.sr_path, ("roundtrip", "dsrdump")) == []
    for path in result.companion_paths:
        assert validate_object(path) == [], path.name
    pages = _sc_pages(result)
    assert len(pages) == len(result.lesions) + 1  # the result pages, then the QC key image
    qc, first = pages[-1].pixel_array, pages[0].pixel_array
    views = qc[: int(0.93 * qc.shape[0])]  # above the legend
    assert _near(views, COLOURS["lesion"]).sum() > 40 and _near(views, COLOURS["reference"]).sum() > 20
    assert not _near(first, COLOURS["reference"]).any()  # the result page itself is unchanged: no QC drawing
    for ds in pages:
        assert validate_object(Path(ds.filename)) == []


@pytest.mark.slow
def test_a_failed_reference_still_shows_where_it_was_found(failed: Run) -> None:
    pre, reference = failed.pre, failed.slices[0]
    assert "failed_gates" in pre.pons.qc and pre.pons.candidate is not None
    assert reference.failed and "FAILED" in reference.title and "CV" in reference.note
    view = LpsView.of(pre.t1ce)
    candidate = _lps(pre.pons.candidate, view)
    role, region = reference.regions[0]
    assert role == "rejected reference" and region.sum() == candidate[reference.slice_index].sum() > 0
    assert len(failed.slices) == 1 + len(pre.lesions)  # every lesion is still shown
    qc = _sc_pages(failed.result)[-1]
    assert validate_object(Path(qc.filename)) == []
    pixels = qc.pixel_array[: int(0.93 * 960)]
    assert _near(pixels, COLOURS["rejected reference"]).sum() > 20
    assert not _near(pixels, COLOURS["reference"]).any()
