"""The companion page that says, in words, which segments were not assessed and why (docs/sr.md).

One page per study (after the per-lesion result pages) whenever a segment was refused; when no lesion could be
assessed it is the only page, so the PACS still shows the radiologist an answer: "not assessed" and the reason.
"""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from node.sr.content import ReportContent

PAGE_INCHES = (12.8, 9.6)
DPI = 100
RED = "#b03a2e"


def not_assessed_lines(content: ReportContent) -> list[str]:
    """The page's lines: a headline, then one paragraph per not-assessed segment."""
    if not content.not_assessed:
        return []
    head = (
        "NO LESION WAS ASSESSED - this study has no subtype or receptor prediction"
        if not content.lesions
        else f"{len(content.not_assessed)} segment(s) NOT ASSESSED - no subtype or receptor prediction for them"
    )
    return [head, *(item.describe() for item in content.not_assessed)]


def render_not_assessed_page(content: ReportContent, banner: str) -> Figure:
    """The page as a matplotlib figure (the caller rasterises or saves it)."""
    fig = plt.figure(figsize=PAGE_INCHES, dpi=DPI, facecolor="white")
    fig.text(0.5, 0.975, banner, ha="center", va="top", fontsize=15, color="white", weight="bold",
             bbox={"facecolor": RED, "edgecolor": "none", "pad": 6})  # fmt: skip
    a = content.algorithm
    fig.text(0.02, 0.925, f"{a.name} {a.version}  -  study {content.source.study_instance_uid}", fontsize=10,
             color="#444444", va="top")  # fmt: skip
    lines = not_assessed_lines(content)
    fig.text(0.02, 0.88, lines[0], fontsize=16, weight="bold", color=RED, va="top")
    body = "\n\n".join(textwrap.fill(line, 125) for line in lines[1:])
    body += "\n\nIntensity reference: " + content.pons.describe()
    if content.warnings:
        body += "\n\nWarnings:\n" + "\n".join(textwrap.fill("- " + w, 125) for w in content.warnings)
    fig.text(0.02, 0.82, body, fontsize=12, va="top")
    fig.text(0.02, 0.015, f"{content.disclaimer}. The DICOM SR of this analysis is the machine-readable result.",
             fontsize=9, color="#444444")  # fmt: skip
    return fig
