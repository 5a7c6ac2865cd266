"""Record the imaging pipeline's features on two deterministic full-size studies (the "same features" reference).

The reference is what ``tests/pipeline/test_fast_pipeline.py`` compares the current pipeline against: per lesion the
200 radiomic features the model consumes (and the lesion volume), and the pons reference statistics. It was recorded
with the pipeline *before* the issue 12 speed-ups (commit ab489d1) and must not be regenerated casually: doing so
moves the yardstick. Regenerate (only the numbers are stored; the studies are re-synthesised, ~30 s each):

    python tests/data/fastpipe/make_reference.py [--out tests/data/fastpipe/reference.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

#: the studies: name -> ``ainode synth`` arguments (one full-size case each, 203 instances)
STUDIES: dict[str, list[str]] = {
    "seed11": ["--cases", "1", "--seed", "11", "--size", "full"],
    "seed12-skull": ["--cases", "1", "--seed", "12", "--size", "full", "--skull"],
}


def synthesise(name: str, out: Path) -> Path:
    """Write study ``name`` under ``out`` and return its case folder."""
    from node.cli import main

    root = out / name
    if main(["synth", "--out", str(root), *STUDIES[name]]) != 0:
        raise RuntimeError(f"ainode synth failed for {name}")
    return next(p for p in sorted(root.iterdir()) if p.is_dir() and p.name != "truth")


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(float(value)) else float(value)


def record(case: Path) -> dict[str, Any]:
    """The numbers of one pipeline run on ``case``."""
    from node.imaging.features import extract_features
    from node.imaging.loading import load_study
    from node.imaging.pipeline import PipelineConfig
    from node.imaging.preprocess import preprocess

    config = PipelineConfig.load()
    pre = preprocess(load_study(case, config.rules), config.preprocess)
    lesions = extract_features(pre, config.radiomics, shells_mm=config.preprocess.shells_mm)
    pons = pre.pons
    pons_qc = {k: v for k, v in pons.qc.items() if isinstance(v, int | float | bool | str)}
    return {
        "pons_method": pons.method,
        "pons_stats": {"t1ce_mean": pons.t1ce_mean, "t1ce_sd": pons.t1ce_sd, "t2_mean": pons.t2_mean,
                       "t2_sd": pons.t2_sd},
        "pons_qc": pons_qc,
        "registration_metric": pre.registration.metric,
        "lesions": [
            {
                "segment_number": lesion.segment_number,
                "volume_ml": _num(lesion.qc.get("volume_ml")),
                "voxel_count": _num(lesion.qc.get("voxel_count")),
                "features": {k: _num(v) for k, v in lesion.features.items()},
            }
            for lesion in lesions
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("reference.json"))
    args = parser.parse_args(argv)
    doc: dict[str, Any] = {"studies": {}}
    with tempfile.TemporaryDirectory(prefix="fastpipe-ref-") as tmp:
        for name in STUDIES:
            doc["studies"][name] = {"synth": STUDIES[name], **record(synthesise(name, Path(tmp)))}
    args.out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
