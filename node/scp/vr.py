"""Value rules per VR, checked on the raw bytes of a received element (no pydicom conversion, no warnings).

What "converts" means here is what the imaging pipeline needs when it reads the element with pydicom: an IS is
an integer in -2^31..2^31-1, a DS a finite decimal number, a UI digits and dots, binary numbers a whole number of
values, text decodable in the instance's Specific Character Set (0008,0005), a public element's VR one the data
dictionary allows (or ``UN``, then checked as the dictionary's VR; or another plain-text VR whose value also
satisfies the dictionary's VR). :func:`check_value` returns the reason a value is refused, or ``None``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from pydicom._dicom_dict import DicomDictionary
from pydicom.charset import CODES_TO_ENCODINGS, handled_encodings, python_encoding
from pydicom.datadict import dictionary_keyword, dictionary_VR

#: Every VR of PS3.5 Table 6.2-1.
VRS = frozenset({
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW", "PN",
    "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV",
})
#: VRs whose explicit-VR header has 2 reserved bytes and a 4-byte length.
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})
#: Text VRs that use the Specific Character Set; the other string VRs are ASCII only.
CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
STRING_VRS = frozenset({
    "AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT",
})
#: VRs holding one value (a backslash is text, not a separator).
SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})
BINARY_SIZE = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8, "AT": 4,
               "OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_FAMILY = {**{vr: "text" for vr in STRING_VRS}, **{vr: "int" for vr in ("US", "SS", "UL", "SL", "SV", "UV", "AT")},
           "FL": "float", "FD": "float", "SQ": "sequence",
           **{vr: "bulk" for vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN")}}

_INTEGER = re.compile(rb"^[+-]?[0-9]+$")
_DECIMAL = re.compile(rb"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
_UID = re.compile(rb"^[0-9]+(\.[0-9]+)*$")
_ESCAPED = re.compile(rb"(^[^\x1b]+|[\x1b][^\x1b]*)")
_IS_MIN, _IS_MAX = -(2**31), 2**31 - 1
_ESC = 0x1B


def tag_text(tag: int) -> str:
    """``(gggg,eeee) Keyword`` (the keyword only for public elements pydicom knows)."""
    text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    if tag >> 16 & 1 == 0:
        keyword = _keyword(tag)
        if keyword:
            text += f" {keyword}"
    return text


@lru_cache(maxsize=8192)
def _keyword(tag: int) -> str:
    try:
        return str(dictionary_keyword(tag))
    except KeyError:
        return ""


@lru_cache(maxsize=8192)
def dictionary_vrs(tag: int) -> tuple[str, ...]:
    """The VRs the data dictionary allows for a public element (``("US", "SS")`` for "US or SS"); empty if
    unknown. Private elements (odd group) have none, except private creators, which are LO."""
    if tag >> 16 & 1:
        return ("LO",) if 0x10 <= tag & 0xFFFF <= 0xFF else ()
    entry = DicomDictionary.get(tag)
    try:
        text = entry[0] if entry is not None else dictionary_VR(tag)  # repeating groups (60xx overlays...)
    except KeyError:
        return ()
    return tuple(vr for vr in str(text).split(" or ") if vr in VRS)


def implicit_vr(tag: int) -> str:
    """The VR an implicit-VR element is read with: the dictionary's (the first of several), else UN."""
    vrs = dictionary_vrs(tag)
    if not vrs:
        return "UN"
    return "OW" if "OW" in vrs and len(vrs) > 1 else vrs[0]


@dataclass(frozen=True)
class Charset:
    """The Python codecs of a dataset's Specific Character Set; ``unknown`` holds terms not defined by DICOM."""

    codecs: tuple[str, ...] = ()  # empty: the default repertoire
    unknown: tuple[str, ...] = ()

    @classmethod
    def from_value(cls, value: bytes) -> Charset:
        terms = [t.strip(b" \x00").decode("ascii", "replace") for t in value.split(b"\\")]
        if len(terms) > 1 and not terms[0]:
            terms[0] = "ISO_IR 6"
        codecs, unknown = [], []
        for term in terms:
            if term in python_encoding:
                codecs.append(python_encoding[term])
            else:
                unknown.append(term)
        return cls(tuple(codecs), tuple(unknown))

    def check(self, value: bytes) -> str | None:
        """Why ``value`` does not decode in this character set, or ``None``."""
        if value.isascii() and _ESC not in value:
            return None
        if self.unknown:
            return f"non-ASCII text in an unknown Specific Character Set ({', '.join(self.unknown)})"
        if not self.codecs:
            return None  # default repertoire, yet 8-bit bytes: read as Latin-1 (as pydicom does), not refused
        try:
            if _ESC not in value:
                value.decode(self.codecs[0])
                return None
            for fragment in _ESCAPED.findall(value):
                self._decode_fragment(fragment)
        except (UnicodeError, LookupError) as exc:
            return f"text does not decode as {'/'.join(self.codecs)} ({type(exc).__name__})"
        except ValueError as exc:
            return str(exc)
        return None

    def _decode_fragment(self, fragment: bytes) -> None:
        if fragment[0] != _ESC:
            fragment.decode(self.codecs[0])
            return
        size = 4 if fragment.startswith((b"\x1b$(", b"\x1b$)")) else 3
        encoding = CODES_TO_ENCODINGS.get(fragment[:size])
        if encoding is None or (encoding not in self.codecs and encoding != "iso8859"):
            raise ValueError("an ISO 2022 escape sequence the Specific Character Set does not declare")
        (fragment if encoding in handled_encodings else fragment[size:]).decode(encoding)


def _values(vr: str, value: bytes) -> list[bytes]:
    return [value] if vr in SINGLE_VALUED else value.split(b"\\")


def check_string(vr: str, value: bytes, charset: Charset) -> str | None:
    """Why a string value is refused under ``vr``, or ``None``."""
    if vr in CHARSET_VRS:
        return charset.check(value)
    if not value.isascii():
        return f"{vr} value is not ASCII"
    if vr == "IS":
        for item in _values(vr, value):
            text = item.strip(b" ")
            if text and (not _INTEGER.match(text) or not _IS_MIN <= int(text) <= _IS_MAX):
                return f"IS value {_show(text)} is not an integer in -2^31..2^31-1"
    elif vr == "DS":
        for item in _values(vr, value):
            text = item.strip(b" ")
            if text and (not _DECIMAL.match(text) or not math.isfinite(float(text))):
                return f"DS value {_show(text)} is not a decimal number"
    elif vr == "UI":
        for item in _values(vr, value):
            text = item.rstrip(b"\x00").strip(b" ")
            if text and (len(text) > 64 or not _UID.match(text)):
                return "UI value is not a UID (digits and dots, at most 64 characters)"  # UIDs stay out of logs
    return None


def check_value(vr: str, value: bytes, charset: Charset) -> str | None:
    """Why the value of a non-sequence, non-bulk element is refused, or ``None`` (``value`` as read)."""
    size = BINARY_SIZE.get(vr)
    if size is not None:
        if len(value) % size:
            return f"{len(value)} bytes is not a whole number of {vr} values ({size} bytes each)"
        return None
    if vr in STRING_VRS:
        return check_string(vr, value, charset)
    return None


def vr_conflict(tag: int, vr: str, allowed: tuple[str, ...]) -> str | None:
    """Why an explicit VR is refused for a public element whose dictionary VRs are ``allowed``, or ``None``.

    ``None`` also when the VR differs but only within plain text or within binary integers / floats / bulk
    data: the caller then checks the value under the dictionary's VR as well.
    """
    if vr in allowed or vr == "UN":
        return None
    if any(_FAMILY.get(vr) == _FAMILY.get(other) for other in allowed):
        return None
    return f"has VR {vr}; the standard says {' or '.join(allowed)}"


def _show(text: bytes) -> str:
    shown = text[:24].decode("ascii", "backslashreplace")
    return repr(shown + ("..." if len(text) > 24 else ""))
