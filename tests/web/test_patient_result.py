"""The dashboard's reading of the patient-level answer in a job's result JSON (node.web.results)."""

from __future__ import annotations

from typing import Any

from node.web.results import parse_result


def _data(patient: dict[str, Any] | None) -> dict[str, Any]:
    lesions = [
        {"segment_number": 1, "label": "Met 1", "volume_ml": 2.0, "subtype": "HR+/HER2-", "probability": 0.9,
         "index": False},
        {"segment_number": 2, "label": "Met 2", "volume_ml": 4.0, "subtype": "TN", "probability": 0.61, "index": True},
    ]
    return {"subtype_model": "with-primary", "lesions": lesions, "timings_s": {}, "patient": patient}


def test_the_summary_states_the_patient_level_answer_and_discordance() -> None:
    patient = {"index_segment": 2, "index_label": "Met 2", "rule": "largest", "subtype": "TN", "probability": 0.61,
               "primary_subtype": "HR+/HER2-", "discordant": True}
    result = parse_result(_data(patient))
    assert result.summary == "patient: TN (p=0.61), index segment 2; DISCORDANT with primary HR+/HER2- (2 lesions)"
    assert result.as_json()["patient"] == patient
    concordant = parse_result(_data({**patient, "primary_subtype": "TN", "discordant": False}))
    assert concordant.summary.endswith("concordant with primary TN (2 lesions)")
    unknown = parse_result(_data({**patient, "primary_subtype": None, "discordant": None}))
    assert unknown.summary == "patient: TN (p=0.61), index segment 2 (2 lesions)"


def test_results_without_a_patient_level_answer_read_as_before() -> None:
    result = parse_result(_data(None))
    assert result.patient is None
    assert result.summary == "HR+/HER2- (p=0.90) + 1 more lesion"


def _lesion_row() -> str:
    """The predicted-lesion row of templates/study.html, as shipped (the test renders the real markup)."""
    from node.web.pages import templates

    assert templates.loader is not None
    source = templates.loader.get_source(templates, "study.html")[0]
    start = source.index("  <tr{% if l.out_of_distribution %}")
    return source[start:source.index("  </tr>", start) + len("  </tr>")]


def test_study_page_shows_each_lesions_site_and_cautions() -> None:
    from node.web.pages import templates

    data = _data(None)
    for lesion in data["lesions"]:
        lesion |= {"probabilities": {lesion["subtype"]: lesion["probability"]}, "heads": {}, "top_features": []}
    data["lesions"][1] |= {"site": "left frontal lobe (82 % of the lesion)",
                           "cautions": ["low confidence: subtype 0.61 < 0.80",
                                        "heads disagree: subtype TN is hormone-receptor negative but ER is "
                                        "predicted positive"]}
    result = parse_result(data)
    html = "".join(templates.from_string(_lesion_row()).render(l=lesion) for lesion in result.lesions)
    assert html.count('class="site"') == 1 and "left frontal lobe (82 % of the lesion)" in html
    assert html.count('class="caution"') == 2 and "low confidence: subtype 0.61 &lt; 0.80" in html
    assert "heads disagree: subtype TN" in html
