"""Benchmark: CPU per instance of the listener's group commit (``Repository.record_spooled``), the ledger writer
thread's work, on a SQLite ledger in a temp folder.

Batches of ``--batch`` instances of two series of one receiving study (the steady state of a study arriving on
one association: the writer commits what arrived in its 100 ms window), ``--batches`` per round; the thread's
CPU time (``time.thread_time``: Python, SQLite and the WAL commit's fsync) per instance, for each round.

    python bench/bench_ledger_writer.py [--batch 20] [--batches 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from node.ledger.db import Ledger
from node.ledger.records import InstanceHeader, SpooledInstance
from node.ledger.repository import Repository

STUDY = "1.2.826.0.1.3680043.10.1"


def _item(number: int, series: str) -> SpooledInstance:
    header = InstanceHeader(
        study_instance_uid=STUDY, series_instance_uid=series, sop_instance_uid=f"{series}.{number}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax_uid="1.2.840.10008.1.2.1", modality="MR",
        series_description="t1_mprage_ce", series_number=int(series.rsplit(".", 1)[1]),
        frame_of_reference_uid=f"{STUDY}.9",
    )
    return SpooledInstance(header, f"a/b/{number}.dcm", 131_000, f"{number:064x}", calling_ae_title="PACS",
                           peer="127.0.0.1:11112", at=1_000.0 + number)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-writer-") as folder:
        ledger = Ledger.open(f"sqlite:///{Path(folder) / 'ledger.sqlite3'}")
        repository = Repository(ledger)
        counter = iter(range(1, 10**9))

        def batch() -> list[SpooledInstance]:
            return [_item(n, f"{STUDY}.{1 + n % 2}") for n in (next(counter) for _ in range(args.batch))]

        repository.record_spooled(batch())  # the study and its series exist: the steady state
        print(f"{'round':>5} {'instances':>9} {'CPU ms/instance':>16}")
        results = []
        for round_ in range(args.rounds):
            batches = [batch() for _ in range(args.batches)]
            start = time.thread_time()
            for items in batches:
                repository.record_spooled(items)
            per_instance = (time.thread_time() - start) * 1000 / (args.batch * args.batches)
            results.append(per_instance)
            print(f"{round_:>5} {args.batch * args.batches:>9} {per_instance:>16.3f}")
        print(f"{'median':>5} {'':>9} {statistics.median(results):>16.3f}")
        ledger.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
