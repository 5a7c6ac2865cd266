"""Is a received series geometrically whole? Pure functions over a few header values, with a per-file cache.

A study can be called complete as soon as every required series is *whole* instead of after a quiet period
(:mod:`node.jobs.completeness`). A series is judged from its slices' positions along the normal of
ImageOrientationPatient (one position per single-frame instance, or per frame of an enhanced multi-frame
instance) and from what the headers say it should hold:

* **contiguity**: sorted positions step by one spacing; a step of ~2x (3x...) the spacing is one (two...) missing
  slice(s) -> :attr:`Wholeness.INCOMPLETE`; any other irregular step, two slices at one position, differing
  orientations or no positions at all -> :attr:`Wholeness.UNDECIDED` (the caller falls back to the quiet period);
* **count**: ImagesInAcquisition (the same on every instance) equal to the images held -> the series' ends are
  known; greater -> undecided, not incomplete (vendors count other series of the same acquisition too, so a count
  alone must not hold a study for the force-complete time: the quiet period decides); one enhanced multi-frame
  instance holds its whole series (NumberOfFrames);
  InStackPositionNumber values, where every slice has one, must run 1..N without a hole;
* **the SEG's references**: every SOP Instance UID the SEG names for the series (ReferencedSeriesSequence and the
  per-frame source image references) must be held; the ReferencedSeriesSequence (which lists all source images)
  also fixes the series' ends.

A contiguous series whose ends nothing fixes (no count, no SEG reference) is undecided: a missing first or last
slice leaves no gap. Headers are read once per file (:class:`GeometryCache`: pydicom ``stop_before_pixels`` with
``specific_tags``, keyed by path, size and modification time), so a study of hundreds of instances is re-judged
in milliseconds.
"""

from __future__ import annotations

import enum
import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

#: a step within this fraction of the spacing is regular; a step within it of k x spacing is k-1 missing slices
STEP_TOLERANCE = 0.1
#: orientations whose direction cosines differ by more than this are different stacks
ORIENTATION_TOLERANCE = 1e-3

_TAGS = [
    "SOPInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "ImagesInAcquisition", "NumberOfFrames",
    "InStackPositionNumber", "ReferencedSeriesSequence", "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
]

Vector = tuple[float, float, float]


class Wholeness(enum.StrEnum):
    WHOLE = "whole"
    INCOMPLETE = "incomplete"  # something is certainly missing: never ready on the quiet period
    UNDECIDED = "undecided"  # the headers cannot tell: the quiet period decides


@dataclass(frozen=True)
class Judgement:
    wholeness: Wholeness
    reason: str


@dataclass(frozen=True)
class InstanceGeometry:
    """What one instance says about its series' geometry (one entry per frame in the per-frame tuples)."""

    sop_instance_uid: str
    positions: tuple[Vector | None, ...]
    orientations: tuple[tuple[float, ...] | None, ...]
    in_stack: tuple[int | None, ...]
    images_in_acquisition: int | None = None
    number_of_frames: int | None = None
    #: SEG only: series UID -> SOP Instance UIDs it references (ReferencedSeriesSequence)
    referenced_series: tuple[tuple[str, frozenset[str]], ...] = ()
    #: SEG only: the per-frame source image references
    frame_sources: frozenset[str] = frozenset()


def _vector(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == n and all(math.isfinite(v) for v in numbers) else None


def _int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _item(ds: Dataset | None, keyword: str) -> Dataset | None:
    if ds is None or keyword not in ds:
        return None
    sequence = ds[keyword].value
    return sequence[0] if sequence else None


def _frame_value(frame: Dataset | None, shared: Dataset | None, sequence: str, keyword: str) -> Any:
    for group in (frame, shared):
        item = _item(group, sequence)
        if item is not None and keyword in item:
            return item[keyword].value
    return None


def geometry_of(ds: Dataset) -> InstanceGeometry:
    """The geometry values of a dataset (pixel data not needed)."""
    uid = str(ds.get("SOPInstanceUID", ""))
    frames = _int(ds.get("NumberOfFrames"))
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []) or [])
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    positions: list[Vector | None] = []
    orientations: list[tuple[float, ...] | None] = []
    in_stack: list[int | None] = []
    sources: set[str] = set()
    if per_frame:
        for frame in per_frame:
            position = _vector(_frame_value(frame, shared, "PlanePositionSequence", "ImagePositionPatient"), 3)
            positions.append(None if position is None else (position[0], position[1], position[2]))
            orientations.append(_vector(
                _frame_value(frame, shared, "PlaneOrientationSequence", "ImageOrientationPatient"), 6))
            in_stack.append(_int(_frame_value(frame, None, "FrameContentSequence", "InStackPositionNumber")))
            for derivation in frame.get("DerivationImageSequence", []) or []:
                for source in derivation.get("SourceImageSequence", []) or []:
                    if "ReferencedSOPInstanceUID" in source:
                        sources.add(str(source.ReferencedSOPInstanceUID))
    else:
        position = _vector(ds.get("ImagePositionPatient"), 3)
        positions.append(None if position is None else (position[0], position[1], position[2]))
        orientations.append(_vector(ds.get("ImageOrientationPatient"), 6))
        in_stack.append(_int(ds.get("InStackPositionNumber")))
    referenced = []
    for series in ds.get("ReferencedSeriesSequence", []) or []:
        if "SeriesInstanceUID" not in series:
            continue
        instances = frozenset(str(item.ReferencedSOPInstanceUID)
                              for item in series.get("ReferencedInstanceSequence", []) or []
                              if "ReferencedSOPInstanceUID" in item)
        referenced.append((str(series.SeriesInstanceUID), instances))
    return InstanceGeometry(uid, tuple(positions), tuple(orientations), tuple(in_stack),
                            _int(ds.get("ImagesInAcquisition")), frames, tuple(referenced), frozenset(sources))


def read_geometry(path: Path) -> InstanceGeometry:
    """Read the geometry values of one file (header only, a few tags); raises ``OSError`` / ``InvalidDicomError``."""
    return geometry_of(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS))


class GeometryCache:
    """:func:`read_geometry` per file, remembered while the file's size and modification time stay the same.

    Thread-safe; holds at most ``max_entries`` files (the least recently used are forgotten first).
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[tuple[int, int], InstanceGeometry]] = OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0  # files actually read (the tests check that a second judgement reads none)

    def get(self, path: Path) -> InstanceGeometry:
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        key = str(path)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == stamp:
                self._entries.move_to_end(key)
                return entry[1]
        geometry = read_geometry(path)
        with self._lock:
            self.reads += 1
            self._entries[key] = (stamp, geometry)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return geometry


#: the process's cache (the listener's dispatcher and the worker's poll each have one)
CACHE = GeometryCache()


def _normal(orientation: Sequence[float]) -> Vector:
    row, col = orientation[:3], orientation[3:]
    return (row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2], row[0] * col[1] - row[1] * col[0])


def contiguity(offsets: Sequence[float]) -> Judgement:
    """Judge slice offsets along the normal: regular steps (whole), k x steps (missing), anything else (undecided)."""
    if len(offsets) < 2:
        return Judgement(Wholeness.WHOLE, "one slice")
    ordered = sorted(offsets)
    steps = [b - a for a, b in itertools.pairwise(ordered)]
    spacing = min(steps)
    if spacing <= 1e-4:
        return Judgement(Wholeness.UNDECIDED, "several slices at one position (several stacks or time points)")
    missing = 0
    for step in steps:
        ratio = step / spacing
        nearest = round(ratio)
        if abs(ratio - nearest) > STEP_TOLERANCE * nearest:
            return Judgement(Wholeness.UNDECIDED, f"irregular slice spacing ({spacing:.3g} mm and {step:.3g} mm)")
        missing += nearest - 1
    if missing:
        return Judgement(Wholeness.INCOMPLETE, f"{missing} slice(s) missing between received slices "
                                               f"(spacing {spacing:.3g} mm)")
    return Judgement(Wholeness.WHOLE, f"{len(offsets)} contiguous slices")


def judge_series(instances: Sequence[InstanceGeometry], seg_references: Iterable[InstanceGeometry] = (),
                 series_instance_uid: str | None = None) -> Judgement:
    """Whether an image series is whole: contiguity, counts, and the references of the SEG(s) in ``seg_references``
    to this series (``series_instance_uid``; without it, the SEG's listed series sharing an instance with it)."""
    if not instances:
        return Judgement(Wholeness.INCOMPLETE, "no instance")
    held = {g.sop_instance_uid for g in instances}
    series_refs: set[str] = set()
    for seg in seg_references:
        for series, uids in seg.referenced_series:
            if series == series_instance_uid or (series_instance_uid is None and uids & held):
                series_refs |= uids
    unreceived = series_refs - held
    judged = _judge_geometry(instances, series_refs if not unreceived else set())
    if not unreceived:
        return judged
    missing = f"the SEG references {len(unreceived)} instance(s) not received"
    if judged.wholeness is Wholeness.WHOLE:
        # whole by its own count, yet the SEG names instances beyond it (drawn on another version of the series, or
        # on instances the sender does not route): the signals contradict, so the quiet period decides instead of
        # holding the study for the whole force-complete time
        return Judgement(Wholeness.UNDECIDED, f"{missing}, but the series is {judged.reason}")
    return Judgement(Wholeness.INCOMPLETE, missing)


def _judge_geometry(instances: Sequence[InstanceGeometry], series_refs: set[str]) -> Judgement:
    """Contiguity and counts of a series; ``series_refs``: the held instances the SEG references (they fix the ends)."""
    positions = [p for g in instances for p in g.positions]
    orientations = [o for g in instances for o in g.orientations]
    if any(p is None for p in positions) or any(o is None for o in orientations):
        return Judgement(Wholeness.UNDECIDED, "a slice has no ImagePositionPatient / ImageOrientationPatient")
    first = orientations[0]
    assert first is not None
    if any(max(abs(a - b) for a, b in zip(o, first, strict=True)) > ORIENTATION_TOLERANCE
           for o in orientations if o is not None):
        return Judgement(Wholeness.UNDECIDED, "slices of different orientations")
    normal = _normal(first)
    offsets = [sum(p[i] * normal[i] for i in range(3)) for p in positions if p is not None]
    stacked = [s for g in instances for s in g.in_stack]
    if stacked and all(s is not None for s in stacked):
        numbers = sorted(s for s in stacked if s is not None)
        absent = set(range(1, numbers[-1] + 1)) - set(numbers)
        if absent:
            return Judgement(Wholeness.INCOMPLETE, f"{len(absent)} in-stack position(s) missing")
    judged = contiguity(offsets)
    if judged.wholeness is Wholeness.INCOMPLETE:  # a gap says most: where the missing slices are
        return judged
    expected = {g.images_in_acquisition for g in instances}
    count = len(positions)  # images: one per single-frame instance, one per frame of a multi-frame one
    bounded = ""
    if len(expected) == 1 and (n := expected.pop()) is not None and n > 0:
        if count < n:  # contiguous, yet short of the count: vendors also count other series of the acquisition
            # (localisers, other contrasts, MPRs), so the count alone cannot hold a study for the force-complete
            # time: the quiet period decides, as without geometry
            return Judgement(Wholeness.UNDECIDED, f"{count} of {n} images in the acquisition received (contiguous: "
                                                  "the count may include other series of the acquisition)")
        if count == n:
            bounded = f"ImagesInAcquisition {n}"
    if len(instances) == 1 and (instances[0].number_of_frames or 1) > 1:
        bounded = f"one multi-frame instance of {instances[0].number_of_frames} frames"
    if not bounded and series_refs:
        bounded = f"all {len(series_refs)} instance(s) the SEG references"
    if judged.wholeness is not Wholeness.WHOLE:
        return judged
    if not bounded:
        return Judgement(Wholeness.UNDECIDED, f"{judged.reason}, but no count (ImagesInAcquisition, "
                                              "NumberOfFrames) and no SEG reference fixes the series' ends")
    return Judgement(Wholeness.WHOLE, f"{judged.reason}; {bounded}")


def judge_study(images: Sequence[tuple[str, str, Sequence[Path]]], seg_files: Sequence[Path],
                cache: GeometryCache = CACHE) -> Judgement:
    """Judge the required image series (``(role, series_instance_uid, files)``) with the study's SEG(s): the first
    incomplete series decides, then the first undecided one; whole when all are. An unreadable file is undecided."""
    try:
        segs = [cache.get(path) for path in seg_files]
        judged = [(role, judge_series([cache.get(path) for path in files], segs, uid)) for role, uid, files in images]
    except (OSError, InvalidDicomError, AttributeError, ValueError) as exc:
        return Judgement(Wholeness.UNDECIDED, f"a header cannot be read ({type(exc).__name__})")
    if not segs:
        return Judgement(Wholeness.INCOMPLETE, "no SEG")
    required = {uid for _role, uid, _files in images}
    held = {cache.get(path).sop_instance_uid for _role, _uid, files in images for path in files}
    elsewhere = {u for seg in segs for series, uids in seg.referenced_series if series not in required for u in uids}
    unheld = {u for seg in segs for u in seg.frame_sources} - held - elsewhere
    if unheld:  # per-frame source references to instances of a required series (or of none listed) not received
        missing = f"SEG frames reference {len(unheld)} instance(s) not received"
        if all(j.wholeness is Wholeness.WHOLE for _role, j in judged):  # contradiction: as in judge_series
            return Judgement(Wholeness.UNDECIDED, f"{missing}, but every required series is whole by its count")
        return Judgement(Wholeness.INCOMPLETE, missing)
    for wanted in (Wholeness.INCOMPLETE, Wholeness.UNDECIDED):
        for role, judgement in judged:
            if judgement.wholeness is wanted:
                return Judgement(wanted, f"{role}: {judgement.reason}")
    return Judgement(Wholeness.WHOLE, "; ".join(f"{role}: {j.reason}" for role, j in judged))
