"""``ainode serve`` as an operator runs it: a process that listens, answers C-ECHO and stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import

from node.cli import main
from tests.support.net import free_port
from tests.support.waiting import wait_for


def test_bad_option_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "99999", "--spool-dir", str(tmp_path)]) == 2
    assert "option --port: 99999 is outside" in capsys.readouterr().err


def test_serve_listens_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AINODE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "serve", "--port", str(port), "--spool-dir", str(tmp_path / "spool"),
         "--ae-title", "TESTNODE"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert f"TESTNODE listening on 0.0.0.0:{port}" in banner, banner
        ae = AE(ae_title="PACS")
        ae.add_requested_context(Verification)

        def established() -> Association | None:
            assoc = ae.associate("127.0.0.1", port, ae_title="TESTNODE")
            return assoc if assoc.is_established else None

        assoc = wait_for(established, 30, "an association with ainode serve", interval=0.2)
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert (tmp_path / "spool" / "ledger.sqlite3").is_file()
        assert (tmp_path / "spool" / "worker.log").is_file()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
