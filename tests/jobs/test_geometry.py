"""Geometric completeness (node.jobs.geometry): contiguity along the normal, counts, in-stack positions, the SEG's
references, enhanced multi-frame instances, and the header cache."""

from __future__ import annotations

from pathlib import Path

import pydicom

from node.jobs.geometry import (
    GeometryCache,
    InstanceGeometry,
    Wholeness,
    contiguity,
    geometry_of,
    judge_series,
    judge_study,
)
from tests.support.studies import SynthCase, multi_frame_t1ce, seg_on_multi_frame

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def stack(zs: list[float], *, count: int | None = None, in_stack: bool = False, prefix: str = "i",
          orientation: tuple[float, ...] = AXIAL) -> list[InstanceGeometry]:
    return [InstanceGeometry(f"{prefix}{i}", ((0.0, 0.0, z),), (orientation,), (i + 1 if in_stack else None,),
                             images_in_acquisition=count) for i, z in enumerate(zs)]


def seg_naming(series: str, uids: set[str]) -> InstanceGeometry:
    return InstanceGeometry("seg", (), (), (), referenced_series=((series, frozenset(uids)),))


def test_contiguity_regular_gap_and_irregular() -> None:
    assert contiguity([0.0, 2.0, 4.0, 6.0]).wholeness is Wholeness.WHOLE
    assert contiguity([6.0, 0.0, 4.0, 2.0]).wholeness is Wholeness.WHOLE  # any order
    assert contiguity([0.0, 2.01, 3.99, 6.0]).wholeness is Wholeness.WHOLE  # rounding in the headers
    gap = contiguity([0.0, 2.0, 6.0, 8.0])
    assert gap.wholeness is Wholeness.INCOMPLETE and "1 slice(s) missing" in gap.reason
    assert contiguity([0.0, 2.0, 8.0]).reason.startswith("2 slice(s) missing")
    assert contiguity([0.0, 2.0, 5.0, 7.0]).wholeness is Wholeness.UNDECIDED  # 1.5x: irregular, not a slice
    assert contiguity([0.0, 2.0, 2.0, 4.0]).wholeness is Wholeness.UNDECIDED  # two stacks / time points
    assert contiguity([3.0]).wholeness is Wholeness.WHOLE


def test_series_needs_something_that_fixes_its_ends() -> None:
    zs = [float(z) for z in range(0, 20, 2)]
    assert judge_series(stack(zs)).wholeness is Wholeness.UNDECIDED  # contiguous, but the last slice may be missing
    assert judge_series(stack(zs, count=10)).wholeness is Wholeness.WHOLE
    # contiguous but short of the count: vendors count other series of the acquisition too, so the count alone
    # leaves the decision to the quiet period instead of holding the study for the force-complete time
    short = judge_series(stack(zs[:-1], count=10))
    assert short.wholeness is Wholeness.UNDECIDED and "9 of 10" in short.reason
    assert judge_series(stack(zs[:4] + zs[5:], count=10)).wholeness is Wholeness.INCOMPLETE  # a hole, same count
    assert judge_series(stack(zs, count=5)).wholeness is Wholeness.UNDECIDED  # several acquisitions: no bound
    # an oblique stack: positions along its own normal
    oblique = (1.0, 0.0, 0.0, 0.0, 0.8, -0.6)
    tilted = [InstanceGeometry(f"o{i}", ((0.0, 0.6 * z, 0.8 * z),), (oblique,), (None,), images_in_acquisition=5)
              for i, z in enumerate([0.0, 3.0, 6.0, 9.0, 12.0])]
    assert judge_series(tilted).wholeness is Wholeness.WHOLE
    mixed = stack(zs[:5], count=10) + stack(zs[5:], count=10, prefix="j", orientation=(0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    assert judge_series(mixed).wholeness is Wholeness.UNDECIDED


def test_in_stack_positions_must_run_without_a_hole() -> None:
    slices = stack([0.0, 2.0, 4.0, 6.0], in_stack=True, count=4)
    assert judge_series(slices).wholeness is Wholeness.WHOLE
    renumbered = [*slices[:2], InstanceGeometry("x", ((0.0, 0.0, 4.0),), (AXIAL,), (4,), images_in_acquisition=4),
                  InstanceGeometry("y", ((0.0, 0.0, 6.0),), (AXIAL,), (5,), images_in_acquisition=4)]
    judged = judge_series(renumbered)
    assert judged.wholeness is Wholeness.INCOMPLETE and "in-stack" in judged.reason


def test_the_segs_references_fix_and_check_the_series() -> None:
    slices = stack([0.0, 2.0, 4.0, 6.0])
    everything = {g.sop_instance_uid for g in slices}
    assert judge_series(slices, [seg_naming("S", everything)], "S").wholeness is Wholeness.WHOLE
    beyond = judge_series(slices, [seg_naming("S", everything | {"i4"})], "S")
    assert beyond.wholeness is Wholeness.INCOMPLETE and "references 1 instance(s)" in beyond.reason
    # a reference to another series says nothing about this one
    assert judge_series(slices, [seg_naming("OTHER", {"z"})], "S").wholeness is Wholeness.UNDECIDED
    # whole by its own count, yet the SEG names an instance beyond it: the signals contradict, so the quiet period
    # decides (before: INCOMPLETE, which held the study for the whole force-complete time, 1 h by default)
    counted = stack([0.0, 2.0, 4.0, 6.0], count=4)
    contradiction = judge_series(counted, [seg_naming("S", everything | {"elsewhere"})], "S")
    assert contradiction.wholeness is Wholeness.UNDECIDED and "references 1 instance(s)" in contradiction.reason
    # ... but a count not reached, or a hole, with the SEG naming more: certainly incomplete
    assert judge_series(counted[:3], [seg_naming("S", everything)], "S").wholeness is Wholeness.INCOMPLETE
    holed = counted[:1] + counted[2:]
    assert judge_series(holed, [seg_naming("S", everything)], "S").wholeness is Wholeness.INCOMPLETE


def test_study_judgement_on_the_synthetic_study(synth_case: SynthCase) -> None:
    def uid(path: Path) -> str:
        return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)

    t1, t2, seg = list(synth_case.t1ce), list(synth_case.t2), list(synth_case.seg)
    cache = GeometryCache()
    whole = judge_study([("T1CE", uid(t1[0]), t1), ("T2", uid(t2[0]), t2)], seg, cache)
    assert whole.wholeness is Wholeness.WHOLE, whole.reason
    reads = cache.reads
    assert judge_study([("T1CE", uid(t1[0]), t1), ("T2", uid(t2[0]), t2)], seg, cache).wholeness is Wholeness.WHOLE
    assert cache.reads == reads  # judged again without reading a file
    middle = len(t2) // 2
    holed = judge_study([("T1CE", uid(t1[0]), t1), ("T2", uid(t2[0]), t2[:middle] + t2[middle + 1:])], seg, cache)
    assert holed.wholeness is Wholeness.INCOMPLETE and holed.reason.startswith("T2:")
    no_first = judge_study([("T1CE", uid(t1[0]), t1[1:]), ("T2", uid(t2[0]), t2)], seg, cache)
    assert no_first.wholeness is Wholeness.INCOMPLETE and "SEG references" in no_first.reason
    assert judge_study([("T1CE", uid(t1[0]), t1), ("T2", uid(t2[0]), t2)], [], cache).wholeness is Wholeness.INCOMPLETE


def test_enhanced_multi_frame_series_and_its_seg(synth_case: SynthCase, tmp_path: Path) -> None:
    mf_path = tmp_path / "mf.dcm"
    mf = multi_frame_t1ce(synth_case, mf_path, "geometry")
    geometry = geometry_of(pydicom.dcmread(mf_path, stop_before_pixels=True))
    assert geometry.number_of_frames == len(synth_case.t1ce) == len(geometry.positions)
    assert judge_series([geometry]).wholeness is Wholeness.WHOLE  # one instance holds the series
    ds = pydicom.dcmread(mf_path)
    del ds.PerFrameFunctionalGroupsSequence[len(synth_case.t1ce) // 2]  # a frame lost in the middle
    ds.NumberOfFrames = len(synth_case.t1ce) - 1
    assert judge_series([geometry_of(ds)]).wholeness is Wholeness.INCOMPLETE
    seg = geometry_of(pydicom.dcmread(synth_case.seg[0], stop_before_pixels=True))  # it names the single frames
    assert seg.referenced_series and seg.frame_sources
    assert judge_series([geometry], [seg], str(mf.SeriesInstanceUID)).wholeness is Wholeness.WHOLE


def test_a_seg_drawn_on_the_multi_frame_instance(synth_case: SynthCase, tmp_path: Path) -> None:
    mf_path = tmp_path / "mf" / "mf.dcm"
    mf = multi_frame_t1ce(synth_case, mf_path, "geometry-2", enhanced_mr=True)
    seg_path = seg_on_multi_frame(mf, mf_path, tmp_path / "seg" / "seg.dcm", "geometry", "Lesion 1",
                                  (slice(5, 9), slice(5, 9), slice(3, 6)), series_number=9)
    judged = judge_study([("T1CE", str(mf.SeriesInstanceUID), [mf_path])], [seg_path], GeometryCache())
    assert judged.wholeness is Wholeness.WHOLE, judged.reason


def test_a_multi_frame_instance_counts_its_frames() -> None:
    frames = tuple((0.0, 0.0, 2.0 * i) for i in range(6))

    def instance(count: int | None) -> InstanceGeometry:
        return InstanceGeometry("mf", frames, (AXIAL,) * 6, (None,) * 6, images_in_acquisition=count,
                                number_of_frames=6)

    assert judge_series([instance(6)]).wholeness is Wholeness.WHOLE
    assert judge_series([instance(None)]).wholeness is Wholeness.WHOLE  # one instance holds its series
    assert judge_series([instance(7)]).wholeness is Wholeness.UNDECIDED  # the count disagrees: the quiet period
