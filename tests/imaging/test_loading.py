# mypy: disable-error-code="no-untyped-call"
"""load_study end to end on generated studies."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from node.errors import CorruptInstanceError, SegmentationError
from node.imaging.loading import load_study
from node.imaging.series_rules import SeriesRules
from node.imaging.study import scan_study
from node.sr.source import SourceStudy
from node.synth.dicom_series import SegmentSpec, write_mr_series, write_segmentation
from tests.imaging import factory


def test_load_study(tmp_path: Path, series_rules: SeriesRules) -> None:
    study = factory.write_study(tmp_path)
    loaded = load_study(tmp_path, series_rules)
    seg = pydicom.dcmread(study.seg_path)
    t1 = pydicom.dcmread(study.t1ce_files[0])
    t2 = pydicom.dcmread(study.t2_files[0])
    assert loaded.identity.study_instance_uid == factory.STUDY_UID
    assert loaded.identity.frame_of_reference_uid == factory.FOR_UID
    assert loaded.identity.t1ce_series_uid == t1.SeriesInstanceUID
    assert loaded.identity.t2_series_uid == t2.SeriesInstanceUID
    assert loaded.identity.seg_series_uid == seg.SeriesInstanceUID
    assert loaded.identity.seg_sop_instance_uid == seg.SOPInstanceUID
    assert loaded.t1ce.GetSize() == factory.SIZE and loaded.t2.GetSize() == (30, 26, 12)
    assert loaded.t1ce.GetPixelID() == sitk.sitkFloat32 and loaded.t2.GetPixelID() == sitk.sitkFloat32
    (lesion,) = loaded.lesions
    assert np.array_equal(sitk.GetArrayFromImage(lesion.mask), sitk.GetArrayFromImage(study.lesion))
    assert lesion.mask.GetOrigin() == loaded.t1ce.GetOrigin()
    assert loaded.pons is None and loaded.warnings == ()
    text = " ".join(loaded.warnings)
    assert "Test^Patient" not in text and "TEST-0001" not in text


def test_load_fractional_study_warns(tmp_path: Path, series_rules: SeriesRules) -> None:
    image = factory.phantom()
    factory.write_study(
        tmp_path, t1ce_image=image, segments=[SegmentSpec("Lesion 1", factory.sphere_mask(image), "lesion")],
        fractional=True,
    )
    loaded = load_study(tmp_path, series_rules)
    assert any("FRACTIONAL" in w for w in loaded.warnings)


def test_load_study_uses_default_rules(tmp_path: Path) -> None:
    factory.write_study(tmp_path, t1ce_description="Sag 3D BRAVO +C", t2_description="T2W_TSE")
    assert len(load_study(tmp_path).lesions) == 1


def test_frame_of_reference_mismatch_is_reported(tmp_path: Path, series_rules: SeriesRules) -> None:
    study = factory.write_study(tmp_path)
    ds = pydicom.dcmread(study.seg_path)
    ds.FrameOfReferenceUID = "1.2.3.999"
    ds.save_as(study.seg_path)
    with pytest.raises(SegmentationError, match="frame of reference"):
        load_study(tmp_path, series_rules)


def test_corrupt_file_is_reported_by_name(tmp_path: Path, series_rules: SeriesRules) -> None:
    study = factory.write_study(tmp_path)
    study.t2_files[3].write_bytes(b"\x00" * 200)
    with pytest.raises(CorruptInstanceError, match=r"0003\.dcm"):
        load_study(tmp_path, series_rules)


def test_full_size_study_is_fast(tmp_path: Path, series_rules: SeriesRules) -> None:
    """176 slices of 256 x 256: writing and loading each take a few seconds at most."""
    image = factory.phantom(size=(256, 256, 176), spacing=(1.0, 1.0, 1.0), origin=(-128.0, -128.0, -88.0))
    start = time.perf_counter()
    factory.write_study(tmp_path, t1ce_image=image)
    written = time.perf_counter() - start
    start = time.perf_counter()
    loaded = load_study(tmp_path, series_rules)
    loading = time.perf_counter() - start
    assert loaded.t1ce.GetSize() == (256, 256, 176)
    assert written < 20 and loading < 20, (written, loading)


def test_load_study_with_enhanced_t1ce_and_compressed_t2(tmp_path: Path, series_rules: SeriesRules) -> None:
    """A mixed real-world study: Enhanced MR T1CE (one file), JPEG-LS T2, SEG drawn on the multi-frame T1CE."""
    import highdicom as hd

    image = factory.phantom(direction=factory.oblique_direction(12.0))
    single = tmp_path.parent / f"{tmp_path.name}-single"
    files = write_mr_series(
        image, factory.header("t1", 5, "T1 MPRAGE KM", contrast_bolus_agent="Gadovist"), single, uid_seed="t1"
    )
    mf = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=[pydicom.dcmread(f) for f in files],
        series_instance_uid=factory.series_uid("enhanced"),
        series_number=5,
        sop_instance_uid=str(pydicom.uid.generate_uid(entropy_srcs=["enhanced"])),
        instance_number=1,
    )
    mf.SOPClassUID = pydicom.uid.EnhancedMRImageStorage
    mf.file_meta.MediaStorageSOPClassUID = pydicom.uid.EnhancedMRImageStorage
    (tmp_path / "t1ce").mkdir()
    mf.save_as(tmp_path / "t1ce" / "mf.dcm", enforce_file_format=True)
    t2_files = write_mr_series(
        factory.phantom(size=(40, 36, 8), spacing=(1.2, 1.2, 4.0)),
        factory.header("t2", 3, "T2 TSE tra", scanning_sequence="SE", mr_acquisition_type="2D"),
        tmp_path / "t2",
        uid_seed="t2",
    )
    for path in t2_files:
        ds = pydicom.dcmread(path)
        ds.compress(pydicom.uid.JPEGLSLossless)
        ds.save_as(path, enforce_file_format=True)
    lesion = factory.sphere_mask(image, 7.0)
    write_segmentation(
        [tmp_path / "t1ce" / "mf.dcm"], [SegmentSpec("Metastasis 1", lesion, "lesion")], tmp_path / "seg" / "seg.dcm",
        series_number=100, series_description="SEG", manufacturer="Test", uid_seed="seg",
    )
    loaded = load_study(tmp_path, series_rules)
    assert loaded.identity.t1ce_series_uid == factory.series_uid("enhanced")
    assert loaded.t2.GetSize() == (40, 36, 8)
    assert np.array_equal(sitk.GetArrayFromImage(loaded.lesions[0].mask), sitk.GetArrayFromImage(lesion))
    assert loaded.warnings == ()


def test_every_file_is_parsed_once_and_the_sr_evidence_reuses_the_headers(
    tmp_path: Path, series_rules: SeriesRules, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan parses each file's header once: the series rules, the pixel pass and the SR's evidence reuse it.
    The evidence is the same instances, headers only, as reading the files gives."""
    study = factory.write_study(tmp_path)
    reads = factory.count_reads(monkeypatch)
    loaded = load_study(tmp_path, series_rules)
    images = [*study.t1ce_files, *study.t2_files]
    assert {str(p): reads[str(p)] for p in images} == {str(p): 1 for p in images}
    assert reads[str(study.seg_path)] <= 1
    assert loaded.files is not None
    assert set(loaded.files.headers) == {*images, study.seg_path}
    before = sum(reads.values())
    source = SourceStudy.from_files(loaded.files.t1ce, loaded.files.t2, loaded.files.seg, loaded.files.headers)
    assert sum(reads.values()) == before  # nothing read again
    monkeypatch.undo()
    from_files = SourceStudy.from_files(loaded.files.t1ce, loaded.files.t2, loaded.files.seg)
    uids = [[str(ds.SOPInstanceUID) for ds in s.evidence] for s in (source, from_files)]
    assert uids[0] == uids[1] and len(uids[0]) == len(images) + 1
    assert all("PixelData" not in ds for ds in source.evidence)
    assert source.segments == from_files.segments


def test_a_copy_for_another_process_leaves_the_headers_behind(tmp_path: Path, series_rules: SeriesRules) -> None:
    """``ainode features --workers`` sends each study's run back from a worker process: the headers stay there."""
    factory.write_study(tmp_path)
    files = load_study(tmp_path, series_rules).files
    assert files is not None and files.headers
    copied = pickle.loads(pickle.dumps(files))
    assert copied == files and copied.headers == {}
    ref = scan_study(tmp_path)[0]
    assert ref.headers and pickle.loads(pickle.dumps(ref)).headers == ()
