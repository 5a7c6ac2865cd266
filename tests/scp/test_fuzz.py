"""A fuzz corpus, generated here (deterministic, small), sent to a real listener over raw PDUs.

Raw PDUs (a minimal association client below) rather than pynetdicom's SCU, because the SCU refuses to send most
of these (invalid UIDs in the request, transfer-syntax lies, datasets that do not parse). Categories: truncations,
flipped bytes, length lies, path and NUL characters in UIDs, transfer-syntax lies, short pixel data, huge private
tags, deep sequences, wrong VRs, charset errors, conflicting UIDs. The properties:

* every answer is a response with a status; none is 0xC211 (an unexpected error in the handler);
* every instance answered Success is processable: its spooled file reads with pydicom, every element converts,
  the pixel data decodes to Rows x Columns (x frames), and the header values the pipeline uses convert;
* the listener stays up: a C-ECHO (pynetdicom SCU) after each category succeeds.

The counts (refused / accepted per category and per status) are printed (``pytest -s``).
"""

from __future__ import annotations

import io
import random
import socket
import struct
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from node.imaging.volume import read_instance
from node.scp.contexts import STORAGE_SOP_CLASSES
from node.scp.status import StoreStatus
from tests.scp.fixtures import FakeClock, ListenerFactory, associate, dataset_bytes
from tests.support.studies import SynthCase

SEED = 20240610
EXPLICIT, IMPLICIT, DEFLATED = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"
BIG_ENDIAN, RLE, JPEG_LS = "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80"
SYNTAXES = (EXPLICIT, IMPLICIT, DEFLATED, BIG_ENDIAN, RLE, JPEG_LS)
MR, SEG = str(STORAGE_SOP_CLASSES["MR Image Storage"]), str(STORAGE_SOP_CLASSES["Segmentation Storage"])
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.777"


# ------------------------------------------------------------------------------------------------------------------
# a minimal DICOM association client on raw PDUs


def _item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def _uid(uid: str) -> bytes:
    raw = uid.encode("latin-1")
    return raw + (b"\x00" if len(raw) % 2 else b"")


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


class RawClient:
    """One association proposing every (SOP class, transfer syntax) pair; C-STORE of arbitrary bytes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.contexts: dict[tuple[str, str], int] = {}
        self.sock: socket.socket | None = None
        self.message_id = 0

    def _pdu(self) -> tuple[int, bytes] | None:
        assert self.sock is not None
        header = self._read(6)
        if header is None:
            return None
        kind, _, length = struct.unpack(">BBL", header)
        body = self._read(length)
        return None if body is None else (kind, body)

    def _read(self, size: int) -> bytes | None:
        assert self.sock is not None
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def connect(self) -> None:
        self.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small PDUs: no Nagle delay
        items = _item(0x10, b"1.2.840.10008.3.1.1.1")
        pairs = [(c, t) for c in (MR, SEG) for t in SYNTAXES]
        for index, (sop_class, syntax) in enumerate(pairs):
            items += _item(0x20, struct.pack(">BBBB", 2 * index + 1, 0, 0, 0) + _item(0x30, _uid(sop_class))
                           + _item(0x40, _uid(syntax)))
        items += _item(0x50, _item(0x51, struct.pack(">L", 16384)) + _item(0x52, _uid("1.2.3.4.5.6")))
        body = struct.pack(">HH", 1, 0) + b"AINODE".ljust(16) + b"FUZZER".ljust(16) + b"\x00" * 32 + items
        self.sock.sendall(struct.pack(">BBL", 0x01, 0, len(body)) + body)
        answer = self._pdu()
        assert answer is not None and answer[0] == 0x02, f"association not accepted: {answer}"
        body = answer[1][68:]
        self.contexts = {}
        while body:
            kind, _, length = struct.unpack(">BBH", body[:4])
            if kind == 0x21 and body[6] == 0:
                context_id = body[4]
                self.contexts[pairs[(context_id - 1) // 2]] = context_id
            body = body[4 + length:]

    def store(self, sop_class: str, syntax: str, sop_instance: str, dataset: bytes) -> int | None:
        """The C-STORE response status, or ``None`` when the listener closed or aborted the association."""
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        context_id = self.contexts[(sop_class, syntax)]
        self.message_id += 1
        command = (_element(0x00000002, _uid(sop_class)) + _element(0x00000100, struct.pack("<H", 1))
                   + _element(0x00000110, struct.pack("<H", self.message_id))
                   + _element(0x00000700, struct.pack("<H", 0)) + _element(0x00000800, struct.pack("<H", 0))
                   + _element(0x00001000, _uid(sop_instance)))
        command = _element(0x00000000, struct.pack("<L", len(command))) + command
        try:
            self._pdv(context_id, 0x03, command)
            chunks = [dataset[i:i + 16000] for i in range(0, len(dataset), 16000)] or [b""]
            for index, chunk in enumerate(chunks):
                self._pdv(context_id, 0x02 if index == len(chunks) - 1 else 0x00, chunk)
            while (answer := self._pdu()) is not None:
                if answer[0] != 0x04:
                    break
                status = _status(answer[1])
                if status is not None:
                    return status
        except OSError:
            pass
        self.close()
        return None

    def _pdv(self, context_id: int, control: int, data: bytes) -> None:
        assert self.sock is not None
        pdv = struct.pack(">LBB", len(data) + 2, context_id, control) + data
        self.sock.sendall(struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.sendall(struct.pack(">BBL", 0x05, 0, 4) + b"\x00" * 4)
                self._pdu()
            except OSError:
                pass
            self.sock.close()
            self.sock = None


def _status(body: bytes) -> int | None:
    data = body[6:]  # one PDV: length (4), context, control
    offset = 0
    while offset + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHL", data, offset)
        if (group, element) == (0x0000, 0x0900):
            return int(struct.unpack_from("<H", data, offset + 8)[0])
        offset += 8 + length
    return None


# ------------------------------------------------------------------------------------------------------------------
# the corpus


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    sop_class: str
    syntax: str  # the presentation context it is sent on
    sop_instance: str  # the request's Affected SOP Instance UID
    dataset: bytes


@dataclass(frozen=True)
class Base:
    sop_class: str
    ds: Dataset

    @property
    def uid(self) -> str:
        return str(self.ds.SOPInstanceUID)


class Corpus:
    def __init__(self, bases: list[Base], seed: int) -> None:
        self.bases = bases
        self.rng = random.Random(seed)
        self.counter = 0

    def fresh_uid(self, base: Base) -> str:
        """A new SOP Instance UID of the same length as the base's (so byte offsets stay valid)."""
        self.counter += 1
        suffix = f"{self.counter:06d}"
        return base.uid[: -len(suffix)] + suffix

    def encode(self, ds: Dataset, *, implicit: bool = False) -> bytes:
        """The dataset bytes (no file meta) in Explicit or Implicit VR Little Endian."""
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian if implicit else pydicom.uid.UID(EXPLICIT)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
        stream = io.BytesIO(buffer.getvalue())
        pydicom.filereader.read_preamble(stream, False)
        pydicom.filereader._read_file_meta_info(stream)
        return buffer.getvalue()[stream.tell():]

    def variant(self, base: Base, edit: Callable[[Dataset], None] | None = None) -> tuple[str, Dataset]:
        ds = pydicom.dcmread(io.BytesIO(self.encode_file(base.ds)))
        uid = self.fresh_uid(base)
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(uid)
        if edit is not None:
            edit(ds)
        return uid, ds

    @staticmethod
    def encode_file(ds: Dataset) -> bytes:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    def case(self, category: str, name: str, base: Base, edit: Callable[[Dataset], None] | None = None,
             *, syntax: str = EXPLICIT, request_uid: str | None = None, implicit: bool = False,
             mutate: Callable[[bytes], bytes] | None = None) -> Case:
        uid, ds = self.variant(base, edit)
        data = self.encode(ds, implicit=implicit)
        if mutate is not None:
            data = mutate(data)
        return Case(category, name, base.sop_class, syntax, request_uid if request_uid is not None else uid, data)


def raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def put(tag: int, vr: str, value: bytes) -> Callable[[Dataset], None]:
    def edit(ds: Dataset) -> None:
        ds[tag] = raw(tag, vr, value)

    return edit


Mutation = Callable[[bytes], bytes]


def _cut(at: int) -> Mutation:
    return lambda data: data[:at]


def _splice(at: int, new: bytes) -> Mutation:
    return lambda data: data[:at] + new + data[at + len(new):]


def _replace(old: bytes, new: bytes) -> Mutation:
    return lambda data: data.replace(old, new)


def _pixel_offset(data: bytes) -> int:
    """Where the top-level Pixel Data element starts in explicit VR LE bytes (its header)."""
    index = data.rfind(b"\xe0\x7f\x10\x00")
    assert index > 0
    return index


def _top_level_headers(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(offset of the length field, its size, the length) of each top-level element (explicit VR LE)."""
    offset = 0
    while offset + 8 <= len(data):
        vr = data[offset + 4:offset + 6]
        if vr in (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"):
            length = struct.unpack_from("<L", data, offset + 8)[0]
            yield offset + 8, 4, length
            offset += 12 + (0 if length == 0xFFFFFFFF else length)
            if length == 0xFFFFFFFF:
                return
        else:
            length = struct.unpack_from("<H", data, offset + 6)[0]
            yield offset + 6, 2, length
            offset += 8 + length


def truncations(corpus: Corpus) -> Iterator[Case]:
    for base in corpus.bases:
        size = len(corpus.encode(base.ds))
        for cut in sorted(corpus.rng.sample(range(1, size), 8)):
            yield corpus.case("truncations", f"cut at {cut}/{size}", base, mutate=_cut(cut))


def flipped_bytes(corpus: Corpus) -> Iterator[Case]:
    for base in corpus.bases:
        data = corpus.encode(base.ds)
        header_end = _pixel_offset(data) + 12
        for i in range(8):
            positions = [corpus.rng.randrange(0, header_end) for _ in range(1 + i % 3)]

            def flip(d: bytes, at: list[int] = positions) -> bytes:
                out = bytearray(d)
                for p in at:
                    out[p] ^= 1 << corpus.rng.randrange(8)
                return bytes(out)

            yield corpus.case("flipped bytes", f"header bytes {positions}", base, mutate=flip)
        for _ in range(2):
            at = corpus.rng.randrange(header_end, len(data))

            def flip_pixel(d: bytes, p: int = at) -> bytes:
                return d[:p] + bytes([d[p] ^ 0xFF]) + d[p + 1:]

            yield corpus.case("flipped bytes", f"pixel byte {at}", base, mutate=flip_pixel)


def length_lies(corpus: Corpus) -> Iterator[Case]:
    for base in corpus.bases:
        headers = list(_top_level_headers(corpus.encode(base.ds)))
        for offset, size, length in corpus.rng.sample(headers, 8):
            delta = corpus.rng.choice([-4, -2, -1, 1, 2, 6, 100, 4000])
            new = max(length + delta, 0) % (1 << (8 * size))

            def lie(d: bytes, o: int = offset, s: int = size, n: int = new) -> bytes:
                return d[:o] + n.to_bytes(s, "little") + d[o + s:]

            yield corpus.case("length lies", f"length {length} -> {new} at {offset}", base, mutate=lie)
        offset, size, _ = headers[-1]  # Pixel Data announced as undefined length in a native syntax
        yield corpus.case("length lies", "pixel data of undefined length", base,
                          mutate=_splice(offset, b"\xff\xff\xff\xff"))


def uid_characters(corpus: Corpus) -> Iterator[Case]:
    base = corpus.bases[0]
    bad = {"path": "../../../../etc/passwd", "NUL": "1.2.826.0.1\x00.3", "slash": "1.2.826/0.1.3",
           "backslash": "1.2.826.0.1\\3", "too long": "1." + "2" * 80, "letters": "1.2.abc.4", "empty": ""}
    for name, value in bad.items():
        encoded = value.encode("latin-1")
        yield corpus.case("path/NUL UIDs", f"SOPInstanceUID {name}", base, put(0x00080018, "UI", encoded),
                          request_uid=value)
        yield corpus.case("path/NUL UIDs", f"StudyInstanceUID {name}", base, put(0x0020000D, "UI", encoded))
        yield corpus.case("path/NUL UIDs", f"SeriesInstanceUID {name}", base, put(0x0020000E, "UI", encoded))


def syntax_lies(corpus: Corpus) -> Iterator[Case]:
    for base in corpus.bases:
        yield corpus.case("transfer-syntax lies", "explicit bytes on an implicit context", base, syntax=IMPLICIT)
        yield corpus.case("transfer-syntax lies", "implicit bytes on an explicit context", base, implicit=True)
        yield corpus.case("transfer-syntax lies", "little endian on a big endian context", base, syntax=BIG_ENDIAN)
        yield corpus.case("transfer-syntax lies", "not deflated on a deflated context", base, syntax=DEFLATED)
        yield corpus.case("transfer-syntax lies", "native pixels on an RLE context", base, syntax=RLE)
        yield corpus.case("transfer-syntax lies", "native pixels on a JPEG-LS context", base, syntax=JPEG_LS)


def short_pixels(corpus: Corpus) -> Iterator[Case]:
    for base in corpus.bases:
        pixels = bytes(base.ds.PixelData)
        for name, kept in (("2 bytes short", len(pixels) - 2), ("half", len(pixels) // 2), ("empty", 0)):
            yield corpus.case("short pixel data", name, base, put(0x7FE00010, "OB", pixels[: kept - kept % 2]))
        yield corpus.case("short pixel data", "no pixel data", base, lambda ds: ds.__delitem__(0x7FE00010))
        yield corpus.case("short pixel data", "Rows doubled", base, lambda ds: setattr(ds, "Rows", ds.Rows * 2))


def huge_private_tags(corpus: Corpus) -> Iterator[Case]:
    base = corpus.bases[0]
    for size in (2 << 20, (1 << 20) + 2, 512 << 10):  # the fuzz listener's max_element_bytes is 1 MiB
        def blob(ds: Dataset, n: int = size) -> None:
            ds.add_new(0x00090010, "LO", "FUZZ")
            ds.add_new(0x00091001, "OB", bytes(n))
        yield corpus.case("huge private tags", f"private OB of {size} bytes", base, blob)
    yield corpus.case("huge private tags", "private LO of 2 MiB", base, put(0x00091002, "LO", b"x" * (2 << 20)))
    yield corpus.case("huge private tags", "private UN of 2 MiB, implicit", base, put(0x00091003, "UN", bytes(2 << 20)),
                      implicit=True, syntax=IMPLICIT)


def _nested(depth: int) -> bytes:
    """A private SQ nested ``depth`` levels (explicit VR LE, defined lengths)."""
    value = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 4) + b"FUZZ"
    for _ in range(depth):
        item = struct.pack("<HHL", 0xFFFE, 0xE000, len(value)) + value
        value = struct.pack("<HH2sHL", 0x0009, 0x1010, b"SQ", 0, len(item)) + item
        value = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 4) + b"FUZZ" + value
    return value


def deep_sequences(corpus: Corpus) -> Iterator[Case]:
    base = corpus.bases[0]
    for depth in (5, 31, 33, 200, 2000):
        def deep(d: bytes, n: int = depth) -> bytes:  # inserted before (0010,0010), i.e. after group 0009
            at = d.find(b"\x10\x00\x10\x00")
            return d[:at] + _nested(n) + d[at:]
        yield corpus.case("deep sequences", f"{depth} levels", base, mutate=deep)


def wrong_vrs(corpus: Corpus) -> Iterator[Case]:
    base = corpus.bases[0]
    cases = {
        "ContrastBolusAgentSequence as LO": put(0x00180012, "LO", b"gadolinium"),
        "Rows as DS": put(0x00280010, "DS", b"144 "),
        "Rows as OW": put(0x00280010, "OW", b"\x90\x00"),
        "PixelSpacing as US": put(0x00280030, "US", b"\x01\x00\x01\x00"),
        "ImagePositionPatient not numbers": put(0x00200032, "DS", b"a\\b\\c "),
        "SeriesNumber abc": put(0x00200011, "IS", b"abc "),
        "SeriesNumber 2^63": put(0x00200011, "IS", b"9223372036854775808 "),
        "SeriesNumber 2^31": put(0x00200011, "IS", b"2147483648"),
        "SliceThickness 5mm": put(0x00180050, "DS", b"5mm "),
        "BitsAllocated of 3 bytes": put(0x00280100, "US", b"\x10\x00\x00"),
        "SeriesDescription as SH": put(0x0008103E, "SH", b"T2 axial"),  # harmless: accepted
    }
    for name, edit in cases.items():
        yield corpus.case("wrong VRs", name, base, edit)
    yield corpus.case("wrong VRs", "VR ZZ", base,
                      mutate=lambda d: d.replace(b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00ZZ"))


PLACEHOLDER = "@@@@charset@@@@"


def charset_errors(corpus: Corpus) -> Iterator[Case]:
    base = corpus.bases[0]
    cases = {
        "invalid UTF-8": ("ISO_IR 192", b"T2 \xff\xfe\xfd axial "),
        "unknown character set": ("ISO_IR 999", b"T2 \xe9\xe8\xe7 axial "),
        "undeclared ISO 2022 escape": ("ISO 2022 IR 6", b"T2 \x1b$B\x30\x21\x1b(B ax "),
        "invalid GB18030": ("GB18030", b"T2 \x81\x30\x81 axial  "),
        "valid Latin-1": ("ISO_IR 100", b"T2 \xe9\xe8\xe7 axial "),  # accepted
        "valid UTF-8": ("ISO_IR 192", "T2 é axial  ".encode()),  # accepted
    }
    for name, (charset, text) in cases.items():
        placeholder = (PLACEHOLDER + " " * 40)[: len(text)].encode()

        def edit(ds: Dataset, cs: str = charset, p: bytes = placeholder) -> None:
            ds.SpecificCharacterSet = cs
            ds.SeriesDescription = p.decode()

        yield corpus.case("charset errors", name, base, edit,
                          mutate=_replace(placeholder, text))


def conflicting_uids(corpus: Corpus) -> Iterator[Case]:
    base = corpus.bases[0]
    yield corpus.case("conflicting UIDs", "request SOP Instance UID differs", base, request_uid="1.2.3.4.5.6.7")
    yield Case("conflicting UIDs", "request SOP Class UID differs", SEG, EXPLICIT, base.uid, corpus.encode(base.ds))
    yield corpus.case("conflicting UIDs", "no StudyInstanceUID", base, lambda ds: ds.__delitem__(0x0020000D))
    yield corpus.case("conflicting UIDs", "SOPInstanceUID twice", base,
                      mutate=lambda d: d.replace(b"\x08\x00\x20\x00DA", b"\x08\x00\x18\x00UI", 1))
    # the base instance itself is sent first (accepted); then its UID under another study, then its series
    yield Case("conflicting UIDs", "the original", base.sop_class, EXPLICIT, base.uid, corpus.encode(base.ds))
    moved = pydicom.dcmread(io.BytesIO(corpus.encode_file(base.ds)))
    moved.StudyInstanceUID = OTHER_STUDY
    yield Case("conflicting UIDs", "same SOP Instance UID, another study", base.sop_class, EXPLICIT, base.uid,
               corpus.encode(moved))
    yield corpus.case("conflicting UIDs", "same series, another study", base,
                      lambda ds: setattr(ds, "StudyInstanceUID", OTHER_STUDY))


CATEGORIES = (truncations, flipped_bytes, length_lies, uid_characters, syntax_lies, short_pixels, huge_private_tags,
              deep_sequences, wrong_vrs, charset_errors, conflicting_uids)


# ------------------------------------------------------------------------------------------------------------------
# the oracle: what "processable" means for an instance answered Success


def processable(path: Path) -> str | None:
    """Why the pipeline could not read the spooled instance, or ``None``."""
    try:
        ds = read_instance(path)
        for element in ds.iterall():
            _ = element.value
        pixels = ds.pixel_array
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = (ds.Rows, ds.Columns) if frames == 1 else (frames, ds.Rows, ds.Columns)
        if pixels.shape[: len(expected)] != expected:
            return f"pixel array {pixels.shape}, expected {expected}"
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality", "SeriesDescription"):
            str(ds.get(keyword, ""))
        if ds.get("SeriesNumber") not in (None, ""):
            int(ds.SeriesNumber)
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
            if keyword in ds:
                value = ds[keyword].value
                [float(v) for v in (value if isinstance(value, list | tuple | pydicom.multival.MultiValue)
                                    else [value])]
        for item in ds.get("ContrastBolusAgentSequence", []):
            item.get("CodeMeaning")
    except Exception as exc:  # noqa: BLE001 - the oracle reports any failure as the reason
        return f"{type(exc).__name__}: {exc}"
    return None


def invalid_command(case: Case) -> bool:
    """A command set pynetdicom's DIMSE layer cannot decode (an Affected SOP Instance UID over 64 characters): it
    aborts the association (PS3.7 allows it for an invalid DIMSE message) before any handler runs; nothing is
    stored. (A command it decodes but finds incomplete, e.g. an empty UID, is answered 0xC000 by the listener.)"""
    return len(case.sop_instance) > 64


@pytest.mark.filterwarnings("ignore")
def test_fuzz_corpus(start: ListenerFactory, sqlite_url: str, synth_case: SynthCase) -> None:
    listener = start(sqlite_url, FakeClock(), max_element_bytes="1M")
    bases = [Base(MR, pydicom.dcmread(synth_case.t2[0])), Base(SEG, pydicom.dcmread(synth_case.seg[0])),
             Base(MR, pydicom.dcmread(synth_case.t1ce[0]))]
    corpus = Corpus(bases, SEED)
    client = RawClient(listener.port)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    statuses: Counter[str] = Counter()
    problems: list[str] = []
    for category in CATEGORIES:
        for case in category(corpus):
            status = client.store(case.sop_class, case.syntax, case.sop_instance, case.dataset)
            label = "A-ABORT" if status is None else f"0x{status:04X}"
            statuses[label] += 1
            counts[case.category]["accepted" if status == StoreStatus.SUCCESS else "refused"] += 1
            if (status is None and not invalid_command(case)) or status == 0xC211:
                problems.append(f"{case.category} / {case.name}: {label}")
            elif status == StoreStatus.SUCCESS:
                listener.flush()  # the group commit: recorded within its next batch
                known = listener.repository.find_instance(case.sop_instance)
                if known is None:
                    problems.append(f"{case.category} / {case.name}: Success but not in the ledger")
                    continue
                reason = processable(listener.spool.path(known.path))
                if reason is not None:
                    problems.append(f"{case.category} / {case.name}: accepted but not processable: {reason}")
        client.close()
        assoc = associate(listener.port)  # the listener is still up after each category
        assert assoc.is_established and int(assoc.send_c_echo().Status) == 0, category.__name__
        assoc.release()
    total = Counter[str]()
    print("\nfuzz corpus (seed", SEED, ")")
    for name, counter in counts.items():
        total.update(counter)
        print(f"  {name:22s} refused {counter['refused']:3d}  accepted {counter['accepted']:3d}")
    print(f"  {'total':22s} refused {total['refused']:3d}  accepted {total['accepted']:3d}")
    print("  statuses:", ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items())))
    assert not problems, "\n".join(problems)
    assert list((listener.spool.root / ".incoming").iterdir()) == []
    # the good instances were never disturbed
    for base in bases[:1]:
        known = listener.repository.find_instance(base.uid)
        assert known is not None and dataset_bytes(listener.spool.path(known.path)) == corpus.encode(base.ds)
