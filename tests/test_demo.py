"""``ainode demo``: the README's main job, end to end (listener, real worker process, SR back to a PACS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.cli import main
from node.sr.validate import validate_sr


def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--work", str(tmp_path), "--timeout", "300"]) == 0
    out = capsys.readouterr().out
    assert "Research use only, not for diagnosis" in out
    assert "Lesion 1 (SEG segment 1" in out
    assert "Synthetic ground truth" in out
    assert "Deep model bcbm-multimodal-dl-demo" in out  # the deep model beside the radiomics models (issue 13)
    assert "DEMONSTRATION models (trained on synthetic data, never for patients) are allowed for this demo" in out
    reports = sorted((tmp_path / "pacs").glob("*-SR.dcm"))
    assert len(reports) == 1
    assert validate_sr(reports[0]) == []
    # the node's own ledger says what happened
    assert main(["status", "--spool-dir", str(tmp_path / "spool")]) == 0
    status = capsys.readouterr().out
    assert "  done  " in status and "sent" in status
