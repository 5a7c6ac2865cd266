"""``ainode synth``: write a synthetic cohort of DICOM studies (MR T1CE + T2 + DICOM-SEG) with labels and truth.

Example: ``ainode synth --out /tmp/cohort --cases 20 --seed 7 --size small --effect 1.0 --sites 3 --pons-seg``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from pathlib import Path

from node.errors import ConfigError
from node.synth.generate import generate_cohort
from node.synth.render import SIZES, Size

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``synth`` sub-command."""
    parser = sub.add_parser(
        "synth",
        help="write synthetic DICOM studies (T1CE, T2, SEG) with labels",
        description="Write deterministic synthetic breast-cancer brain-metastasis studies: per case "
        "OUT/<case>/{t1ce,t2,seg}/*.dcm, plus OUT/labels.csv and OUT/truth/<case>.json.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--cases", type=int, required=True, help="number of patients")
    parser.add_argument("--seed", type=int, required=True, help="random seed (same seed, same bytes)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="small (2 mm, fast) or full (1 mm)")
    parser.add_argument(
        "--effect",
        type=float,
        default=1.0,
        help="strength of the hidden subtype effect on lesion appearance (0 = no imaging signal; default 1.0)",
    )
    parser.add_argument("--sites", type=int, default=3, help="number of acquisition sites/vendors (default 3)")
    parser.add_argument("--pons-seg", action="store_true", help="add a 'Pons reference' segment to each SEG")
    parser.add_argument(
        "--workers", type=int, default=1, help="parallel processes (output is identical for any number)"
    )
    parser.add_argument(
        "--skull", action="store_true", help="surround the brain with skull and scalp (default: skull-stripped)"
    )
    parser.add_argument(
        "--conversion-rate",
        type=float,
        default=0.25,
        help="probability that the metastasis subtype differs from the primary (default 0.25)",
    )
    parser.add_argument(
        "--lesions", type=int, choices=(1, 2, 3), help="lesions per case (default: 1-3, drawn per patient)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Generate the cohort and print a short summary."""
    if args.cases < 1:
        raise ConfigError("--cases must be at least 1")
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.sites < 1:
        raise ConfigError("--sites must be at least 1")
    if args.effect < 0:
        raise ConfigError("--effect must be 0 or more")
    if not 0.0 <= args.conversion_rate <= 1.0:
        raise ConfigError("--conversion-rate must be between 0 and 1")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    size: Size = args.size
    start = time.perf_counter()
    truths = generate_cohort(
        out,
        args.cases,
        args.seed,
        size=size,
        effect=args.effect,
        sites=args.sites,
        pons_seg=args.pons_seg,
        conversion_rate=args.conversion_rate,
        skull=args.skull,
        workers=args.workers,
        lesions=args.lesions,
    )
    elapsed = time.perf_counter() - start
    n_lesions = sum(len(t.data["lesions"]) for t in truths)
    subtypes = Counter(t.data["metastasis_subtype"] for t in truths)
    converted = sum(bool(t.data["converted"]) for t in truths)
    sites = Counter(t.data["site"]["manufacturer"] for t in truths)
    print(
        f"ainode synth: {len(truths)} case(s), {n_lesions} lesion(s) in {out} ({size}, seed {args.seed}, "
        f"effect {args.effect}) in {elapsed:.1f} s"
    )
    print("  metastasis subtypes: " + ", ".join(f"{k} {v}" for k, v in sorted(subtypes.items())))
    print(f"  converted from primary: {converted}/{len(truths)}")
    print("  sites: " + ", ".join(f"{k} {v}" for k, v in sorted(sites.items())))
    print(f"  labels: {out / 'labels.csv'}; truth: {out / 'truth'}")
    return 0
