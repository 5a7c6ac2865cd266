"""Which image type and region a feature column comes from, and the columns a recipe's feature set uses.

Column names follow the node's feature table (``<sequence>_<class>_<Feature>``, ``shape_<Feature>``) with two
optional tokens after the sequence, as pyradiomics names filtered images:

* image type: ``log-sigma-<s>-mm`` (Laplacian of Gaussian, sigma s mm, ``.`` written ``-``) or
  ``wavelet-<LLH>``; no token means the original image;
* region: ``shell<d>mm`` (peritumoral shell of d mm, :mod:`node.imaging.shells`); no token means the tumour.

Example: ``t2_shell3mm_log-sigma-2-0-mm_firstorder_Mean``. Inputs that are not radiomic (``primary_subtype=…``)
belong to every feature set.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from node.model.tasks import PRIMARY_PREFIX

_SHELL = re.compile(r"^shell(\d+)mm$")
_LOG = re.compile(r"^log-sigma-(\d+)-(\d+)-mm(?:-3D)?$")
_WAVELET = re.compile(r"^wavelet-[LH]{3}$")


@dataclass(frozen=True)
class ColumnInfo:
    image_type: str  # original | log | wavelet | clinical
    sigma_mm: float | None
    region: str  # tumour | shell<d>mm | clinical


def describe_column(name: str) -> ColumnInfo:
    if name.startswith(PRIMARY_PREFIX):
        return ColumnInfo("clinical", None, "clinical")
    image_type, sigma, region = "original", None, "tumour"
    for token in name.split("_")[1:3]:
        if (m := _SHELL.match(token)) is not None:
            region = f"shell{int(m.group(1))}mm"
        elif (m := _LOG.match(token)) is not None:
            image_type, sigma = "log", float(f"{m.group(1)}.{m.group(2)}")
        elif _WAVELET.match(token):
            image_type = "wavelet"
    return ColumnInfo(image_type, sigma, region)


@dataclass(frozen=True)
class ColumnChoice:
    indices: list[int]
    missing: list[str]  # what the recipe asked for and the table does not have, in words


def choose_columns(
    names: Sequence[str], images: Sequence[str], sigmas: Sequence[float], regions: Sequence[str]
) -> ColumnChoice:
    """Columns of the wanted image types (LoG only at ``sigmas``) and regions, and what is missing."""
    infos = [describe_column(n) for n in names]
    keep: list[int] = []
    for i, info in enumerate(infos):
        if info.image_type == "clinical":
            keep.append(i)
            continue
        if info.image_type not in images or info.region not in regions:
            continue
        if info.image_type == "log" and not any(abs((info.sigma_mm or 0) - s) < 1e-6 for s in sigmas):
            continue
        keep.append(i)
    chosen = [infos[i] for i in keep]
    missing: list[str] = []
    for image in images:
        if image == "log":
            for s in sigmas:
                if not any(c.image_type == "log" and abs((c.sigma_mm or 0) - s) < 1e-6 for c in chosen):
                    missing.append(f"LoG sigma {s:g} mm image features")
        elif not any(c.image_type == image for c in chosen):
            missing.append(f"{image} image features")
    for region in regions:
        if not any(c.region == region for c in chosen):
            missing.append(f"{region} region features")
    return ColumnChoice(keep, missing)
