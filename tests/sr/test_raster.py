"""The Secondary Capture's rasteriser (node.sr.raster): Pillow draws the text where matplotlib's Agg would, in the
text's colour, also rotated; what Pillow cannot draw as matplotlib would (mathtext, a character the font lacks)
goes to matplotlib's own path."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont

from node.sr.raster import TextRenderer, rasterise

#: (x, y, text, options) in figure coordinates; each in its own band of rows so that its ink can be found
TEXTS: tuple[tuple[float, float, str, dict[str, Any]], ...] = (
    (0.02, 0.97, "AI-GENERATED - RESEARCH USE ONLY", {"fontsize": 15, "weight": "bold", "va": "top"}),
    (0.50, 0.80, "Predicted subtype: HR+/HER2- (p = 0.63)", {"fontsize": 12, "ha": "center"}),
    (0.98, 0.60, "T1CE gldm LowGrayLevelEmphasis = 0.02519", {"fontsize": 8, "ha": "right", "va": "center"}),
    (0.10, 0.40, "Validation: accuracy 0.82 (95% CI 0.72-0.90), 95 lesions", {"fontsize": 10.5, "va": "baseline"}),
    (0.30, 0.15, "study 1.2.826.0.1.3680043.8.498.1234", {"fontsize": 9, "family": "monospace", "va": "bottom"}),
)
#: a turned label, alone on its figure
TURNED: tuple[tuple[float, float, str, dict[str, Any]], ...] = (
    (0.5, 0.5, "SHAP contribution (log-odds)", {"fontsize": 11, "rotation": 90, "ha": "center", "va": "center"}),
    (0.2, 0.3, "dashed: base value", {"fontsize": 10, "rotation": 30}),
)


def _figure(texts: tuple[tuple[float, float, str, dict[str, Any]], ...] = TEXTS) -> Figure:
    fig = Figure(figsize=(6.4, 4.8), dpi=100, facecolor="white")
    for x, y, text, options in texts:
        fig.text(x, y, text, color="#b03a2e", **options)
    return fig


def _matplotlib(fig: Figure) -> npt.NDArray[np.uint8]:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # type: ignore[no-untyped-call]
    return np.array(np.asarray(canvas.buffer_rgba())[..., :3])  # type: ignore[no-untyped-call]


def _ink_boxes(pixels: npt.NDArray[np.uint8]) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of the non-white pixels in each band of rows that holds ink."""
    ink = pixels.min(axis=2) < 200
    rows = np.flatnonzero(ink.any(axis=1))
    bands = np.split(rows, np.flatnonzero(np.diff(rows) > 3) + 1)
    boxes = []
    for band in bands:
        cols = np.flatnonzero(ink[band].any(axis=0))
        boxes.append((int(band[0]), int(band[-1]), int(cols[0]), int(cols[-1])))
    return boxes


def test_text_lands_where_matplotlib_puts_it_in_its_colour():
    ours, theirs = rasterise(_figure()), _matplotlib(_figure())
    assert ours.shape == theirs.shape == (480, 640, 3) and ours.dtype == np.uint8
    boxes, expected = _ink_boxes(ours), _ink_boxes(theirs)
    assert len(boxes) == len(expected) == len(TEXTS)
    for box, reference in zip(boxes, expected, strict=True):  # alignment (left / centre / right, top / baseline)
        _close(box, reference)
    red = (ours[..., 0] > 150) & (ours[..., 1] < 110) & (ours[..., 2] < 110)
    assert red.sum() > 0.5 * (ours.min(axis=2) < 128).sum()  # the glyphs carry the text's colour
    assert np.array_equal(ours, rasterise(_figure()))  # deterministic


def _ink_box(pixels: npt.NDArray[np.uint8]) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(pixels.min(axis=2) < 200)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def _close(box: tuple[int, int, int, int], reference: tuple[int, int, int, int]) -> None:
    """Within 3 pixels, plus 2% of the text's length along it (Pillow's hinted advances differ a little from
    matplotlib's)."""
    top, bottom, left, right = reference
    slack = 3 + 0.02 * max(bottom - top, right - left)
    assert np.abs(np.subtract(box, reference)).max() <= slack, (box, reference)


def test_turned_text_lands_where_matplotlib_puts_it():
    for text in TURNED:
        ours, theirs = rasterise(_figure((text,))), _matplotlib(_figure((text,)))
        _close(_ink_box(ours), _ink_box(theirs))
        assert (ours.min(axis=2) < 128).sum() > 0.7 * (theirs.min(axis=2) < 128).sum()


def test_pillow_measures_and_draws_plain_horizontal_text_only():
    renderer = TextRenderer(100, 100, 100)
    prop = FontProperties(family="DejaVu Sans", size=12)
    assert renderer._face("Lesion 1", prop) is not None
    assert renderer._face("\u8a3a\u65ad", prop) is None  # CJK: not in DejaVu Sans, matplotlib takes a fallback
    assert findfont(prop).endswith("DejaVuSans.ttf")


@pytest.mark.parametrize(("text", "options"), [(r"$\alpha = 0.05$", {}), ("\u8a3a\u65ad", {})])
@pytest.mark.filterwarnings("ignore:Glyph .* missing from font")
def test_what_pillow_does_not_draw_is_drawn_by_matplotlib(text: str, options: dict[str, Any]):
    fig = Figure(figsize=(3, 3), dpi=100, facecolor="white")
    fig.text(0.5, 0.5, text, fontsize=14, ha="center", va="center", **options)
    ours = rasterise(fig)
    assert (ours.min(axis=2) < 128).sum() > 20  # something was drawn
    fig2 = Figure(figsize=(3, 3), dpi=100, facecolor="white")
    fig2.text(0.5, 0.5, text, fontsize=14, ha="center", va="center", **options)
    assert np.array_equal(ours, _matplotlib(fig2))  # by matplotlib itself: the same pixels
