"""The QC key image (node.sr.keyimage, node.sr.qcpage) on constructed views: validation, outlines, pages, the
pixels the outlines change, and the companion SC/PDF that carry it (validated like every companion)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest

from node.sr.companion import BANNER, build_companion_pdf, build_companion_sc
from node.sr.content import ReportContent
from node.sr.keyimage import QcView, outline
from node.sr.qcpage import COLOURS, VIEWS_PER_PAGE, qc_pages, render_qc_page, rgb_view
from node.sr.report import write_instance
from node.sr.validate import validate_object


def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> npt.NDArray[np.bool_]:
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return np.asarray((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2)


def view(kind: str = "lesion", failed: bool = False, lesion_radius: float = 9.0) -> QcView:
    """A 120 x 100 slice: a bright 'head' disc, a lesion disc on the patient's left (image right), a reference disc."""
    shape = (120, 100)
    image = np.where(_disc(shape, (60, 50), 45), 100.0, 0.0).astype(np.float32)
    image += np.linspace(0, 10, shape[1], dtype=np.float32)[None, :]
    lesion = _disc(shape, (40, 70), lesion_radius)
    reference = _disc(shape, (70, 50), 6)
    regions = (("rejected reference" if failed else "reference", reference),) if kind == "reference" else (
        ("lesion", lesion), ("other lesion", _disc(shape, (80, 25), 5)))
    return QcView(title=f"{kind} view", image=image, regions=regions, pixel_spacing_mm=(1.0, 1.0),
                  window=(0.0, 110.0), kind=kind, slice_index=12, slice_position_mm=-31.0, failed=failed,
                  segment_number=1 if kind == "lesion" else None, note="test")


def test_views_are_validated() -> None:
    good = view()
    with pytest.raises(ValueError, match="2-D"):
        dataclasses.replace(good, image=np.zeros((3, 3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="role"):
        dataclasses.replace(good, regions=(("tumour", good.regions[0][1]),))
    with pytest.raises(ValueError, match="shape"):
        dataclasses.replace(good, regions=(("lesion", np.zeros((5, 5), dtype=bool)),))
    with pytest.raises(ValueError, match="window"):
        dataclasses.replace(good, window=(5.0, 5.0))
    with pytest.raises(ValueError, match="spacing"):
        dataclasses.replace(good, pixel_spacing_mm=(0.0, 1.0))


def test_the_outline_is_the_region_border() -> None:
    mask = np.zeros((7, 8), dtype=bool)
    mask[1:6, 2:7] = True
    border = outline(mask)
    assert border.sum() == 16 and not border[2:5, 3:6].any() and (border <= mask).all()
    edge = np.ones((3, 3), dtype=bool)  # the image edge counts as outside
    assert outline(edge).sum() == 8


def test_views_are_split_into_pages() -> None:
    views = [view()] * (VIEWS_PER_PAGE + 1)
    pages = qc_pages(views)
    assert [len(p) for p in pages] == [VIEWS_PER_PAGE, 1] and qc_pages([]) == []
    with pytest.raises(ValueError, match="views"):
        render_qc_page(views, banner=BANNER, header="", footer="")


def _page(views: list[QcView]) -> npt.NDArray[np.uint8]:
    fig = render_qc_page(views, banner=BANNER, header="header", footer="footer")
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())  # type: ignore[attr-defined]
    return np.array(rgba[..., :3])


def _near(pixels: npt.NDArray[np.uint8], colour: str) -> npt.NDArray[np.bool_]:
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return np.asarray(np.abs(pixels.astype(int) - target).max(axis=2) <= 30)


def test_the_outlines_change_the_pixels_in_their_colours_and_rendering_is_deterministic() -> None:
    views = [view("reference"), view("lesion")]
    bare = [dataclasses.replace(v, regions=()) for v in views]
    drawn, plain = _page(views), _page(bare)
    assert np.array_equal(drawn, _page(views))  # deterministic
    legend = slice(int(0.93 * 960), 960)  # the legend's colour keys are not part of the views
    for colour in (COLOURS["lesion"], COLOURS["reference"], COLOURS["other lesion"]):
        assert _near(drawn[: legend.start], colour).sum() > 50, colour
        assert not _near(plain, colour).any(), colour
    # the burnt-in image: exactly the border pixels carry the role colour
    rgb = rgb_view(views[1])
    yellow = np.all(np.isclose(rgb, [1.0, 212 / 255, 0.0]), axis=2)
    assert np.array_equal(yellow, outline(views[1].regions[0][1]) & ~outline(views[1].regions[1][1]))


def test_a_failed_reference_is_drawn_in_magenta_and_a_small_lesion_gets_a_ring() -> None:
    drawn = _page([view("reference", failed=True), view("lesion", lesion_radius=3.0)])
    views_area = drawn[: int(0.93 * 960)]
    assert _near(views_area, COLOURS["rejected reference"]).sum() > 30
    assert not _near(views_area, COLOURS["reference"]).any()
    # a lesion under 12 pixels across gets a dashed ring and a magnified inset: more yellow than a larger lesion
    small = _near(_page([view("lesion", lesion_radius=3.0)]), COLOURS["lesion"]).sum()
    larger = _near(_page([view("lesion", lesion_radius=6.5)]), COLOURS["lesion"]).sum()
    assert small > 2 * larger


def test_the_companion_carries_the_qc_page_after_the_result_pages(content: ReportContent, tmp_path: Path) -> None:
    with_views = dataclasses.replace(content, qc_views=(view("reference"), view("lesion")))
    images = build_companion_sc(with_views)
    assert len(images) == len(content.lesions) + 1
    assert [int(ds.InstanceNumber) for ds in images] == list(range(1, len(images) + 1))
    path = write_instance(images[-1], tmp_path)
    assert validate_object(path) == []
    pixels = pydicom.dcmread(path).pixel_array
    assert _near(pixels, COLOURS["lesion"]).sum() > 50 and _near(pixels, COLOURS["reference"]).sum() > 50
    assert len({ds.SeriesInstanceUID for ds in images}) == 1
    assert len({ds.SOPInstanceUID for ds in images}) == len(images)
    without = build_companion_pdf(content).EncapsulatedDocument
    pdf = build_companion_pdf(with_views)
    pdf_path = write_instance(pdf, tmp_path)
    assert validate_object(pdf_path) == []
    assert _pages(bytes(pdf.EncapsulatedDocument)) == _pages(bytes(without)) + 1 > 1


def _pages(pdf: bytes) -> int:
    return pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") + pdf.count(b"/Type/Page\n")
