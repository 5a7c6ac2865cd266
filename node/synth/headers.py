# mypy: disable-error-code="no-untyped-call"
"""DICOM identity and acquisition headers of a synthetic case (patient, study, series, site protocol).

Everything derives from the seed: UIDs from ``pydicom.uid.generate_uid(entropy_srcs=...)``, study date
(2014–2023), time and birth date (age 32–79) from the case's random stream 4. Patients are female, named
``Synthetic^CaseNNNN`` with ID ``SYN-<seed>-NNNN`` (see :mod:`node.synth.cohort`). T1CE and T2 share the
study and the frame of reference. The signed site stores int16 pixels with RescaleSlope = max|value| / 30000.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import SimpleITK as sitk
from pydicom.uid import generate_uid

from node.synth.dicom_series import MRSeriesHeader
from node.synth.render import T2_THICKNESS_MM, SynthCase, case_rng
from node.synth.sites import Site

logger = logging.getLogger(__name__)

SERIES_NUMBERS = {"t2": 3, "t1ce": 10, "seg": 100}


def synthetic_uid(seed: int, case_id: str, what: str) -> str:
    """A reproducible UID for ``what`` of a case."""
    return str(generate_uid(entropy_srcs=["bcbm-ainode-synth", str(seed), case_id, what]))


def _rescale(site: Site, real: sitk.Image) -> tuple[float, float]:
    if not site.signed_rescaled:
        return 1.0, 0.0
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(real)
    slope = max(abs(stats.GetMaximum()), abs(stats.GetMinimum()), 1e-6) / 30000.0
    return float(f"{slope:.6g}"), 0.0


def series_headers(case: SynthCase, seed: int) -> tuple[MRSeriesHeader, MRSeriesHeader]:
    """(T1CE header, T2 header) of a rendered case."""
    spec, site = case.spec, case.site
    rng = case_rng(seed, spec.index, 4)
    study = dt.date(2014, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3650)))
    age = int(rng.integers(32, 80))
    birth = dt.date(study.year - age, int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    hour, minute, second = int(rng.integers(7, 19)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    cid = spec.case_id
    common: dict[str, Any] = {
        "patient_name": spec.patient_name,
        "patient_id": spec.patient_id,
        "patient_birth_date": birth.strftime("%Y%m%d"),
        "patient_sex": "F",
        "study_instance_uid": synthetic_uid(seed, cid, "study"),
        "study_date": study.strftime("%Y%m%d"),
        "study_time": f"{hour:02d}{minute:02d}{second:02d}",
        "accession_number": f"SA{seed % 100000:05d}{spec.index:04d}",
        "study_id": f"{spec.index + 1}",
        "study_description": "MR BRAIN WITH AND WITHOUT CONTRAST",
        "referring_physician_name": "Synthetic^Referrer",
        "frame_of_reference_uid": synthetic_uid(seed, cid, "frame-of-reference"),
        "manufacturer": site.manufacturer,
        "manufacturer_model_name": site.model_name,
        "institution_name": site.institution_name,
        "station_name": site.station_name,
        "software_versions": site.software_versions,
        "device_serial_number": f"SYN{site.index:05d}",
        "magnetic_field_strength": site.field_strength,
        "signed": site.signed_rescaled,
    }
    headers = []
    for role, proto, image in (("t1ce", site.t1ce, case.t1ce), ("t2", site.t2, case.t2)):
        slope, intercept = _rescale(site, image)
        spacing = image.GetSpacing()
        headers.append(
            MRSeriesHeader(
                **common,
                series_instance_uid=synthetic_uid(seed, cid, f"series-{role}"),
                series_number=SERIES_NUMBERS[role],
                series_description=proto.series_description,
                scanning_sequence=proto.scanning_sequence,
                sequence_variant=proto.sequence_variant,
                scan_options=proto.scan_options,
                mr_acquisition_type=proto.mr_acquisition_type,
                sequence_name=proto.sequence_name,
                repetition_time=proto.repetition_time,
                echo_time=proto.echo_time,
                inversion_time=proto.inversion_time,
                flip_angle=proto.flip_angle,
                echo_train_length=proto.echo_train_length,
                contrast_bolus_agent=site.contrast_agent if role == "t1ce" else None,
                slice_thickness=T2_THICKNESS_MM if role == "t2" else spacing[2],
                spacing_between_slices=spacing[2],
                rescale_slope=slope,
                rescale_intercept=intercept,
            )
        )
    return headers[0], headers[1]
