"""Rasterise a companion page (a matplotlib figure) for the Secondary Capture: Agg draws the shapes and images,
Pillow's FreeType draws the text.

Matplotlib >= 3.11 renders text glyph by glyph from Python (about 60 us a glyph, plus a FreeType layout of every
string twice), which made text ~80% of a page's raster time (~0.2 s for a result page of ~2,100 characters).
Pillow lays out and renders a whole string in C (~5 us a glyph) with the same font files, so
:class:`TextRenderer` measures and draws horizontal plain text with Pillow and hands each string to Agg as one
coverage bitmap (Agg's own ``draw_text_image``: colour, alpha, rotation, clipping and z-order as for matplotlib's
text). Mathtext and strings with a character the font lacks (matplotlib would take a fallback font) go to
matplotlib's own path. Measuring and drawing with the same engine keeps alignment and text boxes (the red
banner) consistent; glyph shapes differ from matplotlib's by hinting only. The PDF companion and
:func:`node.sr.companion.render_png` keep matplotlib's text (vector in the PDF).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont, get_font
from PIL import Image, ImageDraw, ImageFont


@functools.lru_cache(maxsize=64)
def _pil_font(path: str, size_px: float) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size_px, layout_engine=ImageFont.Layout.BASIC)


@functools.lru_cache(maxsize=4096)
def _has_glyph(path: str, char: str) -> bool:
    return bool(get_font(path).get_char_index(ord(char)))


def _covers(path: str, text: str) -> bool:
    """Whether the font file has a glyph for every character of ``text`` (else matplotlib picks a fallback).
    Cached by character, so that no page text outlives its job in a warm worker."""
    return all(_has_glyph(path, c) for c in set(text))


class TextRenderer(RendererAgg):
    """Agg with Pillow text (see the module docstring)."""

    def __init__(self, width: float, height: float, dpi: float) -> None:
        super().__init__(width, height, dpi)  # type: ignore[no-untyped-call]

    def _face(self, text: str, prop: FontProperties) -> ImageFont.FreeTypeFont | None:
        path = findfont(prop)  # matplotlib caches the lookup
        if not _covers(path, text):
            return None
        return _pil_font(path, prop.get_size_in_points() * self.dpi / 72.0)

    def get_text_width_height_descent(self, s: str, prop: FontProperties, ismath: Any) -> tuple[float, float, float]:
        font = None if ismath else self._face(s, prop)
        if font is None:
            return super().get_text_width_height_descent(s, prop, ismath)  # type: ignore[no-any-return,no-untyped-call]
        left, top, right, bottom = font.getbbox(s, anchor="ls")  # ink box around the baseline origin, y down
        return float(right - left), float(bottom - top), float(max(bottom, 0))

    def draw_text(self, gc: Any, x: float, y: float, s: str, prop: FontProperties, angle: float,
                  ismath: Any = False, mtext: Any = None) -> None:
        font = None if ismath else self._face(s, prop)
        if font is None:
            super().draw_text(gc, x, y, s, prop, angle, ismath, mtext)  # type: ignore[no-untyped-call]
            return
        left, top, right, bottom = (int(v) for v in font.getbbox(s, anchor="ls"))
        if right <= left or bottom <= top:
            return  # blank
        mask = Image.new("L", (right - left, bottom - top), 0)
        ImageDraw.Draw(mask).text((-left, -top), s, font=font, fill=255, anchor="ls")
        # (x, y): the baseline's left end, y down; draw_text_image takes the bitmap's bottom-left corner, about
        # which it turns the bitmap by ``angle`` (counter-clockwise): that corner, turned about (x, y)
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        corner_x, corner_y = x + left * cos + bottom * sin, y + bottom * cos - left * sin
        self._renderer.draw_text_image(np.array(mask), round(corner_x), round(corner_y), angle, gc)


class TextCanvas(FigureCanvasAgg):
    """An Agg canvas that draws with :class:`TextRenderer`."""

    _text_renderer: TextRenderer | None = None

    def get_renderer(self) -> RendererAgg:
        w, h = self.get_width_height(physical=True)
        current = self._text_renderer
        if current is None or (current.width, current.height, current.dpi) != (w, h, self.figure.dpi):
            current = self._text_renderer = TextRenderer(w, h, self.figure.dpi)
        return current


def rasterise(fig: Figure) -> npt.NDArray[np.uint8]:
    """The figure's pixels, RGB (rows x columns x 3), drawn by :class:`TextCanvas`."""
    canvas = TextCanvas(fig)
    canvas.draw()  # type: ignore[no-untyped-call]
    rgba = np.asarray(canvas.buffer_rgba())  # type: ignore[no-untyped-call]
    return np.ascontiguousarray(rgba[..., :3], dtype=np.uint8)
