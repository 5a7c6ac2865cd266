# mypy: disable-error-code="no-untyped-call"
"""Write synthetic cases and cohorts: DICOM series, DICOM-SEG, truth JSON and labels.csv.

Per case, from a seed: the patient (:mod:`node.synth.cohort`), the rendered images (:mod:`node.synth.render`
with :mod:`node.synth.anatomy` and :mod:`node.synth.lesions`), site habits (:mod:`node.synth.sites`),
headers (:mod:`node.synth.headers`) and ground truth (:mod:`node.synth.truth`). Files::

    OUT/<case_id>/t1ce/NNNN.dcm   3D T1 post-contrast, sagittal, 1 mm (full) or 2 mm (small)
    OUT/<case_id>/t2/NNNN.dcm     2D T2 axial, 5 mm thick every 6 mm, 0.8 mm (full) / 1.5 mm (small) pixels
    OUT/<case_id>/seg/seg.dcm     DICOM-SEG on the T1CE: "Lesion 1".. (+ "Pons reference" with pons_seg)
    OUT/truth/<case_id>.json      ground truth (subtypes, receptors, lesions, pons ROI, T1CE->T2 transform)
    OUT/labels.csv                one row per lesion

Everything (UIDs, dates) derives from the seed: the same arguments give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pydicom

from node.synth.cohort import PatientSpec, sample_cohort
from node.synth.dicom_series import SegmentSpec, write_mr_series, write_segmentation
from node.synth.headers import SERIES_NUMBERS, series_headers
from node.synth.render import Size, SynthCase, synthesize_case
from node.synth.sites import Site, make_sites
from node.synth.truth import CaseTruth, case_truth, write_labels, write_truth

logger = logging.getLogger(__name__)


def _pin_contribution_datetime(seg_path: Path) -> str:
    """Replace the wall-clock ContributionDateTime highdicom stamps into the SEG (keeps bytes reproducible);
    returns the SEG's SeriesInstanceUID."""
    ds = pydicom.dcmread(seg_path)
    changed = False
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = f"{ds.StudyDate}{ds.StudyTime}"
            changed = True
    if changed:
        ds.save_as(seg_path, enforce_file_format=True)
    return str(ds.SeriesInstanceUID)


def write_case(
    case: SynthCase, out: Path, *, seed: int, size: Size, effect: float, pons_seg: bool = False
) -> CaseTruth:
    """Write the DICOM files and ``truth/<case_id>.json`` of a rendered case."""
    spec = case.spec
    case_dir = out / spec.case_id
    t1h, t2h = series_headers(case, seed)
    t1_files = write_mr_series(case.t1ce, t1h, case_dir / "t1ce", uid_seed=f"{seed}:{spec.case_id}:t1ce")
    write_mr_series(case.t2, t2h, case_dir / "t2", uid_seed=f"{seed}:{spec.case_id}:t2")
    segments = [
        SegmentSpec(f"Lesion {lesion.number}", mask, "lesion", tracking_id=f"Lesion {lesion.number}")
        for lesion, mask in zip(case.lesions, case.lesion_masks, strict=True)
    ]
    if pons_seg:
        segments.append(SegmentSpec("Pons reference", case.pons_mask, "pons"))
    seg_seed = f"{seed}:{spec.case_id}:seg"
    seg_path = write_segmentation(
        t1_files,
        segments,
        case_dir / "seg" / "seg.dcm",
        series_number=SERIES_NUMBERS["seg"],
        series_description="Metastasis segmentation",
        manufacturer="Synthetic Segmentation Lab",
        uid_seed=seg_seed,
        content_creator_name="Synthetic^Annotator",
    )
    seg_series_uid = _pin_contribution_datetime(seg_path)
    truth = case_truth(case, seed, size, effect, t1h, t2h, seg_series_uid, pons_seg)
    write_truth(out, truth)
    return truth


def generate_case(
    out: Path,
    spec: PatientSpec,
    site: Site,
    *,
    seed: int,
    size: Size = "small",
    effect: float = 1.0,
    pons_seg: bool = False,
    skull: bool = False,
) -> CaseTruth:
    """Render and write one case."""
    case = synthesize_case(spec, site, seed=seed, size=size, effect=effect, skull=skull)
    return write_case(case, out, seed=seed, size=size, effect=effect, pons_seg=pons_seg)


def generate_cohort(
    out: Path,
    cases: int,
    seed: int,
    size: Size = "small",
    effect: float = 1.0,
    sites: int = 3,
    pons_seg: bool = False,
    conversion_rate: float = 0.25,
    skull: bool = False,
    workers: int = 1,
    lesions: int | None = None,
) -> list[CaseTruth]:
    """Write ``cases`` synthetic cases plus ``labels.csv`` under ``out``.

    ``workers > 1`` renders cases in parallel processes; every case has its own seed-derived random streams,
    so the files are identical whatever the number of workers.
    """
    out.mkdir(parents=True, exist_ok=True)
    site_list = make_sites(sites)
    specs = sample_cohort(cases, seed, sites, conversion_rate)
    if lesions is not None:  # fixed lesion count (benchmarks); the other random draws are unchanged
        specs = [dataclasses.replace(spec, n_lesions=lesions) for spec in specs]
    one = functools.partial(
        _generate_one,
        out=out,
        sites=tuple(site_list),
        seed=seed,
        size=size,
        effect=effect,
        pons_seg=pons_seg,
        skull=skull,
    )
    if workers > 1 and len(specs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(specs))) as pool:
            truths = list(pool.map(one, specs))
    else:
        truths = [one(spec) for spec in specs]
    write_labels(out, truths)
    return truths


def _generate_one(
    spec: PatientSpec,
    *,
    out: Path,
    sites: tuple[Site, ...],
    seed: int,
    size: Size,
    effect: float,
    pons_seg: bool,
    skull: bool,
) -> CaseTruth:
    truth = generate_case(
        out, spec, sites[spec.site_index], seed=seed, size=size, effect=effect, pons_seg=pons_seg, skull=skull
    )
    logger.info("synthetic case %s written (%d lesion(s))", spec.case_id, spec.n_lesions)
    return truth
