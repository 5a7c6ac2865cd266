"""SIGKILL of the node (listener and, with it, its worker) while four PACS send at once: every instance that was
acknowledged is in the spool and the ledger after the restart, and every study still gets its SR."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
from pynetdicom import AE, StoragePresentationContexts

from tests.chaos.conftest import NodeFactory, Pacs, study_files
from tests.chaos.harness import ServeProcess, sop_uid, store, study_uid, wait_for

SENDERS = 4
KILL_AT = 0.35  # share of all instances acknowledged when the node is killed


class Sender(threading.Thread):
    """A PACS sending one study, one C-STORE at a time over one association, noting what was acknowledged."""

    def __init__(self, port: int, files: list[Path], calling: str) -> None:
        super().__init__(daemon=True)
        self.port, self.files, self.calling = port, files, calling
        self.acknowledged: list[str] = []
        self.failed = 0

    def run(self) -> None:
        ae = AE(ae_title=self.calling)
        ae.requested_contexts = StoragePresentationContexts[:120]
        ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 20
        assoc = ae.associate("127.0.0.1", self.port, ae_title="AINODE")
        if not assoc.is_established:
            self.failed = len(self.files)
            return
        for path in self.files:
            try:
                response = assoc.send_c_store(path)
            except RuntimeError:  # the association died with the node
                self.failed += 1
                continue
            if response and "Status" in response and int(response.Status) == 0:
                self.acknowledged.append(sop_uid(path))
            else:
                self.failed += 1
        if assoc.is_established:
            assoc.release()


def _missing(node: ServeProcess, acknowledged: list[str]) -> list[str]:
    """Acknowledged SOP instances that are not in the ledger, or whose spooled file is gone or differs."""
    missing = []
    for sop in acknowledged:
        known = node.repo.find_instance(sop)
        path = node.spool / known.path if known is not None else None
        if known is None or path is None or not path.is_file() or \
                hashlib.sha256(path.read_bytes()).hexdigest() != known.sha256:
            missing.append(sop)
    return missing


@pytest.mark.slow
def test_listener_killed_during_four_senders(studies: list[Path], pacs: Pacs, make_node: NodeFactory) -> None:
    pacs.start()
    node = make_node(pacs.destination)
    node.start().wait_listening()
    node.wait_worker_ready()
    files = [study_files(study) for study in studies[:SENDERS]]
    total = sum(len(f) for f in files)
    senders = [Sender(node.port, f, f"PACS{n}") for n, f in enumerate(files)]
    for sender in senders:
        sender.start()
    wait_for(lambda: sum(len(s.acknowledged) for s in senders) >= total * KILL_AT, 300, "instances acknowledged",
             interval=0.05)
    node.kill()  # SIGKILL of ainode serve alone, mid-transfer
    killed_at = time.monotonic()
    for sender in senders:
        sender.join(60)
    acknowledged = [sop for s in senders for sop in s.acknowledged]
    wait_for(lambda: node.node_processes() == [], 15, "the worker gone with the node")

    node.start().wait_listening()
    restarted_s = time.monotonic() - killed_at
    missing = _missing(node, acknowledged)
    assert missing == [], f"{len(missing)} acknowledged instance(s) lost"
    # the PACS sends each interrupted study again, whole (identical copies are acknowledged, nothing changes)
    resent_statuses = [status for f in files for status in store(node.port, f)]
    assert set(resent_statuses) == {0}
    uids = [study_uid(study) for study in studies[:SENDERS]]
    wait_for(lambda: all(pacs.reports(uid) for uid in uids), 900, "an SR for every study", interval=1.0)
    done_s = time.monotonic() - killed_at
    print(f"\nCHAOS listener-kill: {SENDERS} senders, {total} instances, {len(acknowledged)} acknowledged before "
          f"the SIGKILL, {len(missing)} missing after the restart; node back in {restarted_s:.1f} s; "
          f"{len(uids)}/{len(uids)} SRs {done_s:.0f} s after the kill; "
          f"SRs at the PACS: {len(pacs.reports())}")
    assert node.stop() < 10
    assert node.node_processes() == []
