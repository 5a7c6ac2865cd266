"""The ``ainode`` command line as a shell pipeline uses it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from node.ledger.db import Ledger
from node.ledger.repository import InstanceHeader, Repository

ROOT = Path(__file__).resolve().parents[1]


def _ledger_with_studies(url: str, count: int) -> None:
    ledger = Ledger.open(url)
    repo = Repository(ledger)
    for n in range(count):
        uid = f"1.2.826.0.1.3680043.8.498.55.{n}"
        header = InstanceHeader(uid, f"{uid}.1", f"{uid}.1.1", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1",
                                "MR", "T1", 1, None)
        repo.record_instance(header, path=f"x/{n}.dcm", size_bytes=10, sha256=f"{n:064d}", calling_ae_title="PACS",
                             peer="127.0.0.1", at=1000.0 + n)
    ledger.dispose()


def test_status_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``ainode status | head -1``: the reader goes away; no "internal error (BrokenPipeError)", status 0."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    _ledger_with_studies(url, 40)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AINODE_")}
    for command in (["status"], ["status", "--json"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the first line: every write fails with EPIPE
        try:
            done = subprocess.run([sys.executable, "-m", "node.cli", *command, "--database", url], cwd=ROOT,
                                  env=env, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
        finally:
            os.close(write_end)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
