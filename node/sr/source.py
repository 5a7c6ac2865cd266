"""The analysed study as the report names it: the T1CE, T2 and SEG headers read from their files (pixel data
skipped) — patient and study identity, the evidence, and each SEG segment's number, label and tracking ids."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from node.errors import CorruptInstanceError, MissingSeriesError, SegmentationError

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass(frozen=True)
class SegmentInfo:
    """One SEG segment (= one lesion)."""

    segment_number: int
    label: str
    tracking_uid: str | None
    tracking_id: str | None


def _read_header(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as exc:
        raise CorruptInstanceError(f"cannot read DICOM header of {path}: {exc}") from exc


def _segments(seg: Dataset) -> tuple[SegmentInfo, ...]:
    out = []
    for item in seg.get("SegmentSequence", []):
        out.append(
            SegmentInfo(
                segment_number=int(item.SegmentNumber),
                label=str(item.get("SegmentLabel", "")),
                tracking_uid=str(item.TrackingUID) if "TrackingUID" in item else None,
                tracking_id=str(item.TrackingID) if "TrackingID" in item else None,
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class SourceStudy:
    """Headers of the analysed series: the SR's evidence and the source of its patient/study identity."""

    t1ce: tuple[Dataset, ...]
    t2: tuple[Dataset, ...]
    seg: Dataset
    segments: tuple[SegmentInfo, ...]

    def __post_init__(self) -> None:
        if not self.t1ce or not self.t2:
            raise MissingSeriesError("the SR needs at least one T1CE and one T2 instance as evidence")
        if self.seg.SOPClassUID != SEG_STORAGE:
            raise SegmentationError(f"the segmentation instance has SOP class {self.seg.SOPClassUID}, not SEG")
        studies = {str(d.StudyInstanceUID) for d in (*self.t1ce, *self.t2, self.seg)}
        if len(studies) != 1:
            raise SegmentationError("T1CE, T2 and SEG do not belong to one study (StudyInstanceUID differs)")
        for name, series in (("T1CE", self.t1ce), ("T2", self.t2)):
            if len({str(d.SeriesInstanceUID) for d in series}) != 1:
                raise MissingSeriesError(f"the {name} instances come from more than one series")
        referenced = {str(s.SeriesInstanceUID) for s in self.seg.get("ReferencedSeriesSequence", [])}
        if not referenced & {self.t1ce_series_uid, self.t2_series_uid}:
            raise SegmentationError("the SEG references neither the T1CE nor the T2 series")
        if not self.segments:
            raise SegmentationError("the SEG has no segments")

    @classmethod
    def from_files(cls, t1ce: Iterable[Path], t2: Iterable[Path], seg: Path,
                   headers: Mapping[Path, Dataset] | None = None) -> SourceStudy:
        """Read the headers (no pixel data) of the T1CE and T2 instances and of the SEG; ``headers`` are those
        already read (by the loader: pixel data not read), taken as they are instead of parsing the file again."""
        known = headers or {}

        def header(path: Path) -> Dataset:
            ds = known.get(path)
            return ds if ds is not None else _read_header(path)

        seg_ds = header(seg)
        return cls(
            t1ce=tuple(header(p) for p in sorted(t1ce)),
            t2=tuple(header(p) for p in sorted(t2)),
            seg=seg_ds,
            segments=_segments(seg_ds),
        )  # fmt: skip

    @classmethod
    def from_directories(cls, t1ce_dir: Path, t2_dir: Path, seg_file: Path) -> SourceStudy:
        """Every file in the two series folders (any name) and the SEG file."""

        def files(d: Path) -> list[Path]:
            return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))

        return cls.from_files(files(t1ce_dir), files(t2_dir), seg_file)

    @property
    def study_instance_uid(self) -> str:
        return str(self.seg.StudyInstanceUID)

    @property
    def t1ce_series_uid(self) -> str:
        return str(self.t1ce[0].SeriesInstanceUID)

    @property
    def t2_series_uid(self) -> str:
        return str(self.t2[0].SeriesInstanceUID)

    @property
    def segmentation_source_series_uid(self) -> str:
        """The series the SEG was drawn on (its first referenced series)."""
        return str(self.seg.ReferencedSeriesSequence[0].SeriesInstanceUID)

    @property
    def evidence(self) -> list[Dataset]:
        return [*self.t1ce, *self.t2, self.seg]

    def segment(self, number: int) -> SegmentInfo:
        for s in self.segments:
            if s.segment_number == number:
                return s
        raise SegmentationError(f"the SEG has no segment number {number}")
