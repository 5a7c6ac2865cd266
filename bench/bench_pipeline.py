"""Benchmark: the whole job on full-size synthetic studies, per stage, with peak memory (issue 12 item 4).

One run = a fresh Python process that imports the node, processes one full-size study (203 instances: T1CE, T2,
SEG) end to end with ``process_study`` (load -> preprocess -> features -> sites -> predict -> SR + companion), then
a second, different study in the same process ("warm": imports, the MNI template and atlas already in memory, as in
a warm worker); and a third process that first does what ``ainode worker`` does before its first job
(``node.jobs.warm.preload``: imports, template, atlas, model set; timed apart) and then one study ("preloaded": the
first job of a worker). The table prints the median over ``--runs`` runs of every stage and the peak RSS.

Stages: load; resample, brain mask and N4 (both sequences); registration (T2 -> T1CE); pons (MNI template
registration and the ROI statistics); ``preprocess`` is the elapsed time of all of these together; features; sites
(lesion location, reusing the template registration); predict; SR + companion.
Model loading is counted separately (the warm worker caches it) and is not part of the job time.

Targets (issue 12, this 2-core machine): job time (total minus model loading) <= 6 s, peak RSS <= 1.5 GB.

    python bench/bench_pipeline.py [--runs 3] [--seed 11] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_JOB_S = 6.0
TARGET_RSS_MB = 1.5 * 1024
REPO = Path(__file__).resolve().parents[1]

#: (row label, key in process_study's timings)
ROWS: tuple[tuple[str, str], ...] = (
    ("imports (cold only)", "imports"),
    ("models (loaded once; cached warm)", "models"),
    ("load", "pipeline.load"),
    ("resample (both sequences)", "pipeline.preprocess.resample"),
    ("brain mask (both)", "pipeline.preprocess.brain_mask"),
    ("N4 (both)", "pipeline.preprocess.n4"),
    ("registration T2->T1CE", "pipeline.preprocess.registration"),
    ("pons (MNI template + ROI stats)", "pipeline.preprocess.pons"),
    ("normalise", "pipeline.preprocess.normalise"),
    ("preprocess (the rows above)", "pipeline.preprocess"),
    ("features", "pipeline.features"),
    ("sites", "pipeline.sites"),
    ("predict", "predict"),
    ("SR + companion", "sr"),
    ("job (total - models)", "job"),
)


def _synthesise(out: Path, cases: int, seed: int) -> list[Path]:
    subprocess.run(
        [sys.executable, "-m", "node.cli", "synth", "--out", str(out), "--cases", str(cases), "--seed", str(seed),
         "--size", "full", "--workers", "2"],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return sorted(p for p in out.iterdir() if p.is_dir() and p.name != "truth")


def _child(studies: list[Path], out: Path, models: Path, preload: bool = False) -> int:
    """Process ``studies`` one after the other in this process; print one JSON line of timings and peak RSS. With
    ``preload``, first what a worker does before its first job (``node.jobs.warm.preload``: imports, the template and
    atlas, the model set), timed apart."""
    start = time.perf_counter()
    import resource

    from node.imaging.pipeline import PipelineConfig
    from node.jobs.process import process_study

    imports = time.perf_counter() - start
    preloaded = 0.0
    if preload:
        from node.config import Settings
        from node.jobs.warm import preload as worker_preload

        preloaded = worker_preload(Settings(models_dir=models)).seconds
    results: list[dict[str, Any]] = []
    for index, study in enumerate(studies):
        config = PipelineConfig.load()
        result = process_study(study, out / f"{index}", models_dir=models, config=config)
        timings = dict(result.timings)
        timings["job"] = timings["total"] - timings.get("models", 0.0)
        if index == 0:
            timings["imports"] = imports
            if preload:
                timings["preload"] = preloaded
        results.append({"timings": timings,
                        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0})  # fmt: skip
    print(json.dumps(results))
    return 0


def _run(studies: list[Path], work: Path, models: Path, preload: bool = False) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", "--models", str(models), "--out", str(work),
         *(["--preload"] if preload else []), *map(str, studies)],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    runs: list[dict[str, Any]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return runs


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):>9.2f}" if values else f"{'-':>9}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes (each: one cold + one warm study)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", type=Path, help="keep the synthetic studies and results here")
    parser.add_argument("--studies", type=Path, help="use the case folders under this synth output instead")
    parser.add_argument("--models", type=Path, default=REPO / "models" / "demo")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preload", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.paths, args.out, args.models, args.preload)

    work = args.keep or Path(tempfile.mkdtemp(prefix="ainode-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.studies:
            cases = sorted(p for p in args.studies.iterdir() if p.is_dir() and p.name != "truth")
        else:
            cases = _synthesise(work / "studies", args.runs + 1, args.seed)
        if len(cases) < 2:
            raise SystemExit("need at least two studies (one cold, one warm per run)")
        cold: dict[str, list[float]] = {}
        preloaded: dict[str, list[float]] = {}
        warm: dict[str, list[float]] = {}
        rss_cold: list[float] = []
        rss_warm: list[float] = []
        rss_preloaded: list[float] = []
        for run in range(args.runs):
            pair = [cases[run % len(cases)], cases[(run + 1) % len(cases)]]
            first, second = _run(pair, work / f"run{run}", args.models)
            for target, result in ((cold, first), (warm, second)):
                for key, value in result["timings"].items():
                    target.setdefault(key, []).append(float(value))
            rss_cold.append(float(first["peak_rss_mb"]))
            rss_warm.append(float(second["peak_rss_mb"]))
            (after_preload,) = _run([cases[run % len(cases)]], work / f"run{run}-preloaded", args.models, preload=True)
            for key, value in after_preload["timings"].items():
                preloaded.setdefault(key, []).append(float(value))
            rss_preloaded.append(float(after_preload["peak_rss_mb"]))

        cpus = os.cpu_count()
        load = os.getloadavg()
        print(f"\nwhole job on full-size synthetic studies (203 instances), median of {args.runs} fresh process(es);")
        print(f"{cpus} CPU(s), load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
        print("cold: a fresh process's first study; preloaded: a worker's first study after its preload (what "
              "`ainode worker` does, worker_preload on by default); warm: a process's second study")
        print(f"{'stage (seconds)':<40}{'cold':>9}{'preload':>9}{'warm':>9}")
        print("-" * 67)
        for label, key in (("preload (worker start, before any job)", "preload"), *ROWS):
            print(f"{label:<40}{_median(cold.get(key, []))}{_median(preloaded.get(key, []))}"
                  f"{_median(warm.get(key, []))}")
        print("-" * 67)
        print(f"{'peak RSS (MiB, max over runs)':<40}{max(rss_cold):>9.0f}{max(rss_preloaded):>9.0f}"
              f"{max(rss_warm):>9.0f}")
        job_cold = statistics.median(cold["job"])
        job_preloaded = statistics.median(preloaded["job"])
        job_warm = statistics.median(warm["job"])
        peak = max(rss_cold + rss_preloaded + rss_warm)

        def verdict(seconds: float) -> str:
            return "met" if seconds <= TARGET_JOB_S else "MISSED"

        print(f"\ntarget: job <= {TARGET_JOB_S:.0f} s -> cold {job_cold:.1f} s [{verdict(job_cold)}], preloaded "
              f"{job_preloaded:.1f} s [{verdict(job_preloaded)}], warm {job_warm:.1f} s [{verdict(job_warm)}]")
        print(f"target: peak RSS <= {TARGET_RSS_MB:.0f} MiB -> {peak:.0f} MiB "
              f"[{'met' if peak <= TARGET_RSS_MB else 'MISSED'}]")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
