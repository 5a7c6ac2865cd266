"""Value objects handed between the imaging stages: load -> preprocess -> features.

Conventions (every stage relies on them):

* Images are ``SimpleITK.Image`` in **ITK-conventional axes** and DICOM patient coordinates (LPS, mm):
  ITK x = column index, y = row index, z = slice index (``GetArrayFromImage`` gives ``[slice, row, col]``).
  Direction columns are the row cosine, the column cosine and the slice normal of the acquisition.
* Intensity images are float32 in the modality's real-world units (rescale slope/intercept applied).
* Masks are uint8 with values {0, 1} and *exactly* the geometry of the image they belong to.
* Nothing here carries patient name, ID or birth date: only UIDs, series descriptions and numbers. The one
  exception is the file headers the loader keeps so that no file is parsed twice (:class:`InstanceHeader`:
  ``SeriesRef.headers``, ``SeriesFiles.headers``, the SR's evidence): they never appear in a ``repr`` and a pickled
  copy (another process) leaves them behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import SimpleITK as sitk
from pydicom.dataset import Dataset

from node.vocabulary import LesionSite

PonsMethod = Literal["seg", "auto", "whole-brain", "none"]  # "none": no usable reference (lesions not assessed)


@dataclass(frozen=True)
class InstanceHeader:
    """One file's header as the study scan read it: the dataset without its pixel data (``stop_before_pixels``)
    and the file offset where the pixel data element starts, so that the pixels can be read without parsing the
    header again (None: not known, e.g. a deflated file: read the whole file)."""

    path: Path
    dataset: Dataset = field(repr=False)
    pixel_offset: int | None = None


@dataclass(frozen=True)
class SeriesRef:
    """One received series, as grouped from the files of a study folder."""

    series_instance_uid: str
    study_instance_uid: str
    modality: str
    sop_class_uid: str
    series_description: str
    series_number: int | None
    frame_of_reference_uid: str | None
    files: tuple[Path, ...]
    #: the headers the study scan read, for the files of ``files`` (matched by path; a file without one is read)
    headers: tuple[InstanceHeader, ...] = field(default=(), compare=False, repr=False)

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "headers": ()}  # another process reads the files itself

    def describe(self) -> str:
        """Short PHI-free description for messages: ``'T1 MPRAGE +C' (series 5, 176 files)``."""
        number = f"series {self.series_number}" if self.series_number is not None else "no series number"
        return f"'{self.series_description}' ({number}, {len(self.files)} file(s), UID {self.series_instance_uid})"


@dataclass(frozen=True)
class StudyIdentity:
    """UIDs that tie results back to the source study (no PHI)."""

    study_instance_uid: str
    frame_of_reference_uid: str
    t1ce_series_uid: str
    t2_series_uid: str
    seg_series_uid: str
    seg_sop_instance_uid: str


@dataclass(frozen=True)
class SeriesFiles:
    """The spooled files the study was read from: the T1CE and T2 instances and the SEG (for the SR's evidence,
    without scanning the study folder again)."""

    t1ce: tuple[Path, ...]
    t2: tuple[Path, ...]
    seg: Path
    #: the headers (no pixel data) the loader read from these files, by path: the SR's evidence without parsing
    #: the files again (a file missing here is read); a pickled copy (another process) leaves them behind
    headers: Mapping[Path, Dataset] = field(default_factory=dict, compare=False, repr=False)

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "headers": {}}


@dataclass(frozen=True)
class Segment:
    """One segment of the DICOM-SEG, resolved onto an image grid."""

    segment_number: int
    label: str
    mask: sitk.Image
    tracking_uid: str | None = None
    tracking_id: str | None = None


@dataclass(frozen=True)
class LoadedStudy:
    """A study read from DICOM: native-grid images and the segments mapped onto the T1CE grid."""

    identity: StudyIdentity
    t1ce: sitk.Image
    t2: sitk.Image
    lesions: tuple[Segment, ...]
    pons: Segment | None = None
    warnings: tuple[str, ...] = ()
    files: SeriesFiles | None = None


@dataclass(frozen=True)
class RegistrationResult:
    """Rigid T2 -> T1CE registration.

    ``transform`` maps points of T1CE space to T2 space (ITK resampling convention), so
    ``sitk.Resample(t2, t1ce_grid, transform)`` brings T2 into T1CE space.
    """

    transform: sitk.Transform
    metric: float
    method: str


@dataclass(frozen=True)
class PonsReference:
    """The intensity reference used for z-scoring, on the preprocessed (1 mm) T1CE grid."""

    method: PonsMethod
    mask: sitk.Image
    t1ce_mean: float
    t1ce_sd: float
    t2_mean: float
    t2_sd: float
    qc: dict[str, float | str | bool] = field(default_factory=dict)
    #: the region found but rejected by the QC (drawn on the QC key image, never used); None when it passed
    candidate: sitk.Image | None = None
    #: the automatic pons step's template registration (T1CE points -> MNI template points), reused for sites
    template_transform: sitk.Transform | None = None


@dataclass(frozen=True)
class PreprocessedStudy:
    """Images after resampling to 1 mm, N4, T2->T1CE registration and pons z-scoring (all on one grid)."""

    identity: StudyIdentity
    t1ce: sitk.Image
    t2: sitk.Image
    lesions: tuple[Segment, ...]
    pons: PonsReference
    registration: RegistrationResult
    brain_mask: sitk.Image
    timings: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    #: how it was done (interpolators, N4 and registration parameters, pons recipe), for manifests and SRs
    provenance: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LesionFeatures:
    """The 200 named radiomic features of one lesion plus its QC columns."""

    segment_number: int
    label: str
    features: dict[str, float]
    qc: dict[str, float | str | bool | int | None] = field(default_factory=dict)
    #: where the lesion is (:mod:`node.imaging.sites`); None until sites are attached or when undetermined
    site: LesionSite | None = None
