"""Not-assessed lesions on the dashboard: the result JSON's ``not_assessed`` list read back, the studies-list
summary, and the study page's rows (the real template)."""

from __future__ import annotations

import json
from pathlib import Path

from node.jobs.process import ProcessResult
from node.jobs.summary import result_json
from node.sr.assessment import NotAssessedLesion
from node.vocabulary import NotAssessedReason
from node.web.pages import templates
from node.web.results import parse_result

FOV_TEXT = "no usable pons intensity reference: only 0 % of the ROI is inside the T2 field of view"


def _result(lesions: tuple[()] = ()) -> ProcessResult:
    refused = (
        NotAssessedLesion(1, "Lesion 1", NotAssessedReason.REFERENCE_OUTSIDE_FOV, FOV_TEXT, 2.5),
        NotAssessedLesion(2, "Peritumoral oedema", NotAssessedReason.SEGMENT_OEDEMA, "its label names oedema"),
    )  # fmt: skip
    return ProcessResult("1.2.3", Path("/r/sr.dcm"), (Path("/r/sc-1.dcm"),), lesions, "without-primary", (),
                         {"total": 1.0}, not_assessed=refused)


def test_not_assessed_lesions_are_read_back_and_summarised() -> None:
    data = json.loads(json.dumps(result_json(_result())))
    assert data["lesions"] == []
    assert data["not_assessed"][0] == {
        "segment_number": 1, "label": "Lesion 1", "volume_ml": 2.5, "reason": "reference-outside-fov",
        "reason_code": "99BCMETS:REFOUTSIDEFOV", "reason_meaning": "Pons reference outside the field of view",
        "text": FOV_TEXT,
    }
    assert data["not_assessed"][1]["reason_code"] == "SCT:79654002" and data["not_assessed"][1]["volume_ml"] is None
    result = parse_result(data)
    assert result.summary == "not assessed: Edema; Pons reference outside the field of view"
    assert result.as_json()["not_assessed"] == data["not_assessed"]
    # an older result JSON without the key still reads
    assert parse_result({k: v for k, v in data.items() if k != "not_assessed"}).not_assessed == ()


def test_study_page_lists_each_not_assessed_segment_with_its_reason() -> None:
    result = parse_result(json.loads(json.dumps(result_json(_result()))))

    class Job:
        id = 7

    job = Job()
    job.result = result  # type: ignore[attr-defined]
    templates.get_template("study.html")  # the shipped template compiles
    html = templates.from_string(
        "{% for j in jobs %}{% for n in j.result.not_assessed %}"
        + _rows_block()
        + "{% endfor %}{% endfor %}"
    ).render(jobs=[job])
    assert html.count('class="not-assessed"') == 2
    assert "Not assessed</strong> (no prediction): Pons reference outside the field of view" in html
    assert "2.50 mL" in html and "99BCMETS:REFOUTSIDEFOV" in html and "SCT:79654002" in html


def _rows_block() -> str:
    """The not-assessed row of templates/study.html, as shipped (so the test renders the real markup)."""
    assert templates.loader is not None
    source = templates.loader.get_source(templates, "study.html")[0]
    start = source.index('  <tr class="not-assessed">')
    return source[start:source.index("  </tr>", start) + len("  </tr>")]
