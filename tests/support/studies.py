"""Synthetic studies shared between test folders: ``ainode synth`` output, generated once per session.

:func:`synth_case` is the small study (T1CE, T2 and a two-segment SEG; ``--cases 1 --seed 1 --size small``)
that the listener, ledger, job and SR tests all read; it is written once per session and must not be modified
(copy it first).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pydicom
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


def multi_frame_t1ce(case: SynthCase, path: Path, seed: str, *, series_number: int = 5,
                     enhanced_mr: bool = False) -> pydicom.Dataset:
    """``case``'s T1CE as one legacy-converted enhanced multi-frame instance written to ``path`` (UIDs from
    ``seed``); ``enhanced_mr``: labelled Enhanced MR Image Storage instead. Returns the written dataset."""
    import highdicom as hd

    mf = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=[pydicom.dcmread(f) for f in case.t1ce],
        series_instance_uid=pydicom.uid.generate_uid(entropy_srcs=[f"{seed}-mf"]), series_number=series_number,
        sop_instance_uid=pydicom.uid.generate_uid(entropy_srcs=[f"{seed}-sop"]), instance_number=1)
    if enhanced_mr:
        mf.SOPClassUID = pydicom.uid.EnhancedMRImageStorage
        mf.file_meta.MediaStorageSOPClassUID = pydicom.uid.EnhancedMRImageStorage
    path.parent.mkdir(parents=True, exist_ok=True)
    mf.save_as(path, enforce_file_format=True)
    return mf


def seg_on_multi_frame(mf: pydicom.Dataset, mf_path: Path, seg_path: Path, seed: str, label: str,
                       box: tuple[slice, slice, slice], *, series_number: int) -> Path:
    """A one-segment SEG (a cuboid ``box`` of the volume, x/y/z) drawn on the multi-frame instance at ``mf_path``."""
    import SimpleITK as sitk

    from node.imaging.types import SeriesRef
    from node.imaging.volume import read_series_volume
    from node.synth.dicom_series import SegmentSpec, write_segmentation

    image = read_series_volume(SeriesRef(str(mf.SeriesInstanceUID), str(mf.StudyInstanceUID), "MR",
                                         str(mf.SOPClassUID), "", int(mf.SeriesNumber), None, (mf_path,)))
    lesion = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    lesion.CopyInformation(image)
    lesion[box] = 1
    write_segmentation([mf_path], [SegmentSpec(label, lesion, "lesion")], seg_path, series_number=series_number,
                       series_description="SEG", manufacturer="Test", uid_seed=f"{seed}-seg")
    return seg_path
