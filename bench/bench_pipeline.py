"""Benchmark: load -> features on full-size synthetic studies, per stage, with peak memory.

Each measured run is a fresh ``ainode features`` process, so its peak RSS is the honest peak of one study.
Targets (issue 2, this 2-core machine): median total <= 20 s for one lesion, peak RSS <= 2.5 GB.

    python bench/bench_pipeline.py [--runs 3] [--seed 11] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

TARGET_TOTAL_S = 20.0
TARGET_RSS_MB = 2.5 * 1024


def _ainode() -> list[str]:
    return [sys.executable, "-m", "node.cli"]


def _synthesise(out: Path, runs: int, seed: int) -> list[Path]:
    subprocess.run(
        [*_ainode(), "synth", "--out", str(out), "--cases", str(runs), "--seed", str(seed),
         "--size", "full", "--lesions", "1"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return sorted(p for p in out.iterdir() if p.is_dir() and p.name not in {"truth"})


def _measure(case: Path, work: Path) -> dict[str, Any]:
    out_csv = work / f"{case.name}.csv"
    proc = subprocess.run(
        [*_ainode(), "features", str(case), "--out", str(out_csv)],
        check=True,
        capture_output=True,
        text=True,
    )
    summary: dict[str, Any] = json.loads(proc.stdout)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="number of studies (one run each)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", type=Path, help="keep the synthetic studies and CSVs here")
    args = parser.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="ainode-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        cases = _synthesise(work / "studies", args.runs, args.seed)
        stage_times: dict[str, list[float]] = {}
        rss: list[float] = []
        lesions: list[int] = []
        for case in cases:
            summary = _measure(case, work)
            study = summary["studies"][0]
            lesions.append(int(study["lesions"]))
            for stage, seconds in study["timings_s"].items():
                stage_times.setdefault(stage, []).append(float(seconds))
            rss.append(float(summary["peak_rss_mb"]))

        print(f"\nload -> features, full-size synthetic study, {len(cases)} run(s), lesions per study {lesions}")
        print(f"{'stage':<34}{'median s':>10}{'min s':>10}{'max s':>10}")
        print("-" * 64)
        for stage, values in stage_times.items():
            print(f"{stage:<34}{statistics.median(values):>10.2f}{min(values):>10.2f}{max(values):>10.2f}")
        print("-" * 64)
        total = statistics.median(stage_times["total"])
        peak = max(rss)
        print(f"{'peak RSS (MiB, max over runs)':<34}{peak:>10.0f}")
        print(f"\ntarget: median total <= {TARGET_TOTAL_S:.0f} s -> {total:.1f} s "
              f"[{'met' if total <= TARGET_TOTAL_S else 'MISSED'}]")
        print(f"target: peak RSS <= {TARGET_RSS_MB:.0f} MiB -> {peak:.0f} MiB "
              f"[{'met' if peak <= TARGET_RSS_MB else 'MISSED'}]")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
