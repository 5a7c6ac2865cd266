"""Group the files of a received study into series and pick the T1CE, T2 and DICOM-SEG among them.

``scan_study`` reads every file's header (recursively); a file that is not readable DICOM raises
:class:`CorruptInstanceError` naming it, so nothing is silently skipped. Each ``SeriesRef`` keeps the headers it
read (``headers``), so that neither the series rules, the volume reader nor the SR's evidence parse them again.
``identify_series`` applies the configurable :class:`SeriesRules`; errors name series by description, number
and UID, never the patient.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from node.errors import (
    AmbiguousSeriesError,
    CorruptInstanceError,
    InvalidStudyError,
    MissingSeriesError,
    SegmentationError,
    UnsupportedInstanceError,
)
from node.imaging.series_rules import (
    RoleRules,
    SeriesRules,
    attribute_matches,
    has_contrast_evidence,
    matches_any,
)
from node.imaging.types import InstanceHeader, SeriesRef
from node.imaging.volume import read_header

logger = logging.getLogger(__name__)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_ROLE_TITLES = {"t1ce": "post-contrast T1 (T1CE)", "t2": "T2"}


@dataclass(frozen=True)
class IdentifiedSeries:
    """The three series the pipeline needs, plus what identification noticed on the way."""

    t1ce: SeriesRef
    t2: SeriesRef
    seg: SeriesRef
    warnings: tuple[str, ...] = ()
    ignored: tuple[SeriesRef, ...] = ()


@dataclass(frozen=True)
class _SeriesInfo:
    """Header values of a series' first instance used by the rules."""

    ref: SeriesRef
    image_type: tuple[str, ...]
    contrast_agent: str
    dataset: Dataset
    referenced_series: tuple[str, ...]

    def values(self, keyword: str) -> tuple[str, ...]:
        return _values(self.dataset, keyword)


def _values(ds: Dataset, keyword: str) -> tuple[str, ...]:
    """An attribute's values as strings ((), when absent or empty)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return ()
    if isinstance(value, str | int | float):
        return (str(value),)
    return tuple(str(v) for v in value)


# ---------------------------------------------------------------------------------------------------------
# scanning


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def scan_study(study_dir: Path) -> list[SeriesRef]:
    """Group every file below ``study_dir`` by SeriesInstanceUID (files sorted by path within a series)."""
    if not study_dir.is_dir():
        raise InvalidStudyError(f"study folder {study_dir} does not exist")
    grouped: dict[str, list[InstanceHeader]] = {}
    for path in sorted(p for p in study_dir.rglob("*") if p.is_file()):
        header = read_header(path)
        ds = header.dataset
        sop_class = _text(ds, "SOPClassUID")
        if sop_class == MEDIA_STORAGE_DIRECTORY:
            logger.info("ignoring DICOMDIR %s", path)
            continue
        series_uid = _text(ds, "SeriesInstanceUID")
        if not series_uid or not sop_class or not _text(ds, "StudyInstanceUID"):
            raise CorruptInstanceError(
                f"{path} lacks SOPClassUID, StudyInstanceUID or SeriesInstanceUID and cannot be assigned to a series"
            )
        grouped.setdefault(series_uid, []).append(header)
    refs = []
    for series_uid, items in grouped.items():
        first = items[0].dataset
        number = first.get("SeriesNumber")
        refs.append(
            SeriesRef(
                series_instance_uid=series_uid,
                study_instance_uid=_text(first, "StudyInstanceUID"),
                modality=_text(first, "Modality"),
                sop_class_uid=_text(first, "SOPClassUID"),
                series_description=_text(first, "SeriesDescription"),
                series_number=int(number) if number not in (None, "") else None,
                frame_of_reference_uid=_text(first, "FrameOfReferenceUID") or None,
                files=tuple(h.path for h in items),
                headers=tuple(items),
            )
        )
    refs.sort(key=lambda r: (r.series_number if r.series_number is not None else 1 << 30, r.series_instance_uid))
    logger.info("scanned %s: %d series", study_dir, len(refs))
    return refs


# ---------------------------------------------------------------------------------------------------------
# identification


def _contrast_agent(ds: Dataset) -> str:
    agent = _text(ds, "ContrastBolusAgent")
    if not agent and "ContrastBolusAgentSequence" in ds:  # Enhanced MR
        items = ds.ContrastBolusAgentSequence
        agent = ", ".join(str(item.get("CodeMeaning", "")) or "contrast" for item in items)
    return agent


def _referenced_series(ds: Dataset) -> tuple[str, ...]:
    return tuple(
        str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", []) if "SeriesInstanceUID" in item
    )


def _info(ref: SeriesRef) -> _SeriesInfo:
    ds = ref.headers[0].dataset if ref.headers else read_header(ref.files[0]).dataset
    return _SeriesInfo(
        ref=ref,
        image_type=tuple(v.upper() for v in _values(ds, "ImageType")),
        contrast_agent=_contrast_agent(ds),
        dataset=ds,
        referenced_series=_referenced_series(ds),
    )


def _short(ref: SeriesRef) -> str:
    number = f"series {ref.series_number}" if ref.series_number is not None else "no series number"
    return f"'{ref.series_description}' ({number})"


def _listing(series: Sequence[SeriesRef]) -> str:
    return "; ".join(f"{s.modality or '?'} {s.describe()}" for s in series) or "nothing"


def _rejection(info: _SeriesInfo, role: RoleRules, rules: SeriesRules, referenced: set[str]) -> str | None:
    """Why ``info`` cannot take ``role`` (None = it can); 'unconfirmed' marks the contrast fallback."""
    desc = info.ref.series_description
    if not matches_any(role.description_include, desc):
        return "description does not match"
    if matches_any(role.description_exclude, desc):
        return "description excluded for this role"
    for keyword, accepted in role.require.items():
        values = info.values(keyword)
        if values and not attribute_matches(values, accepted):
            return f"{keyword} {'/'.join(values)} not in {'/'.join(accepted)}"
    contrast = has_contrast_evidence(rules.contrast, desc, info.contrast_agent)
    if role.contrast == "required" and contrast is not True:
        if contrast is None and role.accept_unconfirmed_if_referenced and info.ref.series_instance_uid in referenced:
            return "unconfirmed"
        return "no contrast evidence" if contrast is None else "pre-contrast"
    if role.contrast == "forbidden" and contrast is True:
        return "post-contrast"
    return None


def _choose(
    role: RoleRules,
    candidates: Sequence[_SeriesInfo],
    rules: SeriesRules,
    referenced: set[str],
    received: Sequence[SeriesRef],
    warnings: list[str],
    excluded: Sequence[str] = (),
) -> SeriesRef:
    accepted: list[_SeriesInfo] = []
    unconfirmed: list[_SeriesInfo] = []
    reasons: list[str] = list(excluded)
    for info in candidates:
        why = _rejection(info, role, rules, referenced)
        if why is None:
            accepted.append(info)
        elif why == "unconfirmed":
            unconfirmed.append(info)
        else:
            reasons.append(f"{_short(info.ref)}: {why}")
    title = _ROLE_TITLES[role.name]
    if not accepted and unconfirmed:
        accepted = unconfirmed
        for info in unconfirmed:
            warnings.append(
                f"{info.ref.describe()} is used as the {title} because the SEG references it, "
                "although neither ContrastBolusAgent nor its description shows contrast"
            )
    if not accepted:
        raise MissingSeriesError(
            f"no {title} series found. Received: {_listing(received)}. Rejected for this role: "
            f"{'; '.join(reasons) or 'none'}. Adjust {rules.source} if the series is named differently."
        )

    def score(info: _SeriesInfo) -> tuple[int, int]:
        ref_bonus = int(rules.segmentation.prefer_referenced_series and info.ref.series_instance_uid in referenced)
        prefer = sum(attribute_matches(info.values(k), v) for k, v in role.prefer.items())
        return ref_bonus, prefer

    best = max(score(i) for i in accepted)
    top = [i for i in accepted if score(i) == best]
    if len(top) > 1 and rules.tie_break == "latest":
        top = _latest(top)
        if len(top) == 1:
            warnings.append(
                f"{len(accepted)} series could be the {title}; {top[0].ref.describe()} was used: the highest "
                f"SeriesNumber (tie_break: latest in {rules.source.name})"
            )
    if len(top) > 1:
        raise AmbiguousSeriesError(
            f"{len(top)} series match the {title} role equally: "
            f"{'; '.join(i.ref.describe() for i in top)}. Send only one, or adjust {rules.source}."
        )
    logger.info("%s: %s", title, top[0].ref.describe())
    return top[0].ref


def _latest(tied: Sequence[_SeriesInfo]) -> list[_SeriesInfo]:
    """``tie_break: latest``: the highest SeriesNumber, then the most instances; still tied: all of them."""

    def key(info: _SeriesInfo) -> tuple[int, int]:
        number = info.ref.series_number if info.ref.series_number is not None else -1
        return number, len(info.ref.files)

    best = max(key(i) for i in tied)
    return [i for i in tied if key(i) == best]


def _choose_seg(
    segs: Sequence[_SeriesInfo], t1ce: SeriesRef, rules: SeriesRules
) -> _SeriesInfo:
    if len(segs) == 1:
        return segs[0]
    on_t1ce = [s for s in segs if t1ce.series_instance_uid in s.referenced_series]
    if len(on_t1ce) == 1:
        return on_t1ce[0]
    tied = on_t1ce or list(segs)
    raise AmbiguousSeriesError(
        f"{len(tied)} DICOM-SEG series could be the lesion segmentation: "
        f"{'; '.join(s.ref.describe() for s in tied)}. Send only one, or adjust {rules.source}."
    )


def identify_series(series: Sequence[SeriesRef], rules: SeriesRules) -> IdentifiedSeries:
    """Pick the T1CE, T2 and SEG series of a study according to ``rules``."""
    if not series:
        raise MissingSeriesError("the study folder holds no DICOM series")
    studies = sorted({s.study_instance_uid for s in series})
    if len(studies) > 1:
        raise InvalidStudyError(
            f"the folder holds {len(studies)} studies (StudyInstanceUIDs {', '.join(studies)}); "
            "send one study at a time"
        )
    mr = [s for s in series if s.modality == "MR" and s.sop_class_uid in rules.mr_sop_classes]
    seg_refs = [s for s in series if s.sop_class_uid in rules.seg_sop_classes]
    if not mr:
        non_mr = [s for s in series if s not in seg_refs]
        if non_mr:
            modalities = ", ".join(sorted({s.modality or "unknown modality" for s in non_mr}))
            raise UnsupportedInstanceError(f"not an MR study: received {modalities}: {_listing(series)}")
        raise MissingSeriesError(f"no MR image series received. Received: {_listing(series)}")
    if not seg_refs:
        raise MissingSeriesError(f"no DICOM-SEG series found. Received: {_listing(series)}")
    warnings: list[str] = []
    seg_infos = [_info(s) for s in seg_refs]
    referenced = {uid for s in seg_infos for uid in s.referenced_series}

    eligible: list[_SeriesInfo] = []
    excluded: list[str] = []
    for ref in mr:
        info = _info(ref)
        if set(info.image_type) & rules.exclude_image_types:
            excluded.append(f"{_short(ref)}: excluded by ImageType {'/'.join(info.image_type)}")
        elif matches_any(rules.exclude_descriptions, ref.series_description):
            excluded.append(f"{_short(ref)}: excluded (FLAIR, T2*/SWI, diffusion, localizer... rules)")
        else:
            eligible.append(info)
    for line in excluded:
        logger.info("%s", line)

    t1ce = _choose(rules.t1ce, eligible, rules, referenced, series, warnings, excluded)
    others = [i for i in eligible if i.ref is not t1ce]
    t2 = _choose(rules.t2, others, rules, referenced, series, warnings, excluded)
    seg = _choose_seg(seg_infos, t1ce, rules)
    received = {s.series_instance_uid for s in series}
    if not seg.referenced_series:
        warnings.append(f"the SEG {seg.ref.describe()} does not say which series it was drawn on")
    elif not set(seg.referenced_series) & received:
        raise SegmentationError(
            f"the SEG {seg.ref.describe()} references series {', '.join(seg.referenced_series)}, "
            "which was not received; send the series the segmentation was drawn on"
        )
    elif t1ce.series_instance_uid not in seg.referenced_series:
        warnings.append(
            f"the SEG {seg.ref.describe()} was drawn on another series than the T1CE {t1ce.describe()}; "
            "its masks are mapped onto the T1CE grid"
        )
    chosen = {t1ce.series_instance_uid, t2.series_instance_uid, seg.ref.series_instance_uid}
    ignored = tuple(s for s in series if s.series_instance_uid not in chosen)
    for message in warnings:
        logger.warning("%s", message)
    return IdentifiedSeries(t1ce=t1ce, t2=t2, seg=seg.ref, warnings=tuple(warnings), ignored=ignored)
