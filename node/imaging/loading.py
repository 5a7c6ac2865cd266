# mypy: disable-error-code="no-untyped-call"
"""Load a received study folder: find the T1CE, T2 and SEG, read both volumes and map the segments.

This is the first step of the pipeline; everything it returns follows ``node.imaging.types``. Every problem
with the input raises a :class:`node.errors.InvalidStudyError` subclass whose message a hospital user can act
on; notes that do not stop processing end up in ``LoadedStudy.warnings``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from node.errors import CorruptInstanceError, SegmentationError
from node.imaging.segmentation import read_segments
from node.imaging.series_rules import SeriesRules, load_rules
from node.imaging.study import identify_series, scan_study
from node.imaging.types import LoadedStudy, SeriesFiles, SeriesRef, StudyIdentity
from node.imaging.volume import read_series_volume

logger = logging.getLogger(__name__)


def _seg_sop_instance_uid(seg: SeriesRef) -> str:
    if seg.headers:
        return str(seg.headers[0].dataset.get("SOPInstanceUID", ""))
    path = seg.files[0]
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except (OSError, EOFError, ValueError) as exc:
        raise CorruptInstanceError(f"{path} is not a readable DICOM file ({exc})") from exc
    return str(ds.get("SOPInstanceUID", ""))


def _headers(t1ce: SeriesRef, t2: SeriesRef, seg: SeriesRef) -> dict[Path, Dataset]:
    """The scan's headers of the analysed files (the SEG: its first file, the one analysed), by path."""
    kept = [*t1ce.headers, *t2.headers, *seg.headers[:1]]
    return {h.path: h.dataset for h in kept}


def load_study(study_dir: Path, rules: SeriesRules | None = None) -> LoadedStudy:
    """Read the study in ``study_dir`` into native-grid T1CE/T2 images and T1CE-grid segment masks."""
    rules = rules if rules is not None else load_rules()
    identified = identify_series(scan_study(study_dir), rules)
    warnings = list(identified.warnings)
    frame_of_reference = identified.t1ce.frame_of_reference_uid
    if not frame_of_reference:
        raise SegmentationError(
            f"the T1CE {identified.t1ce.describe()} has no FrameOfReferenceUID, so the SEG cannot be tied to it"
        )
    t1ce = read_series_volume(identified.t1ce, warnings)  # an Enhanced MR object's stacks: a note in warnings
    t2 = read_series_volume(identified.t2, warnings)
    lesions, pons = read_segments(identified.seg, identified.t1ce, t1ce, rules, warnings=warnings)
    identity = StudyIdentity(
        study_instance_uid=identified.t1ce.study_instance_uid,
        frame_of_reference_uid=frame_of_reference,
        t1ce_series_uid=identified.t1ce.series_instance_uid,
        t2_series_uid=identified.t2.series_instance_uid,
        seg_series_uid=identified.seg.series_instance_uid,
        seg_sop_instance_uid=_seg_sop_instance_uid(identified.seg),
    )
    logger.info(
        "loaded study %s: T1CE %s, T2 %s, %d lesion(s), pons segment %s",
        identity.study_instance_uid,
        t1ce.GetSize(),
        t2.GetSize(),
        len(lesions),
        "yes" if pons is not None else "no",
    )
    files = SeriesFiles(tuple(identified.t1ce.files), tuple(identified.t2.files), identified.seg.files[0],
                        headers=_headers(identified.t1ce, identified.t2, identified.seg))  # fmt: skip
    return LoadedStudy(
        identity=identity, t1ce=t1ce, t2=t2, lesions=lesions, pons=pons, warnings=tuple(warnings), files=files
    )
