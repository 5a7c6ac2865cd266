"""Synthetic acquisition sites: vendor, model, field strength, naming conventions and intensity habits.

Site ``k`` uses the vendor profile ``k mod 3`` (SIEMENS, GE, Philips); a fourth or later site repeats a
vendor with a 15 % larger intensity scale per repeat. Intensity differences per site are applied after the
anatomy/lesion model, whose arbitrary units put normal white matter on T1CE at 1.0:

==========================  ===========  =======  ==============  ====================
vendor                      T1CE scale   offset   bias strength   noise (× WM signal)
==========================  ===========  =======  ==============  ====================
SIEMENS (unsigned)          700          0        0.15            0.025
GE (unsigned)               1600         0        0.25            0.035
Philips (signed + rescale)  2.4          -0.3     0.20            0.030
==========================  ===========  =======  ==============  ====================

Philips stores signed 16-bit pixels with a rescale slope/intercept (real-world values are floats).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SequenceProtocol:
    """Header attributes of one sequence at one site."""

    series_description: str
    sequence_name: str
    scanning_sequence: str  # (0018,0020) e.g. "GR", "SE", "GR\\IR"
    sequence_variant: str  # (0018,0021)
    scan_options: str  # (0018,0022)
    mr_acquisition_type: str  # "2D" / "3D"
    repetition_time: float  # ms
    echo_time: float  # ms
    inversion_time: float | None  # ms
    flip_angle: float  # degrees
    echo_train_length: int


@dataclass(frozen=True)
class _Vendor:
    manufacturer: str
    model_name: str
    field_strength: float
    software_versions: str
    t1ce: SequenceProtocol
    t2: SequenceProtocol
    scale: float
    offset: float
    bias: float
    noise: float
    signed: bool
    agent: str


@dataclass(frozen=True)
class Site:
    """One hospital scanner."""

    index: int
    institution_name: str
    manufacturer: str
    model_name: str
    field_strength: float
    software_versions: str
    station_name: str
    t1ce: SequenceProtocol
    t2: SequenceProtocol
    intensity_scale: float
    intensity_offset: float
    bias_strength: float
    noise_level: float
    signed_rescaled: bool
    contrast_agent: str


_SIEMENS = _Vendor(
    manufacturer="SIEMENS",
    model_name="MAGNETOM Skyra",
    field_strength=3.0,
    software_versions="syngo MR E11",
    t1ce=SequenceProtocol(
        "t1_mprage_sag_p2_iso +C",
        "*tfl3d1_16ns",
        "GR\\IR",
        "SK\\SP\\MP",
        "IR",
        "3D",
        2300.0,
        2.32,
        900.0,
        8.0,
        1,
    ),
    t2=SequenceProtocol(
        "t2_tse_tra", "*tse2d1_15", "SE", "SK\\SP\\OSP", "PFP\\SAT1", "2D", 6000.0, 99.0, None, 150.0, 15
    ),
    scale=700.0,
    offset=0.0,
    bias=0.15,
    noise=0.025,
    signed=False,
    agent="Gadovist",
)
_GE = _Vendor(
    manufacturer="GE MEDICAL SYSTEMS",
    model_name="SIGNA Premier",
    field_strength=1.5,
    software_versions="27\\LX\\MR Software release:RX27.0_R02",
    t1ce=SequenceProtocol(
        "Sag 3D BRAVO +C",
        "efgre3d",
        "GR\\IR",
        "SS\\SK",
        "FAST_GEMS\\EDR_GEMS\\PFP",
        "3D",
        8.2,
        3.2,
        450.0,
        12.0,
        1,
    ),
    t2=SequenceProtocol(
        "Ax T2 FSE", "fse-xl", "SE", "SK", "FAST_GEMS\\PFP", "2D", 5200.0, 105.0, None, 111.0, 18
    ),
    scale=1600.0,
    offset=0.0,
    bias=0.25,
    noise=0.035,
    signed=False,
    agent="Dotarem",
)
_PHILIPS = _Vendor(
    manufacturer="Philips Medical Systems",
    model_name="Ingenia",
    field_strength=3.0,
    software_versions="5.6.1\\5.6.1.2",
    t1ce=SequenceProtocol("T1W_3D_TFE Gd", "T1TFE", "GR", "SP\\MP", "OTHER", "3D", 8.1, 3.7, None, 8.0, 1),
    t2=SequenceProtocol("T2W_TSE", "TSE", "SE", "SK", "OTHER", "2D", 3000.0, 80.0, None, 90.0, 16),
    scale=2.4,
    offset=-0.3,
    bias=0.20,
    noise=0.030,
    signed=True,
    agent="MultiHance",
)
_VENDORS = (_SIEMENS, _GE, _PHILIPS)
_CITIES = ("Northfield", "Eastbrook", "Southvale", "Westmoor", "Lakeside", "Hillcrest")


def make_sites(n_sites: int) -> list[Site]:
    """``n_sites`` deterministic site profiles (vendor ``k mod 3``)."""
    if n_sites < 1:
        raise ValueError(f"at least one site is needed, got {n_sites}")
    sites = []
    for k in range(n_sites):
        v = _VENDORS[k % len(_VENDORS)]
        repeat = k // len(_VENDORS)
        sites.append(
            Site(
                index=k,
                institution_name=f"Synthetic {_CITIES[k % len(_CITIES)]} Hospital",
                manufacturer=v.manufacturer,
                model_name=v.model_name,
                field_strength=v.field_strength,
                software_versions=v.software_versions,
                station_name=f"SYNMR{k + 1:02d}",
                t1ce=v.t1ce,
                t2=v.t2,
                intensity_scale=v.scale * (1.0 + 0.15 * repeat),
                intensity_offset=v.offset,
                bias_strength=v.bias,
                noise_level=v.noise,
                signed_rescaled=v.signed,
                contrast_agent=v.agent,
            )
        )
    return sites
