"""Render the companion of a synthetic study as PNG files for the documentation (docs/sr.md).

``python -m node.cli.companion_example`` synthesises the small study of the tests (``ainode synth --cases 1
--seed 1 --size small``), runs the real job on it (:func:`node.jobs.process.process_study`, with the shipped
demonstration models ``models/demo``) and saves the Secondary Capture companion pages it wrote, exactly as the
PACS receives them, as ``docs/images/companion-result.png`` (the first lesion's result page) and
``docs/images/companion-qc.png`` (the QC key image). Deterministic: the same code gives the same files, so rerun
it after changing anything the companion shows. ``--check`` exits 1 when the committed files differ.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from node.cli.synth import register as register_synth
from node.jobs.process import process_study

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "docs" / "images"
DEFAULT_MODELS = ROOT / "models" / "demo"
RESULT_PNG = "companion-result.png"
QC_PNG = "companion-qc.png"


def render(out: Path, models: Path, seed: int = 1) -> list[Path]:
    """Synthesise, process and save the first result page and the QC key image page; returns the PNG paths."""
    with tempfile.TemporaryDirectory(prefix="companion-example-") as tmp:
        parser = argparse.ArgumentParser()
        register_synth(parser.add_subparsers())
        args = parser.parse_args(["synth", "--out", f"{tmp}/synth", "--cases", "1", "--seed", str(seed),
                                  "--size", "small"])
        if args.handler(args) != 0:
            raise SystemExit("synthesising the example study failed")
        result = process_study(Path(tmp) / "synth" / "case0000", Path(tmp) / "out", models_dir=models,
                               companions=("sc",))
        pages = sorted((pydicom.dcmread(p) for p in result.companion_paths), key=lambda ds: int(ds.InstanceNumber))
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, ds in ((RESULT_PNG, pages[0]), (QC_PNG, pages[-1])):
            path = out / name
            Image.fromarray(np.asarray(ds.pixel_array, dtype=np.uint8), mode="RGB").save(path, format="PNG")
            written.append(path)
        return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the PNG files (docs/images)")
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="model set (models/demo)")
    parser.add_argument("--seed", type=int, default=1, help="synthetic study seed (1, as in the tests)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the files in --out differ")
    args = parser.parse_args(argv)
    if not args.check:
        for path in render(args.out, args.models, args.seed):
            print(path)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = render(Path(tmp), args.models, args.seed)
        stale = [p.name for p in fresh if not (args.out / p.name).is_file()
                 or (args.out / p.name).read_bytes() != p.read_bytes()]
    for name in stale:
        print(f"{args.out / name} is stale: run python -m node.cli.companion_example", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
