"""The walk's layout memo (node.scp.dataset, "Repeated layouts"): a walk that skips the elements repeating the last
whole walk's gives exactly the verdict and the values of a whole walk: along real series, for every one-byte change
of a slice's header, and when the character set in effect differs. Each comparison walks the same bytes twice in
this thread, once with the memo and once without (``remember=False``)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from node.errors import CorruptInstanceError
from node.scp import dataset
from node.scp.dataset import Walked, Walker
from node.scp.source import HeadReader, LimitExceededError
from tests.support.studies import SynthCase

HEAD = 1 << 16  # as the listener keeps (node.scp.receive.HEAD_BYTES)


@pytest.fixture(autouse=True)
def _no_layout() -> Iterator[None]:
    dataset.forget_layout()
    yield
    dataset.forget_layout()


def _dataset_file(source: Path, folder: Path, implicit: bool = False) -> Path:
    """The data set of a Part-10 file alone, in a file of its own (the walk reads past the head from it); with
    ``implicit``, encoded in Implicit VR Little Endian first."""
    data = source.read_bytes()
    if implicit:
        ds = pydicom.dcmread(source)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True, implicit_vr=True, little_endian=True)
        data = buffer.getvalue()
    offset = 144 + int.from_bytes(data[140:144], "little")  # after the file meta group
    target = folder / f"{source.parent.name}-{source.stem}{'-implicit' if implicit else ''}.ds"
    target.write_bytes(data[offset:])
    return target


def _walk(path: Path, data: bytes | None = None, *, remember: bool = True, explicit: bool = True) -> Walked | str:
    """The walk's verdict on the data set in ``path`` (or ``data``, written there first): what it found, or why it
    refused."""
    if data is not None:
        path.write_bytes(data)
    data = path.read_bytes()
    reader = HeadReader(data[:HEAD], path, 0, len(data))
    try:
        return Walker(reader, explicit=explicit, little=True, encapsulated=False, max_element_bytes=1 << 30,
                      remember=remember).walk()
    except (CorruptInstanceError, LimitExceededError) as exc:
        return f"{type(exc).__name__}: {exc.message}"
    finally:
        reader.close()


def test_a_series_walked_with_the_memo_gives_what_whole_walks_give(synth_case: SynthCase, tmp_path: Path) -> None:
    slices = [_dataset_file(path, tmp_path) for path in synth_case.t2 + synth_case.t1ce[:6] + synth_case.seg]
    normally: list[int] = []
    for path in slices:
        data = path.read_bytes()
        reader = HeadReader(data[:HEAD], path, 0, len(data))
        walker = Walker(reader, explicit=True, little=True, encapsulated=False, max_element_bytes=1 << 30)
        assert walker.walk() == _walk(path, remember=False), path.name
        normally.append(walker.walked_normally)
    # the memo is used: after the first slice of a series (a whole walk), at most the few elements that change from
    # slice to slice are walked (SOP Instance UID, Instance Number, Image Position, Slice Location, pixel values)
    assert max(normally[2:len(synth_case.t2)]) <= 8, normally


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit VR", "implicit VR"])
def test_every_one_byte_change_of_a_header_gets_the_verdict_of_a_whole_walk(
    synth_case: SynthCase, tmp_path: Path, implicit: bool
) -> None:
    first, second = (_dataset_file(path, tmp_path, implicit) for path in synth_case.t2[:2])
    original = second.read_bytes()
    header_end = original.index(b"\xe0\x7f\x10\x00") + (8 if implicit else 12)  # through Pixel Data's header
    mutated = tmp_path / "mutated.ds"
    verdicts: set[str] = set()
    for at in range(0, header_end, 2 if implicit else 1):
        for value in {0x00, 0xFF, original[at] ^ 0x01, original[at] ^ 0x20}:
            data = bytearray(original)
            data[at] = value
            dataset.forget_layout()
            assert not isinstance(_walk(first, explicit=not implicit), str)  # the layout of the slice before
            with_memo = _walk(mutated, bytes(data), explicit=not implicit)
            assert with_memo == _walk(mutated, remember=False, explicit=not implicit), (at, value)
            verdicts.add("accepted" if isinstance(with_memo, Walked) else with_memo.split(":")[0])
    assert {"accepted", "CorruptInstanceError"} <= verdicts  # both kinds of verdict were compared


def test_changes_along_a_series_keep_the_verdicts_of_whole_walks(synth_case: SynthCase, tmp_path: Path) -> None:
    """The memo learns which elements change; changes elsewhere, slice after slice, are still found."""
    slices = [_dataset_file(path, tmp_path) for path in synth_case.t2]
    mutated = tmp_path / "mutated.ds"
    for number, path in enumerate(slices):
        data = bytearray(path.read_bytes())
        if number % 2:
            at = (number * 97) % data.index(b"\xe0\x7f\x10\x00")
            data[at] ^= 0x41
        with_memo = _walk(mutated, bytes(data))
        assert with_memo == _walk(mutated, remember=False), number


def _encoded(charset: str | None, name: bytes) -> bytes:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["layout"])
    ds.add_new(0x00100010, "PN", name)  # Patient's Name, raw bytes
    ds.add_new(0x00100020, "LO", b"ID1 ")
    ds.add_new(0x00200013, "IS", b"1 ")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return bytes(buffer.getvalue())


@pytest.mark.filterwarnings("ignore:Unknown encoding")  # pydicom, writing the unknown term on purpose
def test_a_run_is_not_skipped_under_another_character_set(tmp_path: Path) -> None:
    """Names in UTF-8 are valid under ISO_IR 192; the same bytes under an unknown character set are refused,
    even though the same elements were found valid in the walk before."""
    name = "Müller^Jörg".encode()
    accepted = _walk(tmp_path / "a.ds", _encoded("ISO_IR 192", name))
    assert isinstance(accepted, Walked)
    refused = _walk(tmp_path / "b.ds", _encoded("ISO_IR 999", name))
    assert isinstance(refused, str) and "unknown Specific Character Set" in refused
    assert refused == _walk(tmp_path / "b.ds", remember=False)
    # and the other way round: a layout learnt under the default repertoire, then UTF-8 declared
    dataset.forget_layout()
    assert isinstance(_walk(tmp_path / "c.ds", _encoded(None, b"Smith^John")), Walked)
    declared = _walk(tmp_path / "d.ds", _encoded("ISO_IR 192", name))
    assert declared == _walk(tmp_path / "d.ds", remember=False)
    assert isinstance(declared, Walked) and declared.charset.codecs


def _many(prefix: str) -> bytes:
    """A data set of 60 private LO elements whose values all begin with ``prefix`` (same tags, same lengths)."""
    ds = Dataset()
    ds.add_new(0x00090010, "LO", "LAYOUT TEST")
    for n in range(60):
        ds.add_new(0x00091000 + n, "LO", f"{prefix}{n:04d}")
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return bytes(buffer.getvalue())


def test_a_data_set_that_repeats_nothing_stops_the_comparisons(tmp_path: Path) -> None:
    """Every element has the layout's tag, VR and length but another value: each comparison finds nothing to skip.
    After MAX_MISSES of them the walk walks on without comparing (a crafted header costs a bounded amount more than
    a whole walk), the layout is dropped, and the verdict is a whole walk's."""
    assert isinstance(_walk(tmp_path / "a.ds", _many("A")), Walked)
    data = _many("B")
    (tmp_path / "b.ds").write_bytes(data)
    reader = HeadReader(data, tmp_path / "b.ds", 0, len(data))
    walker = Walker(reader, explicit=True, little=True, encapsulated=False, max_element_bytes=1 << 30)
    assert walker.walk() == _walk(tmp_path / "b.ds", remember=False)
    assert walker.misses == dataset.MAX_MISSES
    assert walker.walked_normally == dataset.MAX_MISSES  # the private creator repeated; no comparison after those
    assert getattr(dataset._layouts, "layout", None) is None
