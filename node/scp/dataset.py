"""Walk a received dataset element by element, checking its structure and every value, within bounded cost.

One pass over the bytes as received (or as inflated), recursing into sequences and items: every tag in
ascending order and outside groups 0000/0002, every explicit VR a real VR and one the data dictionary allows
for a public element (:func:`node.scp.vr.vr_conflict`), every defined length inside its parent, every value
converting under its VR (:func:`node.scp.vr.check_value`), sequences nested at most :data:`MAX_DEPTH` deep,
no element but Pixel Data longer than ``max_element_bytes``, encapsulated Pixel Data only in an encapsulated
transfer syntax. Bulk values (OB, OW, OD, OF, OL, OV, UN and the pixel data) are skipped, not read. The values of
a few top-level elements the listener needs afterwards are kept in :class:`Walked`.

**Repeated layouts.** The instances of a series repeat nearly all of their header: an MR slice differs from the one
before in five of ~70 top-level elements (SOP Instance UID, Instance Number, Image Position, Slice Location, Largest
Pixel Value). Each thread (the listener walks on the association's thread) keeps the :class:`Layout` of the last
dataset it walked whole: its bytes and top-level element boundaries. A later walk at a top-level element boundary
whose next bytes repeat a run of that layout's elements byte for byte, in the same state (same transfer syntax and
limits, the same character set in effect, its tag above the last one read), skips the run: the walk over those bytes
would do exactly what it did before and succeed. Only whole elements within the bytes held in memory are skipped,
never Pixel Data; the kept values and the character set of a skipped run are taken from the layout. A layout that
stops matching (a new series with another layout) is replaced by the next whole walk.

Size: one walker with its layout memo; the two belong together (the memo is the walk's own state).
"""

from __future__ import annotations

import struct
import threading
from bisect import bisect_right
from dataclasses import dataclass, field

from node.errors import CorruptInstanceError
from node.scp.source import HeadReader, LimitExceededError, Reader
from node.scp.vr import (
    BINARY_SIZE,
    LONG_VRS,
    STRING_VRS,
    VRS,
    Charset,
    check_string,
    check_value,
    dictionary_vrs,
    implicit_vr,
    tag_text,
    vr_conflict,
)

MAX_DEPTH = 32
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
SPECIFIC_CHARACTER_SET = 0x00080005
PIXEL_DATA = 0x7FE00010
PIXEL_TAGS = frozenset({PIXEL_DATA, 0x7FE00008, 0x7FE00009})  # Pixel Data, Float and Double Float Pixel Data
_ESCAPE = 0x1B

#: Top-level elements whose raw values the listener reads after the walk (header, pixel-data check).
KEPT = frozenset({
    0x00080016, 0x00080018, 0x00080060, 0x0008103E, 0x0020000D, 0x0020000E, 0x00200011, 0x00200052,
    0x00280002, 0x00280008, 0x00280010, 0x00280011, 0x00280100,
})


#: The explicit VR bytes of every VR, decoded once.
_VR_NAMES = {name.encode("ascii"): name for name in VRS}
#: Text VRs whose check depends on the value alone and is more than "ASCII" (a number or a UID): values found
#: valid are remembered (most repeat from one instance of a series to the next), at most _REMEMBERED of them.
_REMEMBERED_VRS = frozenset({"IS", "DS", "UI"})
_REMEMBERED = 1 << 16
_valid: set[tuple[str, bytes]] = set()


def _remember(vr: str, value: bytes) -> None:
    """Note a value :func:`check_value` accepted (numbers and UIDs only: their check ignores the character set)."""
    if vr in _REMEMBERED_VRS:
        if len(_valid) >= _REMEMBERED:
            _valid.clear()
        _valid.add((vr, value))


#: Normally walked top-level elements after which a layout in use counts as stale (replaced by the next whole walk).
STALE_AFTER = 8
#: Comparisons with a layout that find nothing to skip, after which a walk stops comparing (and the layout is
#: dropped): a dataset that repeats nothing costs at most this many searches more than a whole walk.
MAX_MISSES = 16


@dataclass(frozen=True, eq=False)
class Layout:
    """The top-level elements of a dataset walked whole and found valid (see the module docstring).

    ``starts[i]`` is where element ``i`` starts in ``data`` (``starts[n]``: where the last one ends), ``tags[i]`` its
    tag, ``heads[i]`` its first 8 bytes, ``run_end[i]`` the first element from ``i`` on that may not be skipped,
    ``charsets[i]`` the character set in effect before element ``i`` (``charsets[n]``: at the end)."""

    key: tuple[bool, bool, bool, int]  # explicit, little, encapsulated, max_element_bytes
    data: bytes
    starts: list[int]
    tags: list[int]
    heads: list[bytes]
    run_end: list[int]
    charsets: list[Charset]
    charset_index: int  # the element (0008,0005) (-1: none)
    kept: list[tuple[int, int, tuple[str, bytes]]]  # (element index, tag, (VR, raw value)) of KEPT elements


_layouts = threading.local()  # .layout: the Layout of this thread's last whole walk


def forget_layout() -> None:
    """Drop this thread's layout (the next walk is a whole one)."""
    _layouts.layout = None


@dataclass
class Walked:
    """What the walk found at the top level."""

    values: dict[int, tuple[str, bytes]] = field(default_factory=dict)  # tag -> (VR, raw value) of KEPT tags
    charset: Charset = field(default_factory=Charset)
    pixel_tag: int | None = None
    pixel_length: int | None = None  # None: encapsulated
    fragments: int = 0  # encapsulated pixel data: fragments after the basic offset table


class Walker:
    """Check one dataset from ``reader``; ``explicit`` / ``little`` as the negotiated transfer syntax says."""

    def __init__(self, reader: Reader, *, explicit: bool, little: bool, encapsulated: bool,
                 max_element_bytes: int, remember: bool = True) -> None:
        self._read = reader.read
        self._skip = reader.skip
        self._reader = reader
        self._explicit = explicit
        self._encapsulated = encapsulated
        self._max_element = max_element_bytes
        order = "<" if little else ">"
        self._tag = struct.Struct(order + "HH").unpack
        self._u16 = struct.Struct(order + "H").unpack
        self._u32 = struct.Struct(order + "L").unpack
        self._item = struct.Struct(order + "HHL").unpack
        self._explicit_head = struct.Struct(order + "HH2sH").unpack
        self._explicit_from = struct.Struct(order + "HH2sH").unpack_from
        self._implicit_from = struct.Struct(order + "HHL").unpack_from
        # the bytes a HeadReader holds in memory: element headers and values inside them are taken from here
        # directly (the reader's own read() does the same, one call per read more)
        self._buffer = reader.head if isinstance(reader, HeadReader) else b""
        self._base = reader.offset if isinstance(reader, HeadReader) else 0
        self.walked = Walked()
        # the layout memo: only for datasets held in memory (a HeadReader), see the module docstring
        self._key = (explicit, little, encapsulated, max_element_bytes)
        self._remember = remember and bool(self._buffer)
        layout = getattr(_layouts, "layout", None) if self._remember else None
        self._layout: Layout | None = layout if layout is not None and layout.key == self._key else None
        self.walked_normally = 0  # top-level elements walked while a layout was in use
        self.misses = 0  # comparisons with the layout that found no repeat
        # a whole walk records its top-level elements: (start, tag, character set before it)
        self._record: list[tuple[int, int, Charset]] | None = [] if self._remember and self._layout is None else None

    def walk(self) -> Walked:
        charset = self._dataset(None, False, 0, self._explicit, Charset(), top=True)
        if self._record is not None:
            _layouts.layout = self._new_layout(charset)
        elif self._layout is not None and self.walked_normally > max(STALE_AFTER, len(self._layout.tags) // 4):
            _layouts.layout = None  # this series' layout differs: the next walk records a new one
        return self.walked

    # -- the layout memo -------------------------------------------------------------------------------------

    def _new_layout(self, final: Charset) -> Layout | None:
        """The layout of the dataset just walked whole (``self._record``)."""
        record = self._record or []
        if not record:
            return None
        end = self._reader.pos - self._base
        starts = [start for start, _, _ in record] + [end]
        tags = [tag for _, tag, _ in record]
        charsets = [charset for _, _, charset in record] + [final]
        count = len(tags)
        in_memory = min(len(self._buffer), end)
        run_end = [count] * (count + 1)
        for i in range(count - 1, -1, -1):
            skippable = tags[i] not in PIXEL_TAGS and starts[i + 1] <= in_memory
            run_end[i] = run_end[i + 1] if skippable else i
        data = bytes(self._buffer[:max((starts[i + 1] for i in range(count) if run_end[i] > i), default=0)])
        heads = [data[starts[i]:starts[i] + 8] if run_end[i] > i else b"" for i in range(count)]
        index = {tag: i for i, tag in enumerate(tags)}
        kept = [(index[tag], tag, value) for tag, value in self.walked.values.items() if tag in index]
        return Layout(self._key, data, starts, tags, heads, run_end, charsets,
                      index.get(SPECIFIC_CHARACTER_SET, -1), kept)

    def _skip_known(self, layout: Layout, j: int, at: int, limit: int,
                    charset: Charset) -> tuple[int, int] | None:
        """At top-level offset ``at``, where ``layout``'s element ``j`` would come next: the elements that repeat the
        layout's from ``j`` on, as (bytes, index of the first one not skipped); ``None`` if not even ``j`` does."""
        stop = layout.run_end[j]
        if stop == j or not self._buffer.startswith(layout.heads[j], at):
            return None
        if layout.charsets[j] is not charset and layout.charsets[j] != charset:
            return None
        buffer, data, starts = self._buffer, layout.data, layout.starts
        begin = starts[j]
        size = starts[stop] - begin
        if not (at + size <= limit and buffer[at:at + size] == data[begin:begin + size]):
            low, high = j, stop  # elements j..low-1 repeat, j..high-1 do not
            while high - low > 1:
                middle = (low + high) // 2
                size = starts[middle] - begin
                if at + size <= limit and buffer[at:at + size] == data[begin:begin + size]:
                    low = middle
                else:
                    high = middle
            if low == j:
                return None
            stop = low
        return starts[stop] - begin, stop

    @staticmethod
    def _volatile(layout: Layout, j: int) -> None:
        """Element ``j`` of ``layout`` differed (it was walked): later walks do not try to skip it, and the runs
        before it end there (one comparison per run, not a search)."""
        run_end = layout.run_end
        run_end[j] = j
        i = j - 1
        while i >= 0 and run_end[i] > j:
            run_end[i] = j
            i -= 1

    # -- datasets and sequences ------------------------------------------------------------------------------

    def _dataset(self, end: int | None, delimited: bool, depth: int, explicit: bool, charset: Charset,
                 top: bool = False) -> Charset:
        """Elements until ``end`` (defined-length item), an item delimiter (``delimited``) or the end (top); returns
        the character set in effect at the end."""
        reader = self._reader
        buffer, base, in_memory = self._buffer, self._base, len(self._buffer)
        explicit_from, implicit_from = self._explicit_from, self._implicit_from
        stop = reader.end if isinstance(reader, HeadReader) else None
        last = -1
        layout = self._layout if top else None
        record = self._record if top else None
        limit = min(in_memory, stop - base) if stop is not None else in_memory
        while True:
            if end is not None:
                if reader.pos == end:
                    return charset
                if reader.pos > end:
                    raise CorruptInstanceError(f"an element runs {reader.pos - end} byte(s) past its item")
            elif top and (reader.pos >= stop if stop is not None else reader.at_end()):
                return charset
            known = -1  # the layout's element that would come here, if one may
            if layout is not None:
                first = bisect_right(layout.tags, last)
                skipped = self._skip_known(layout, first, reader.pos - base, limit, charset) if first < len(
                    layout.tags) else None
                if skipped is not None:
                    length_skipped, after = skipped
                    reader.pos += length_skipped
                    last = layout.tags[after - 1]
                    if first <= layout.charset_index < after:
                        charset = self.walked.charset = layout.charsets[after]
                    for index, kept_tag, kept_value in layout.kept:
                        if first <= index < after:
                            self.walked.values[kept_tag] = kept_value
                    continue
                self.walked_normally += 1
                known = first
                if first < len(layout.tags) and layout.run_end[first] != first:
                    self.misses += 1  # compared in vain (a known changing element costs nothing)
                    if self.misses >= MAX_MISSES:  # not this layout: no more comparisons in this walk
                        layout = None
                        _layouts.layout = None
            # the tag, then the VR and a 16-bit length (explicit VR) or a 32-bit length (implicit VR, delimiters)
            at = reader.pos - base
            if at + 8 <= in_memory:
                reader.pos += 8
                if explicit:
                    group, element, vr_bytes, length = explicit_from(buffer, at)
                else:
                    group, element, length = implicit_from(buffer, at)
            elif explicit:
                group, element, vr_bytes, length = self._explicit_head(self._read(8))
            else:
                group, element, length = self._item(self._read(8))
            tag = group << 16 | element
            if record is not None:
                record.append((at, tag, charset))
            elif (layout is not None and 0 <= known < len(layout.tags) and layout.tags[known] == tag
                  and layout.run_end[known] != known):
                self._volatile(layout, known)
            if group == 0xFFFE:
                if tag == ITEM_END and delimited:
                    return charset
                raise CorruptInstanceError(f"unexpected item tag {tag_text(tag)} inside a dataset")
            if tag <= last:
                raise CorruptInstanceError(
                    f"element {tag_text(tag)} follows {tag_text(last)}: tags must ascend, each once"
                )
            last = tag
            if group in (0x0000, 0x0002):
                raise CorruptInstanceError(f"command or file meta element {tag_text(tag)} inside the dataset")
            if explicit:
                vr = _VR_NAMES.get(vr_bytes) or vr_bytes.decode("ascii", "replace")
                if vr not in VRS:
                    raise CorruptInstanceError(f"element {tag_text(tag)} has no valid VR ({vr!r})")
                if vr in LONG_VRS:  # two reserved bytes, then a 32-bit length
                    length = self._u32(self._read(4))[0]
                    plain = False
                elif group & 1 or not element:  # private or group length: no dictionary VR to agree with
                    plain = True
                else:
                    allowed = dictionary_vrs(tag)
                    plain = (not allowed or vr in allowed) and tag not in PIXEL_TAGS
            else:
                vr = implicit_vr(tag)
                plain = length != UNDEFINED and vr != "SQ" and tag not in PIXEL_TAGS
            if plain and length <= self._max_element and tag != SPECIFIC_CHARACTER_SET:
                # the commonest element: no sequence, no pixel data, a VR the dictionary agrees with (a kept one
                # too: its value is noted); checked here as _element would, without the call
                keep = top and tag in KEPT
                if vr in STRING_VRS or keep:
                    at = reader.pos - base
                    if at + length <= in_memory:
                        value = buffer[at:at + length]
                        reader.pos += length
                    else:
                        value = self._read(length)
                    # passes check_value without the full check: ASCII text (no ISO 2022 escape) in a VR that asks
                    # nothing more, or a number / UID found valid before; else the full check decides (a kept
                    # binary value: its length)
                    if vr in _REMEMBERED_VRS:
                        known = (vr, value) in _valid
                    else:
                        known = vr in STRING_VRS and value.isascii() and _ESCAPE not in value
                    if not known:
                        reason = check_value(vr, value, charset)
                        if reason is not None:
                            raise CorruptInstanceError(f"element {tag_text(tag)}: {reason}")
                        _remember(vr, value)
                    if keep:
                        self.walked.values[tag] = (vr, value)
                else:
                    size = BINARY_SIZE.get(vr)
                    if size and length % size:
                        raise CorruptInstanceError(
                            f"element {tag_text(tag)}: {length} bytes is not a whole number of {vr} values"
                        )
                    self._skip(length)
                continue
            charset = self._element(tag, vr, length, depth, explicit, charset, top)

    def _items(self, tag: int, length: int, depth: int, explicit: bool, charset: Charset) -> None:
        """The items of a sequence (defined or undefined ``length``)."""
        if depth >= MAX_DEPTH:
            raise CorruptInstanceError(f"sequence {tag_text(tag)} is nested deeper than {MAX_DEPTH} levels")
        reader = self._reader
        end = None if length == UNDEFINED else reader.pos + length
        while end is None or reader.pos < end:
            group, element, item_length = self._item(self._read(8))
            item_tag = group << 16 | element
            if item_tag == SEQUENCE_END and end is None:
                return
            if item_tag != ITEM:
                raise CorruptInstanceError(f"sequence {tag_text(tag)} holds {tag_text(item_tag)} instead of an item")
            if item_length == UNDEFINED:
                self._dataset(None, True, depth + 1, explicit, charset)
            else:
                self._dataset(reader.pos + item_length, False, depth + 1, explicit, charset)
        if reader.pos != end:
            raise CorruptInstanceError(f"the items of sequence {tag_text(tag)} overrun its length")

    def _fragments(self, tag: int) -> int:
        """Encapsulated pixel data: items of defined length until the sequence delimiter; the fragment count."""
        items = 0
        while True:
            group, element, length = self._item(self._read(8))
            item_tag = group << 16 | element
            if item_tag == SEQUENCE_END:
                return max(items - 1, 0)  # the first item is the basic offset table
            if item_tag != ITEM or length == UNDEFINED:
                raise CorruptInstanceError(f"encapsulated {tag_text(tag)} holds {tag_text(item_tag)}, not a fragment")
            self._skip(length)
            items += 1

    # -- one element -----------------------------------------------------------------------------------------

    def _element(self, tag: int, vr: str, length: int, depth: int, explicit: bool, charset: Charset,
                 top: bool) -> Charset:
        """Check one element whose header was read; returns the dataset's (possibly new) character set."""
        allowed = dictionary_vrs(tag) if explicit and tag & 0xFFFF and not tag >> 16 & 1 else ()
        if allowed:
            conflict = vr_conflict(tag, vr, allowed)
            if conflict:
                raise CorruptInstanceError(f"element {tag_text(tag)} {conflict}")
        as_vr = allowed[0] if vr == "UN" and allowed else vr  # UN of a known element: checked as its own VR
        if length == UNDEFINED:
            if as_vr == "SQ" or vr == "UN":  # UN of undefined length is an implicit VR LE sequence (PS3.5 6.2.2)
                self._items(tag, length, depth, explicit and vr == "SQ", charset)
            elif tag == PIXEL_DATA and vr in ("OB", "OW") and self._encapsulated:
                fragments = self._fragments(tag)
                if depth == 0:
                    self.walked.pixel_tag, self.walked.pixel_length, self.walked.fragments = tag, None, fragments
            else:
                raise CorruptInstanceError(f"element {tag_text(tag)} ({vr}) has an undefined length")
            return charset
        if as_vr == "SQ":
            self._items(tag, length, depth, explicit and vr == "SQ", charset)
            return charset
        if tag in PIXEL_TAGS:
            if depth == 0:
                if tag == PIXEL_DATA and self._encapsulated:
                    raise CorruptInstanceError("Pixel Data is not encapsulated, yet the transfer syntax compresses")
                self.walked.pixel_tag, self.walked.pixel_length = tag, length
            self._skip(length)
            return charset
        if length > self._max_element:
            raise LimitExceededError(
                f"element {tag_text(tag)} has {length} bytes, more than max_element_bytes ({self._max_element})"
            )
        keep = top and tag in KEPT
        if as_vr not in STRING_VRS and not keep:  # binary and bulk values: their length is all there is to check
            size = BINARY_SIZE.get(as_vr)
            if size and length % size:
                raise CorruptInstanceError(
                    f"element {tag_text(tag)}: {length} bytes is not a whole number of {as_vr} values"
                )
            self._skip(length)
            return charset
        value = self._read(length)
        if tag == SPECIFIC_CHARACTER_SET:
            charset = Charset.from_value(value)
            if top:
                self.walked.charset = charset
        reason = check_value(as_vr, value, charset)
        if reason is None and allowed and as_vr not in allowed and allowed[0] in STRING_VRS:
            reason = check_string(allowed[0], value, charset)  # another text VR: must also be a valid dictionary VR
        if reason is not None:
            raise CorruptInstanceError(f"element {tag_text(tag)}: {reason}")
        if keep:
            self.walked.values[tag] = (as_vr, value)
        return charset
