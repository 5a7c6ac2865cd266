"""Finding Site of a lesion (TID 1500 / TID 1411 row "Finding Site", 363698007): region code and laterality.

The site itself is computed by :mod:`node.imaging.sites` and handed over as a :class:`node.vocabulary.LesionSite`;
this module only encodes it (docs/sr.md "Where the lesion is", docs/atlas.md):

* the region as a SNOMED CT code, spelt as in pydicom's code dictionary (DICOM PS3.16: CIDs 7140 / 7151 / 4);
* the side as the Laterality concept modifier (272741003, CID 244): Left 7771000 or Right 24028007;
* a midline lesion (centroid within the midline band) carries no laterality but the Topographical modifier
  (106233006, CID 2) Median (DCM 130290).

A lesion without a site (no template registration, or no voxel inside the template brain) keeps the finding
site Brain (12738006), as before.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from node.vocabulary import BrainRegion, Hemisphere, LesionSite


def _concept(code: Any) -> CodedConcept:
    return CodedConcept(code.value, code.scheme_designator, code.meaning)


BRAIN = _concept(codes.SCT.Brain)

#: One SNOMED CT code per region (all from DICOM PS3.16, as pydicom names them).
REGION_CODES: dict[BrainRegion, CodedConcept] = {
    BrainRegion.FRONTAL: _concept(codes.SCT.FrontalLobe),  # 83251001
    BrainRegion.PARIETAL: _concept(codes.SCT.ParietalLobe),  # 16630005
    BrainRegion.TEMPORAL: _concept(codes.SCT.TemporalLobe),  # 78277001
    BrainRegion.OCCIPITAL: _concept(codes.SCT.OccipitalLobe),  # 31065004
    BrainRegion.INSULA: _concept(codes.SCT.Insula),  # 36169008
    BrainRegion.CINGULATE: _concept(codes.SCT.LimbicLobe),  # 279215006: the cingulate gyrus is its largest part
    BrainRegion.CAUDATE: _concept(codes.SCT.CaudateNucleus),  # 11000004
    BrainRegion.PUTAMEN: _concept(codes.SCT.Putamen),  # 89278009
    BrainRegion.PALLIDUM: _concept(codes.SCT.GlobusPallidus),  # 14738005
    BrainRegion.ACCUMBENS: _concept(codes.SCT.NucleusAccumbens),  # 427667007
    BrainRegion.THALAMUS: _concept(codes.SCT.Thalamus),  # 42695009
    BrainRegion.BRAINSTEM: _concept(codes.SCT.BrainStem),  # 119238007 (DICOM CID 7140 / 7151)
    BrainRegion.CEREBELLUM: _concept(codes.SCT.Cerebellum),  # 113305005
}

LATERALITY_CODES: dict[Hemisphere, CodedConcept] = {
    Hemisphere.LEFT: _concept(codes.SCT.Left),  # 7771000
    Hemisphere.RIGHT: _concept(codes.SCT.Right),  # 24028007
}
LATERALITY = _concept(codes.SCT.Laterality)  # 272741003
TOPOGRAPHICAL_MODIFIER = _concept(codes.SCT.TopographicalModifier)  # 106233006
MEDIAN = _concept(codes.DCM.Median)  # 130290


def finding_site(site: LesionSite | None) -> Any:
    """The ``hd.sr.FindingSite`` of one lesion: its region and side, or Brain when the site is unknown."""
    if site is None:
        return hd.sr.FindingSite(BRAIN)
    if site.hemisphere is Hemisphere.MIDLINE:
        return hd.sr.FindingSite(REGION_CODES[site.region], topographical_modifier=MEDIAN)
    return hd.sr.FindingSite(REGION_CODES[site.region], laterality=LATERALITY_CODES[site.hemisphere])


def site_line(site: LesionSite | None) -> str:
    """The companion's one line on where the lesion is (approximate: an atlas after an affine registration)."""
    if site is None:
        return "Site: not determined (atlas registration unavailable); SR finding site: brain"
    x, y, z = site.mni_centroid_ras
    return f"Site (AAL3 atlas, approximate): {site.describe()}; MNI centroid x {x:.0f}, y {y:.0f}, z {z:.0f} mm"
