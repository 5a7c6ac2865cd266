"""The QC key-image page of the companion (issue 11, item 2): T1CE slices through each lesion and through the
intensity reference, with the lesion outline and the reference ROI outline drawn, so that a reader sees at a
glance whether the reference and the segmentation are where they should be.

:func:`render_qc_page` draws up to :data:`VIEWS_PER_PAGE` :class:`~node.sr.keyimage.QcView` on one companion
page; :func:`qc_pages` splits the views into pages.

Display rules: axial slices in radiological orientation (patient right on the image left, labelled R and L,
anterior at the top), grey scale windowed to the view's ``window`` (1st-99.5th percentile of the brain), each
region's border drawn pixel by pixel in its role's colour (legend at the bottom), a 20 mm scale bar, and for a
lesion smaller than 12 pixels across a dashed ring and a magnified inset, so that it is found and checked at a
glance. A reference that failed its
QC is titled in red and its rejected region drawn in magenta. Rendering is deterministic (no randomness, fixed
figure size and fonts).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle

from node.sr.keyimage import ROLES, QcView

#: outline colours by role (distinct on grey and for the common colour-vision deficiencies: yellow / orange-red /
#: cyan / magenta)
COLOURS: dict[str, str] = {
    "lesion": "#ffd400",
    "other lesion": "#ff4500",
    "reference": "#00e5ff",
    "rejected reference": "#ff00ff",
}
LEGEND: dict[str, str] = {
    "lesion": "lesion of this view (SEG segment)",
    "other lesion": "other lesion on the same slice",
    "reference": "intensity reference ROI (pons), used",
    "rejected reference": "reference region found but FAILED QC, not used",
}
VIEWS_PER_PAGE = 6
SMALL_LESION_PIXELS = 12
SCALE_BAR_MM = 20.0
#: side (pixels) of the magnified inset drawn for a small lesion
ZOOM_PIXELS = 32
TITLE_WIDTH = 54  # characters per title line
TITLE = "QC key image - are the reference region and the lesion outlines where they should be?"


def qc_pages(views: Sequence[QcView]) -> list[tuple[QcView, ...]]:
    """The views in pages of at most :data:`VIEWS_PER_PAGE` (none without views)."""
    return [tuple(views[i : i + VIEWS_PER_PAGE]) for i in range(0, len(views), VIEWS_PER_PAGE)]


def rgb_view(view: QcView) -> npt.NDArray[np.float64]:
    """The windowed grey image with the outlines burnt in, RGB in [0, 1] (what :func:`draw_view` shows)."""
    lo, hi = view.window
    grey = np.clip((view.image.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for role, border in view.outlines:  # later roles on top: the lesion of the view is drawn first, so others
        rgb[border] = to_rgb(COLOURS[role])  # never hide the reference
    return rgb


def draw_view(ax: Any, view: QcView) -> None:
    """One view on ``ax``: image, outlines, R/L labels, small-lesion ring, scale bar, title and note."""
    rows, cols = view.image.shape
    ax.imshow(rgb_view(view), interpolation="nearest", aspect=view.pixel_spacing_mm[0] / view.pixel_spacing_mm[1])
    ax.set_xticks([])
    ax.set_yticks([])
    for side, x, align in (("R", 0.02, "left"), ("L", 0.98, "right")):
        ax.text(x, 0.5, side, transform=ax.transAxes, ha=align, va="center", color="white", fontsize=13,
                weight="bold")
    for role, mask in view.regions:
        if role == "lesion" and mask.any():
            r, c = np.nonzero(mask)
            if max(r.max() - r.min(), c.max() - c.min()) + 1 < SMALL_LESION_PIXELS:
                centre = (float(c.mean()), float(r.mean()))
                ax.add_patch(Circle(centre, radius=SMALL_LESION_PIXELS, fill=False, edgecolor=COLOURS[role],
                                    linewidth=1.2, linestyle="--"))
                _zoom(ax, view, centre)
    bar = SCALE_BAR_MM / view.pixel_spacing_mm[1]
    x0, y0 = cols * 0.96 - bar, rows * 0.95
    ax.plot([x0, x0 + bar], [y0, y0], color="white", linewidth=2)
    ax.text(x0 + bar / 2, y0 - rows * 0.015, f"{SCALE_BAR_MM:.0f} mm", color="white", ha="center", va="bottom",
            fontsize=8)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    colour = "#b03a2e" if view.failed else "black"
    lines = [*textwrap.wrap(view.title, TITLE_WIDTH), f"axial, z = {view.slice_position_mm:+.0f} mm",
             *textwrap.wrap(view.note, TITLE_WIDTH, max_lines=3, placeholder=" ...")]
    ax.set_title("\n".join(lines), fontsize=9, color=colour, weight="bold" if view.failed else "normal")


def _zoom(ax: Any, view: QcView, centre: tuple[float, float]) -> None:
    """A magnified inset (top left) of the :data:`ZOOM_PIXELS` square around a small lesion, outlines included."""
    rows, cols = view.image.shape
    half = ZOOM_PIXELS / 2
    x0 = min(max(centre[0] - half, -0.5), cols - 0.5 - ZOOM_PIXELS)
    y0 = min(max(centre[1] - half, -0.5), rows - 0.5 - ZOOM_PIXELS)
    inset = ax.inset_axes((0.0, 0.62, 0.38, 0.38))
    inset.imshow(rgb_view(view), interpolation="nearest",
                 aspect=view.pixel_spacing_mm[0] / view.pixel_spacing_mm[1])
    inset.set_xlim(x0, x0 + ZOOM_PIXELS)
    inset.set_ylim(y0 + ZOOM_PIXELS, y0)
    inset.set_xticks([])
    inset.set_yticks([])
    for spine in inset.spines.values():
        spine.set_edgecolor(COLOURS["lesion"])
    inset.text(0.04, 0.04, f"x{min(rows, cols) / ZOOM_PIXELS:.0f}", transform=inset.transAxes, color="white",
               fontsize=8, va="bottom")


def render_qc_page(views: Sequence[QcView], *, banner: str, header: str, footer: str, page: int = 1,
                   pages: int = 1, inches: tuple[float, float] = (12.8, 9.6), dpi: int = 100) -> Figure:
    """One QC key-image page (a matplotlib figure) of up to :data:`VIEWS_PER_PAGE` views."""
    if not views or len(views) > VIEWS_PER_PAGE:
        raise ValueError(f"a QC page holds 1 to {VIEWS_PER_PAGE} views, got {len(views)}")
    fig = plt.figure(figsize=inches, dpi=dpi, facecolor="white")
    fig.text(0.5, 0.975, banner, ha="center", va="top", fontsize=15, color="white", weight="bold",
             bbox={"facecolor": "#b03a2e", "edgecolor": "none", "pad": 6})
    fig.text(0.02, 0.925, header, fontsize=10, color="#444444", va="top")
    suffix = f"  (page {page}/{pages})" if pages > 1 else ""
    fig.text(0.02, 0.895, TITLE + suffix, fontsize=14, weight="bold", va="top")
    ncols = 3
    one_row = len(views) <= ncols
    for i, view in enumerate(views):
        r, c = divmod(i, ncols)
        box = (0.02 + c * 0.33, 0.12, 0.30, 0.68) if one_row else (0.02 + c * 0.33, 0.47 - r * 0.385, 0.30, 0.33)
        ax = fig.add_axes(box)
        draw_view(ax, view)
    roles = [role for role in ROLES if any(role == r for v in views for r, _ in v.regions)]
    handles = [Line2D([0], [0], color=COLOURS[role], linewidth=4, label=LEGEND[role]) for role in roles]
    if handles:
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.035), ncol=len(handles),
                   fontsize=10, frameon=False)
    fig.text(0.02, 0.015, footer, fontsize=9, color="#444444")
    return fig
