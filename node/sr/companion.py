"""Human-readable companions of the SR (docs/sr-design.md §4): a Secondary Capture image per lesion and/or one
Encapsulated PDF, each in its own series, with the result text and a SHAP waterfall plot.

They duplicate the SR for people and viewers that cannot render TID 1500; the SR stays the source of truth.
After the result pages comes the QC key image (:mod:`node.sr.qcpage`, from ``ReportContent.qc_views``): the T1CE
slices through the reference region and every lesion with their outlines.
Every page carries "AI-generated - research use only, not for diagnosis - not verified" in its pixels / PDF and
in ``SeriesDescription``. No patient name or ID is drawn into the pixels (the DICOM header carries identity).
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import textwrap
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import highdicom as hd
import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from node.sr import codes as C
from node.sr.content import LesionResult, ReportContent, SubtypeModel
from node.sr.deep import deep_line
from node.sr.identity import fingerprint, result_identity, superseded
from node.sr.not_assessed_page import not_assessed_lines, render_not_assessed_page
from node.sr.patient import companion_lines, statement
from node.sr.qcpage import qc_pages, render_qc_page
from node.sr.raster import rasterise
from node.sr.report import PROCESSING_EQUIPMENT_DESCRIPTION, lesion_summary, report_summary, write_instance
from node.sr.sites import site_line
from node.sr.trust import lesion_lines, lesion_text, provenance_lines, provenance_texts

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
SC_SERIES_NUMBER = 901
PDF_SERIES_NUMBER = 902
SC_SERIES_DESCRIPTION = "AI BC subtype result image (research use)"
PDF_SERIES_DESCRIPTION = "AI BC subtype result report (research use)"
DOCUMENT_TITLE = "AI breast-cancer subtype of brain metastasis (research use)"
BANNER = "AI-GENERATED  -  RESEARCH USE ONLY, NOT FOR DIAGNOSIS  -  NOT VERIFIED BY A PHYSICIAN"
PAGE_INCHES = (12.8, 9.6)  # 1280 x 960 pixels at 100 dpi
DPI = 100

_PATIENT_STUDY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription",
)  # fmt: skip


class Companion(StrEnum):
    SECONDARY_CAPTURE = "sc"
    PDF = "pdf"


def _waterfall(ax: Any, lesion: LesionResult) -> None:
    """Horizontal SHAP waterfall: base value, then each top contribution, largest at the top."""
    e = lesion.explanation
    if e is None:
        ax.axis("off")
        ax.text(0.5, 0.5, "no explanation available", ha="center", va="center", fontsize=14)
        return
    items = list(e.contributions)[::-1]  # smallest |SHAP| at the bottom, starting from the base value
    start = e.base_value + sum(c.contribution for c in items)
    y = np.arange(len(items))
    left = []
    running = e.base_value
    for c in items:  # walk up from the base value to base + shown contributions
        left.append(running)
        running += c.contribution
    widths = [c.contribution for c in items]
    colors = ["#c0392b" if w > 0 else "#2471a3" for w in widths]
    ax.barh(y, widths, left=left, color=colors, height=0.6)
    for yi, c, x0 in zip(y, items, left, strict=True):
        end = x0 + c.contribution
        ax.text(end if c.contribution > 0 else x0, yi, f" {c.contribution:+.3f}", va="center", fontsize=10)
    labels = [f"{C.feature_code(c.feature).label} = {c.value:.4g}" for c in items]  # one line each: no overlap
    ax.set_yticks(y, labels, fontsize=8)
    ax.axvline(e.base_value, color="grey", linestyle="--", linewidth=1)
    ax.axvline(start, color="black", linewidth=1)
    ax.margins(x=0.18)
    ax.set_xlabel(
        f"SHAP contribution to '{e.explained_class}' ({e.units})\ndashed: base value {e.base_value:.3f}; "
        f"solid: base + shown contributions {start:.3f}",
        fontsize=9,
    )
    ax.set_title(f"Top {len(items)} SHAP contributions (red raises, blue lowers the predicted class)", fontsize=12)


def _result_lines(content: ReportContent, lesion: LesionResult) -> list[str]:
    seg = content.source.segment(lesion.segment_number)
    index = content.patient is not None and content.patient.index_segment == lesion.segment_number
    patient = companion_lines(content.patient)
    lines = [
        *patient,
        f"{seg.label or 'Lesion'}  (SEG segment {lesion.segment_number}, volume {lesion.volume_ml:.2f} mL)"
        + ("  -  INDEX LESION" if index else ""),
        f"Predicted subtype: {lesion.subtype.label}   (p = {lesion.subtype.probability:.2f})",
        "   " + "   ".join(f"{k}: {p:.2f}" for k, p in lesion.subtype.probabilities.items()),
    ]
    for head, name in ((lesion.er, "ER"), (lesion.pr, "PR"), (lesion.her2, "HER2")):
        if head is not None:
            lines.append(f"{name}: {head.label}   (p positive = {head.probabilities['positive']:.2f})")
    if lesion.her2_tier is not None:
        t = lesion.her2_tier
        lines.append(
            f"HER2 3-tier: {t.label}   (" + ", ".join(f"{k} {p:.2f}" for k, p in t.probabilities.items()) + ")"
        )
    model = (
        f"with primary-tumour subtype {content.primary_subtype}"
        if content.subtype_model is SubtypeModel.WITH_PRIMARY
        else "without primary-tumour subtype"
    )
    lines.append(f"Subtype model: {model}.   Intensity reference: {content.pons.describe()}")
    if (deep := deep_line(content.deep, lesion.segment_number)) is not None:  # the deep model, beside (node.sr.deep)
        lines.append(deep)
    lines += lesion_lines(lesion) + provenance_lines(content)  # confidence, agreement, provenance (node.sr.trust)
    if lesion.out_of_distribution:
        lines.append("WARNING - out of training distribution: " + "; ".join(lesion.ood_reasons))
    if (prior := superseded(content)) is not None:
        lines.append(f"NOTE - supersedes the earlier AI result of this study (SR {prior.sop_instance_uid}).")
    lines.insert(len(patient) + 1, site_line(lesion.site))  # under the lesion's own line
    return lines


def companion_uid(content: ReportContent, role: Companion, level: str, number: int = 1) -> str:
    """Series / SOP Instance UIDs of the companions, derived like the SR's (:mod:`node.sr.identity`)."""
    fp = fingerprint(content.algorithm, content.primary_subtype)
    return result_identity(content).uid(fp, role.value, level, number)


def render_page(content: ReportContent, lesion: LesionResult) -> Figure:
    """One result page (matplotlib figure) for one lesion."""
    fig = plt.figure(figsize=PAGE_INCHES, dpi=DPI, facecolor="white")
    fig.text(0.5, 0.975, BANNER, ha="center", va="top", fontsize=15, color="white", weight="bold",
             bbox={"facecolor": "#b03a2e", "edgecolor": "none", "pad": 6})  # fmt: skip
    a = content.algorithm
    fig.text(0.02, 0.925, f"{a.name} {a.version}  -  study {content.source.study_instance_uid}", fontsize=10,
             color="#444444", va="top")  # fmt: skip
    lines = _result_lines(content, lesion)
    step = 0.034 if len(lines) <= 12 else 0.027  # the text block shrinks as items are added; the plot keeps room
    for i, line in enumerate(lines):
        warn = line.startswith(("WARNING", "DISCORDANT"))
        size = (14 if i < 2 else 12) if step > 0.03 else (12 if i < 2 else 10.5)
        fig.text(0.02, 0.885 - i * step, line, fontsize=size, va="top",
                 weight="bold" if i in (0, 1) or warn else "normal", color="#b03a2e" if warn else "black")  # fmt: skip
    top = 0.885 - len(lines) * step - 0.05
    ax = fig.add_axes((0.40, 0.11, 0.56, max(top - 0.11, 0.22)))
    _waterfall(ax, lesion)
    fig.text(0.02, 0.015, f"{content.disclaimer}. The DICOM SR of this analysis is the machine-readable result.",
             fontsize=9, color="#444444")  # fmt: skip
    return fig


def qc_figures(content: ReportContent) -> list[Callable[[], Figure]]:
    """The QC key-image pages (:mod:`node.sr.qcpage`), each drawn when called; none without views."""
    a = content.algorithm
    header = f"{a.name} {a.version}  -  study {content.source.study_instance_uid}"
    footer = f"{content.disclaimer}. The DICOM SR of this analysis is the machine-readable result."
    pages = qc_pages(content.qc_views)
    return [
        functools.partial(render_qc_page, views, banner=BANNER, header=header, footer=footer, page=n,
                          pages=len(pages), inches=PAGE_INCHES, dpi=DPI)
        for n, views in enumerate(pages, start=1)
    ]


def render_png(content: ReportContent, lesion: LesionResult, path: Path) -> Path:
    """Save one page as PNG (for looking at it)."""
    fig = render_page(content, lesion)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _rgb(fig: Figure) -> npt.NDArray[np.uint8]:
    try:
        return rasterise(fig)  # Agg shapes and images, Pillow text (node.sr.raster)
    finally:
        plt.close(fig)


def _equipment(content: ReportContent) -> Any:
    a = content.algorithm
    return hd.ContributingEquipment(
        manufacturer=a.manufacturer,
        purpose_of_reference=C.PROCESSING_EQUIPMENT,
        manufacturer_model_name=a.name,
        software_versions=a.version,
        contribution_description=PROCESSING_EQUIPMENT_DESCRIPTION,
    )


def build_companion_sc(
    content: ReportContent,
    *,
    series_instance_uid: str | None = None,
    series_number: int = SC_SERIES_NUMBER,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> list[Any]:
    """One RGB Secondary Capture image (``hd.sc.SCImage``) per lesion, then the QC key-image page(s), all in one
    new series.

    Uncompressed by default (3.7 MB per page, accepted by every PACS); ``RLELossless`` gives ~0.4 MB where the
    receiving PACS accepts it."""
    series_uid = series_instance_uid or companion_uid(content, Companion.SECONDARY_CAPTURE, "series")
    images = []
    figures: list[Callable[[], Figure]] = [
        *(functools.partial(render_page, content, lesion) for lesion in content.lesions),
    ]
    if content.not_assessed:  # one page saying, in words, which segments were not assessed and why
        figures.append(functools.partial(render_not_assessed_page, content, BANNER))
    figures.extend(qc_figures(content))  # the QC key image after the result pages
    for i, figure in enumerate(figures, start=1):
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=content.source.t1ce[0],
            pixel_array=_rgb(figure()),
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=companion_uid(content, Companion.SECONDARY_CAPTURE, "instance", i),
            instance_number=i,
            manufacturer=content.algorithm.manufacturer,
            patient_orientation=("L", "P"),
            contributing_equipment=[_equipment(content)],
            series_description=SC_SERIES_DESCRIPTION,
            transfer_syntax_uid=transfer_syntax_uid,
        )
        sc.Laterality = ""  # Type 2C in General Series; dciodvfy 2022 requires it (docs/sr-design.md §4)
        sc.BurnedInAnnotation = "YES"
        sc.ConversionType = "SYN"  # a synthetic image (chart), not a digitised film
        sc.ImageComments = f"{content.disclaimer}. The DICOM SR of this analysis is the machine-readable result."
        sc.SoftwareVersions = content.algorithm.version
        images.append(sc)
    return images


def render_pdf(content: ReportContent) -> bytes:
    """The result pages (one per lesion, plus a summary page) as a PDF document."""
    buffer = io.BytesIO()
    with PdfPages(buffer, metadata={"Title": DOCUMENT_TITLE, "Creator": content.algorithm.name}) as pdf:
        for lesion in content.lesions:
            fig = render_page(content, lesion)
            pdf.savefig(fig)
            plt.close(fig)
        if content.not_assessed:
            fig = render_not_assessed_page(content, BANNER)
            pdf.savefig(fig)
            plt.close(fig)
        for qc_figure in qc_figures(content):
            fig = qc_figure()
            pdf.savefig(fig)
            plt.close(fig)
        fig = plt.figure(figsize=PAGE_INCHES, dpi=DPI)
        fig.text(0.02, 0.97, "Summary (as in the DICOM SR)", fontsize=16, weight="bold", va="top")
        paragraphs = [*statement(content.patient), report_summary(content),
                      *(lesion_summary(content, lesion) for lesion in content.lesions)]
        paragraphs += not_assessed_lines(content)[1:]
        paragraphs += [*provenance_texts(content), *(lesion_text(lesion) for lesion in content.lesions)]
        text = "\n\n".join(textwrap.fill(p, 150) for p in paragraphs)
        fig.text(0.02, 0.92, text, fontsize=10, va="top")
        models = "\n".join(f"model {m.task}: {m.name} {m.version}  sha256 {m.sha256}" for m in content.algorithm.models)
        fig.text(0.02, 0.25, models, fontsize=9, va="top", family="monospace")
        pdf.savefig(fig)
        plt.close(fig)
    return buffer.getvalue()


def build_companion_pdf(
    content: ReportContent,
    *,
    series_instance_uid: str | None = None,
    series_number: int = PDF_SERIES_NUMBER,
    now: dt.datetime | None = None,
) -> Dataset:
    """An Encapsulated PDF instance (Modality DOC) in a new series, patient/study copied from the source."""
    pdf = render_pdf(content)
    now = now or dt.datetime.now()
    ref = content.source.t1ce[0]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in _PATIENT_STUDY:
        ds.__setattr__(keyword, ref.get(keyword, ""))
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = companion_uid(content, Companion.PDF, "instance")
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_instance_uid or companion_uid(content, Companion.PDF, "series")
    ds.SeriesNumber = series_number
    ds.SeriesDescription = PDF_SERIES_DESCRIPTION
    ds.Manufacturer = content.algorithm.manufacturer
    ds.ManufacturerModelName = content.algorithm.name
    ds.SoftwareVersions = content.algorithm.version
    ds.ConversionType = "SYN"
    ds.InstanceNumber = 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.InstanceCreationDate = ds.ContentDate
    ds.InstanceCreationTime = ds.ContentTime
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = DOCUMENT_TITLE
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def write_companions(
    content: ReportContent, directory: Path, kinds: Sequence[Companion] = (Companion.SECONDARY_CAPTURE, Companion.PDF)
) -> list[Path]:
    """Build and write the configured companions; returns the written paths."""
    paths: list[Path] = []
    if Companion.SECONDARY_CAPTURE in kinds:
        paths += [write_instance(sc, directory) for sc in build_companion_sc(content)]
    if Companion.PDF in kinds:
        paths.append(write_instance(build_companion_pdf(content), directory))
    return paths
