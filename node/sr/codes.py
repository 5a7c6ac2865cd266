"""Named coded concepts of the result SR (docs/sr-design.md §2): standard codes and the private ``99BCMETS`` scheme.

Rules for the private scheme (docs/sr-design.md §2.3): one code value means exactly one thing; code values are
SH (≤ 16 chars), meanings LO (≤ 64 chars). Per-feature codes are derived by fixed, documented rules
(:func:`feature_code`, :func:`shap_code`) so that the same input always gets the same code. The table is published
in ``docs/sr.md``.
Verify SNOMED CT codes against the release a site uses before shipping (HER2-low needs SNOMED CT ≥ 2025-12).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

PRIVATE_DESIGNATOR = "99BCMETS"
PRIVATE_SCHEME_NAME = "BCBM AI node breast-cancer brain-metastasis concepts"
PRIVATE_SCHEME_ORGANIZATION = "BCBM AI node project"


def private(value: str, meaning: str) -> CodedConcept:
    """A concept of the private scheme; refuses values and meanings that do not fit SH / LO."""
    if not 0 < len(value) <= 16 or not 0 < len(meaning) <= 64:
        raise ValueError(f"private code {value!r} / {meaning!r} does not fit SH (16) / LO (64)")
    return CodedConcept(value=value, scheme_designator=PRIVATE_DESIGNATOR, meaning=meaning)


def _concept(code: object) -> CodedConcept:
    """A pydicom ``Code`` as a highdicom ``CodedConcept`` (so every constant here has one type)."""
    return CodedConcept(code.value, code.scheme_designator, code.meaning)  # type: ignore[attr-defined]


# --- document structure and context (standard) -------------------------------------------------------------
IMAGING_MEASUREMENT_REPORT = _concept(codes.DCM.ImagingMeasurementReport)
PROCEDURE_MRI = _concept(codes.LN.MRIUnspecifiedBodyRegion)  # CID 100; not LN 24590-2 (CID 646, PixelMed Error)
DEVICE_OBSERVER = _concept(codes.DCM.Device)
PROCESSING_EQUIPMENT = _concept(codes.DCM.ProcessingEquipment)
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
COMMENT = _concept(codes.DCM.Comment)
ALGORITHM_FAMILY_AI = _concept(codes.cid7162.ArtificialIntelligence)

# --- the finding ---------------------------------------------------------------------------------------------
FINDING_SECONDARY_NEOPLASM = _concept(codes.SCT.NeoplasmSecondary)
FINDING_CATEGORY_ABNORMAL_STRUCTURE = _concept(codes.SCT.MorphologicallyAbnormalStructure)
FINDING_SITE_BRAIN = _concept(codes.SCT.Brain)

# --- units and image sources ---------------------------------------------------------------------------------
UNIT_NONE = _concept(codes.UCUM.NoUnits)
UNIT_MM3 = _concept(codes.UCUM.CubicMillimeter)
T1_SIGNAL = _concept(codes.DCM.T1WeightedMRSignalIntensity)
T2_SIGNAL = _concept(codes.DCM.T2WeightedMRSignalIntensity)
LESION_VOLUME = _concept(codes.SCT.Volume)  # (118565006, SCT): the segment on its native grid

# --- subtype (group 1) ---------------------------------------------------------------------------------------
PREDICTED_SUBTYPE = private("BCSUBTYPE", "Predicted breast cancer molecular subtype")
CLASSIFICATION_CATEGORY = private("CLASS", "Classification category")
SUBTYPE_CODES: dict[str, CodedConcept] = {
    "HR+/HER2-": private("HRPOS_HER2NEG", "HR-positive/HER2-negative"),
    "HR+/HER2+": private("HRPOS_HER2POS", "HR-positive/HER2-positive"),
    "HR-/HER2+": private("HRNEG_HER2POS", "HR-negative/HER2-positive"),
    "TN": CodedConcept("706970001", "SCT", "Triple negative malignant neoplasm of breast"),
}
SUBTYPE_PROBABILITY: dict[str, CodedConcept] = {
    "HR+/HER2-": private("P_HRPOS_HER2NEG", "Probability of HR+/HER2- subtype"),
    "HR+/HER2+": private("P_HRPOS_HER2POS", "Probability of HR+/HER2+ subtype"),
    "HR-/HER2+": private("P_HRNEG_HER2POS", "Probability of HR-/HER2+ subtype"),
    "TN": private("P_706970001", "Probability of triple-negative subtype"),
}
SUBTYPE_MODEL = private("SUBTYPEMODEL", "Subtype model variant")
SUBTYPE_MODEL_WITH_PRIMARY = private("WITHPRIMARY", "Subtype model using the primary-tumour subtype")
SUBTYPE_MODEL_WITHOUT_PRIMARY = private("NOPRIMARY", "Subtype model without the primary-tumour subtype")
PRIMARY_SUBTYPE = private("PRIMSUBTYPE", "Primary tumour subtype (model input)")

# --- receptors (group 1) -------------------------------------------------------------------------------------
ER_STATUS = CodedConcept("445028008", "SCT", "Status of estrogen receptors of neoplasm")
ER_POSITIVE = CodedConcept("416053008", "SCT", "Estrogen receptor positive tumor")
ER_NEGATIVE = CodedConcept("441117001", "SCT", "Estrogen receptor negative neoplasm")
PR_STATUS = CodedConcept("445029000", "SCT", "Status of progesterone receptors of neoplasm")
PR_POSITIVE = CodedConcept("416561008", "SCT", "Progesterone receptor positive tumor")
PR_NEGATIVE = CodedConcept("441118006", "SCT", "Progesterone receptor negative neoplasm")
HER2_STATUS = CodedConcept("48676-1", "LN", "HER2 [Interpretation] in Tissue")
HER2_POSITIVE = CodedConcept("427685000", "SCT", "Human epidermal growth factor 2 positive carcinoma of breast")
HER2_NEGATIVE = CodedConcept("431396003", "SCT", "Human epidermal growth factor 2 negative carcinoma of breast")
HER2_CATEGORY = private("HER2CAT", "Predicted HER2 expression category")
HER2_TIER_CODES: dict[str, CodedConcept] = {
    "zero": private("HER2ZERO", "HER2 zero (IHC 0)"),
    "low": CodedConcept("1381317004", "SCT", "Human epidermal growth factor receptor 2 low"),
    "positive": HER2_POSITIVE,
}
HER2_TIER_PROBABILITY: dict[str, CodedConcept] = {
    "zero": private("P_HER2_ZERO", "Probability of HER2-zero (3-tier model)"),
    "low": private("P_HER2_LOW", "Probability of HER2-low (3-tier model)"),
    "positive": private("P_HER2_POSITIVE", "Probability of HER2-positive (3-tier model)"),
}


@dataclass(frozen=True)
class BinaryHead:
    """Codes of one binary receptor head: the question, its two answers and the positive-class probability."""

    status: CodedConcept
    positive: CodedConcept
    negative: CodedConcept
    probability: CodedConcept

    def answer(self, label: str) -> CodedConcept:
        return self.positive if label == "positive" else self.negative


BINARY_HEADS: dict[str, BinaryHead] = {
    "er": BinaryHead(ER_STATUS, ER_POSITIVE, ER_NEGATIVE, private("P_ERPOS", "Probability of ER positive")),
    "pr": BinaryHead(PR_STATUS, PR_POSITIVE, PR_NEGATIVE, private("P_PRPOS", "Probability of PR positive")),
    "her2": BinaryHead(
        HER2_STATUS, HER2_POSITIVE, HER2_NEGATIVE, private("P_HER2POS", "Probability of HER2 positive (binary model)")
    ),
}

# --- explanations (group 2) ----------------------------------------------------------------------------------
SHAP_BASE = private("SHAPBASE", "SHAP base value (expected model output)")
EXPLAINED_FEATURE = private("EXPLFEAT", "Explained feature")
FEATURE_SOURCE = private("EXPLSEQ", "Feature source image")
EXPLAINED_CLASS = private("EXPLCLASS", "Explained class")
OOD_FLAG = private("OOD", "Out of training distribution")
YES = _concept(codes.SCT.Yes)
NO = _concept(codes.SCT.No)

# --- failure SR ----------------------------------------------------------------------------------------------
PROCESSING_STATUS = private("PROCSTATUS", "AI processing status")
NOT_PROCESSED_INPUT = private("NOTPROC_INPUT", "Not processed: input not usable")
NOT_PROCESSED_ERROR = private("NOTPROC_ERROR", "Not processed: processing error")

SEQUENCE_SOURCE: dict[str, CodedConcept] = {"t1ce": T1_SIGNAL, "t2": T2_SIGNAL}
SEQUENCE_LABEL: dict[str, str] = {"t1ce": "T1CE", "t2": "T2"}

# pyradiomics "<class>_<Feature>" -> pydicom IBSI keyword. Only pairs whose definitions agree are listed
# (pyradiomics docs vs IBSI); first-order features other than the histogram ones stay private (IBSI
# intensity-statistics codes are not in CID 218), and names that merely look alike are not guessed.
IBSI_KEYWORDS: dict[str, str] = {
    "shape_Elongation": "Elongation",
    "shape_Flatness": "Flatness",
    "shape_LeastAxisLength": "LeastAxisIn3DLength",
    "shape_MajorAxisLength": "MajorAxisIn3DLength",
    "shape_MinorAxisLength": "MinorAxisIn3DLength",
    "shape_Maximum3DDiameter": "Maximum3DDiameterOfAMesh",
    "shape_MeshVolume": "VolumeOfMesh",
    "shape_VoxelVolume": "VolumeFromVoxelSummation",
    "shape_Sphericity": "Sphericity",
    "shape_SurfaceArea": "SurfaceAreaOfMesh",
    "shape_SurfaceVolumeRatio": "SurfaceToVolumeRatio",
    "firstorder_Entropy": "IntensityHistogramEntropy",
    "firstorder_Uniformity": "IntensityHistogramUniformity",
    "glcm_Autocorrelation": "AutocorrelationOfGLCM",
    "glcm_ClusterProminence": "ClusterProminenceOfGLCM",
    "glcm_ClusterShade": "ClusterShadeOfGLCM",
    "glcm_ClusterTendency": "ClusterTendencyOfGLCM",
    "glcm_Contrast": "ContrastOfGLCM",
    "glcm_Correlation": "CorrelationOfGLCM",
    "glcm_DifferenceAverage": "DifferenceAverageOfGLCM",
    "glcm_DifferenceEntropy": "DifferenceEntropyOfGLCM",
    "glcm_DifferenceVariance": "DifferenceVarianceOfGLCM",
    "glcm_Id": "InverseDifferenceOfGLCM",
    "glcm_Idm": "InverseDifferenceMomentOfGLCM",
    "glcm_Idn": "NormalizedInverseDifferenceOfGLCM",
    "glcm_Idmn": "NormalizedInverseDifferenceMomentOfGLCM",
    "glcm_Imc1": "FirstMeasureOfInformationCorrelationOfGLCM",
    "glcm_Imc2": "SecondMeasureOfInformationCorrelationOfGLCM",
    "glcm_InverseVariance": "InverseVarianceOfGLCM",
    "glcm_JointAverage": "JointAverageOfGLCM",
    "glcm_JointEnergy": "AngularSecondMomentOfGLCM",
    "glcm_JointEntropy": "JointEntropyOfGLCM",
    "glcm_MaximumProbability": "JointMaximumOfGLCM",
    "glcm_SumAverage": "SumAverageOfGLCM",
    "glcm_SumEntropy": "SumEntropyOfGLCM",
    "glcm_SumSquares": "JointVarianceOfGLCM",
    "glrlm_GrayLevelNonUniformity": "GrayLevelNonuniformityInRuns",
    "glrlm_GrayLevelNonUniformityNormalized": "NormalizedGrayLevelNonuniformityInRuns",
    "glrlm_GrayLevelVariance": "GrayLevelVarianceInRuns",
    "glrlm_HighGrayLevelRunEmphasis": "HighGrayLevelRunEmphasis",
    "glrlm_LongRunEmphasis": "LongRunsEmphasis",
    "glrlm_LongRunHighGrayLevelEmphasis": "LongRunHighGrayLevelEmphasis",
    "glrlm_LongRunLowGrayLevelEmphasis": "LongRunLowGrayLevelEmphasis",
    "glrlm_LowGrayLevelRunEmphasis": "LowGrayLevelRunEmphasis",
    "glrlm_RunEntropy": "RunEntropy",
    "glrlm_RunLengthNonUniformity": "RunLengthNonuniformity",
    "glrlm_RunLengthNonUniformityNormalized": "NormalizedRunLengthNonuniformity",
    "glrlm_RunPercentage": "RunPercentage",
    "glrlm_RunVariance": "RunLengthVariance",
    "glrlm_ShortRunEmphasis": "ShortRunsEmphasis",
    "glrlm_ShortRunHighGrayLevelEmphasis": "ShortRunHighGrayLevelEmphasis",
    "glrlm_ShortRunLowGrayLevelEmphasis": "ShortRunLowGrayLevelEmphasis",
    "glszm_GrayLevelNonUniformity": "GrayLevelNonuniformityOfSizeZoneCounts",
    "glszm_GrayLevelNonUniformityNormalized": "NormalizedGrayLevelNonuniformityOfSizeZoneCounts",
    "glszm_GrayLevelVariance": "GrayLevelVarianceInSizeZones",
    "glszm_HighGrayLevelZoneEmphasis": "HighGrayLevelZoneEmphasis",
    "glszm_LargeAreaEmphasis": "LargeZoneEmphasis",
    "glszm_LargeAreaHighGrayLevelEmphasis": "LargeZoneHighGrayLevelEmphasis",
    "glszm_LargeAreaLowGrayLevelEmphasis": "LargeZoneLowGrayLevelEmphasis",
    "glszm_LowGrayLevelZoneEmphasis": "LowGrayLevelZoneEmphasis",
    "glszm_SizeZoneNonUniformity": "ZoneSizeNonuniformity",
    "glszm_SizeZoneNonUniformityNormalized": "NormalizedZoneSizeNonuniformity",
    "glszm_SmallAreaEmphasis": "SmallZoneEmphasis",
    "glszm_SmallAreaHighGrayLevelEmphasis": "SmallZoneHighGrayLevelEmphasis",
    "glszm_SmallAreaLowGrayLevelEmphasis": "SmallZoneLowGrayLevelEmphasis",
    "glszm_ZoneEntropy": "ZoneSizeEntropy",
    "glszm_ZonePercentage": "SizeZonePercentage",
    "glszm_ZoneVariance": "ZoneSizeVariance",
    "ngtdm_Busyness": "BusynessOfNGTDM",
    "ngtdm_Coarseness": "CoarsenessOfNGTDM",
    "ngtdm_Complexity": "ComplexityOfNGTDM",
    "ngtdm_Contrast": "ContrastOfNGTDM",
    "ngtdm_Strength": "StrengthOfNGTDM",
}


@dataclass(frozen=True)
class FeatureCode:
    """How one model input is coded: the concept, the image it was measured on (None: shape / clinical input),
    and a short human label (``"T1CE Joint Entropy of GLCM"``)."""

    concept: CodedConcept
    source: CodedConcept | None
    label: str


def _sha_hex(text: str, n: int) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n].upper()


def feature_code(name: str) -> FeatureCode:
    """The code of a feature-table column (``t1ce_glcm_JointEntropy``, ``shape_Sphericity``,
    ``t2_shell5mm_firstorder_Mean``, ``primary_subtype=TN``).

    IBSI code when :data:`IBSI_KEYWORDS` maps it; otherwise private ``RF`` + 12 hex digits of
    ``sha1(<column name>)`` with the column name as meaning. The primary-subtype one-hot inputs are private
    ``PRIM_<hash>`` concepts.
    """
    if name.startswith("primary_subtype="):
        subtype = name.split("=", 1)[1]
        concept = private("PRIM" + _sha_hex(name, 8), f"Primary tumour subtype is {subtype} (model input)")
        return FeatureCode(concept, None, f"primary subtype {subtype}")
    sequence, rest = "", name
    for seq in SEQUENCE_SOURCE:
        if name.startswith(seq + "_"):
            sequence, rest = seq, name[len(seq) + 1 :]
            break
    keyword = IBSI_KEYWORDS.get(rest)
    source = SEQUENCE_SOURCE.get(sequence)
    prefix = f"{SEQUENCE_LABEL[sequence]} " if sequence else ""
    if keyword is not None:
        concept = _concept(getattr(codes.IBSI, keyword))
        return FeatureCode(concept, source, f"{prefix}{concept.meaning}")
    concept = private("RF" + _sha_hex(name, 12), name[:64])
    return FeatureCode(concept, source, f"{prefix}{rest.replace('_', ' ')}")


def shap_code(feature: str, explained_class: str) -> CodedConcept:
    """The private NUM name of one SHAP value: ``SH`` + 14 hex of sha1(``feature|class``) (docs/sr-design.md §2.2)."""
    code = feature_code(feature)
    return private("SH" + _sha_hex(f"{feature}|{explained_class}", 14), f"SHAP {code.label}"[:64])


def all_private_codes() -> list[CodedConcept]:
    """Every fixed private concept (not the per-feature derived ones), for the published table and tests."""
    fixed = [
        PREDICTED_SUBTYPE, CLASSIFICATION_CATEGORY, SUBTYPE_MODEL, SUBTYPE_MODEL_WITH_PRIMARY,
        SUBTYPE_MODEL_WITHOUT_PRIMARY, PRIMARY_SUBTYPE, HER2_CATEGORY, SHAP_BASE, EXPLAINED_FEATURE, FEATURE_SOURCE,
        EXPLAINED_CLASS, OOD_FLAG, PROCESSING_STATUS, NOT_PROCESSED_INPUT, NOT_PROCESSED_ERROR,
        *SUBTYPE_CODES.values(), *SUBTYPE_PROBABILITY.values(), *HER2_TIER_CODES.values(),
        *HER2_TIER_PROBABILITY.values(), *(h.probability for h in BINARY_HEADS.values()),
    ]  # fmt: skip
    return [c for c in fixed if c.scheme_designator == PRIVATE_DESIGNATOR]
