"""The header check reads the dataset's first bytes from memory (as received) and the file only past them: the
result, or the refusal, is the same whatever part of the header the kept bytes cover."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from node.errors import CorruptInstanceError
from node.scp.header import Limits, read_header
from tests.support.studies import SynthCase

LIMITS = Limits(max_inflated_bytes=1 << 30, max_element_bytes=1 << 30)


def _dataset_offset(path: Path) -> int:
    data = path.read_bytes()
    meta_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL value after the 128+4 preamble
    return 144 + meta_length


def _check(path: Path, head_length: int | None) -> object:
    info = pydicom.dcmread(path, stop_before_pixels=True)
    offset = _dataset_offset(path)
    data = path.read_bytes()
    head = b"" if head_length is None else data[offset:offset + head_length]
    try:
        return read_header(path, offset, str(info.file_meta.TransferSyntaxUID), str(info.SOPClassUID),
                           str(info.SOPInstanceUID), LIMITS, head=head, size=len(data))
    except CorruptInstanceError as exc:
        return f"refused: {exc.message}"


@pytest.mark.parametrize("head_length", [1, 7, 131, 1000, 1 << 16])
def test_same_header_whatever_the_kept_bytes_cover(synth_case: SynthCase, head_length: int) -> None:
    for path in (synth_case.t2[0], synth_case.seg[0]):
        assert _check(path, head_length) == _check(path, None)
        assert not isinstance(_check(path, None), str)


@pytest.mark.parametrize("head_length", [10, 400, 1 << 16])
def test_same_refusal_for_a_truncated_dataset(synth_case: SynthCase, tmp_path: Path, head_length: int) -> None:
    source = synth_case.t2[0]
    data = source.read_bytes()
    offset = _dataset_offset(source)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:offset + 600])  # ends inside the header
    refused = _check(cut, None)
    assert isinstance(refused, str) and refused.startswith("refused")
    assert _check(cut, head_length) == refused
