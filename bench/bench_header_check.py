"""Benchmark: CPU per instance of the listener's header check (``node.scp.header.read_header``: the walk of the whole
dataset and the header values), with and without the walk's layout memo, on a full-size synthetic study.

The study's series are checked in order, as one association sends them: each instance from its first 64 KiB in
memory (as the listener keeps them) and its file. ``with memo`` is what the listener does (a slice whose top-level
elements repeat the slice before is walked only where it differs); ``whole walks`` checks every element of every
instance (``Walker(remember=False)``). The two alternate round by round, in this thread (``time.thread_time``).

    python bench/bench_header_check.py [--study DIR] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

import pydicom

from node.scp import dataset
from node.scp.header import Limits, read_header

HEAD_BYTES = 1 << 16  # node.scp.receive.HEAD_BYTES
LIMITS = Limits(max_inflated_bytes=1 << 30, max_element_bytes=64 << 20)


def _instances(study: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Per series folder, in file order: what ``read_header`` takes for each instance."""
    series: dict[str, list[tuple[Any, ...]]] = {}
    for path in sorted(study.rglob("*.dcm")):
        data = path.read_bytes()
        offset = 144 + int.from_bytes(data[140:144], "little")  # after the file meta group
        info = pydicom.dcmread(path, stop_before_pixels=True)
        series.setdefault(path.parent.name, []).append(
            (path, offset, str(info.file_meta.TransferSyntaxUID), str(info.SOPClassUID), str(info.SOPInstanceUID),
             data[offset:offset + HEAD_BYTES], len(data)))
    return series


def _check(instances: list[tuple[Any, ...]], remember: bool) -> float:
    """Microseconds of thread CPU per instance to check ``instances`` in order."""
    original = dataset.Walker.__init__

    def walker(self: dataset.Walker, *args: Any, **kwargs: Any) -> None:
        kwargs["remember"] = remember
        original(self, *args, **kwargs)

    dataset.forget_layout()
    dataset.Walker.__init__ = walker  # type: ignore[method-assign]
    try:
        start = time.thread_time()
        for path, offset, syntax, sop_class, sop_instance, head, size in instances:
            read_header(path, offset, syntax, sop_class, sop_instance, LIMITS, head=head, size=size)
        return (time.thread_time() - start) * 1e6 / len(instances)
    finally:
        dataset.Walker.__init__ = original  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, help="a study folder (default: one full-size synthetic study)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-header-") as folder:
        study = args.study
        if study is None:
            subprocess.run([sys.executable, "-m", "node.cli", "synth", "--out", folder, "--cases", "1", "--seed",
                            "11", "--size", "full", "--lesions", "1"], check=True, stdout=subprocess.DEVNULL)
            study = Path(folder) / "case0000"
        series = _instances(study)
        print(f"{'series':<8} {'instances':>9} {'whole walks us':>15} {'with memo us':>13} {'ratio':>6}")
        for name, instances in series.items():
            whole, memo = [], []
            for _ in range(args.rounds):
                whole.append(_check(instances, remember=False))
                memo.append(_check(instances, remember=True))
            ratio = statistics.median(whole) / statistics.median(memo)
            print(f"{name:<8} {len(instances):>9} {statistics.median(whole):>15.1f} {statistics.median(memo):>13.1f} "
                  f"{ratio:>5.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
