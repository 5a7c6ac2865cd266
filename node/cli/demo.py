"""``ainode demo``: the whole node on embedded defaults, end to end, in one command.

1. synthesise a study (MR T1CE + T2 + DICOM-SEG; no patient data);
2. start a receiving AE standing in for the PACS, and the node (listener + a real worker process, embedded
   broker, SQLite ledger, all in a work folder) with that AE as its destination;
3. send the study to the node with a C-STORE client, as a PACS would;
4. wait until the node's Structured Report arrives at the receiving AE, and print what the radiologist sees.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt

from node.cli.serve import settings_from_args, start_node
from node.delivery.scu import send_files
from node.errors import ProcessingError
from node.values import Destination

SR_MODALITY = "SR"
#: the demonstration deep model (models/make_dl_demo.py), run beside the radiomics demo models
DEMO_DL_DIR = Path(__file__).resolve().parents[2] / "models" / "demo-dl"
RECEIVER_AE = "DEMOPACS"


class ReceivingAE:
    """A minimal Storage SCP standing in for the PACS: stores everything it receives under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.received: list[Path] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=RECEIVER_AE)
        ae.supported_contexts = StoragePresentationContexts
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        assert server is not None  # block=False always returns the server
        self._server = server
        self.port = int(self._server.server_address[1])

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            path = self.folder / f"{len(self.received):04d}-{ds.Modality}.dcm"
            ds.save_as(path, enforce_file_format=True)
            self.received.append(path)
        return 0x0000

    def structured_reports(self) -> list[Path]:
        with self._lock:
            return [p for p in self.received if p.name.endswith(f"-{SR_MODALITY}.dcm")]

    def stop(self) -> None:
        self._server.shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _text_items(ds: Dataset) -> list[str]:
    """Every TEXT content item of an SR, depth first (the report's human-readable lines)."""
    lines: list[str] = []
    for item in getattr(ds, "ContentSequence", []):
        if getattr(item, "ValueType", "") == "TEXT":
            lines.append(str(item.TextValue))
        lines.extend(_text_items(item))
    return lines


_SUMMARY_LINE = re.compile(r"^(AI prediction|Lesion \d+ \(SEG segment|Deep model )")


def summarise(sr_path: Path) -> str:
    """The SR's human-readable summary: its header line, the disclaimer and one line per lesion."""
    ds = pydicom.dcmread(sr_path)
    header = (f"{ds.get('SeriesDescription', 'AI result')} — {ds.get('Manufacturer', '')} "
              f"(completion {ds.get('CompletionFlag', '?')}, verification {ds.get('VerificationFlag', '?')})")
    lines = [line for line in _text_items(ds) if _SUMMARY_LINE.match(line)]
    return "\n".join([header, *(f"  {line}" for line in lines)])


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="run the whole node end to end on a synthetic study (no setup needed)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="work folder (kept); default: a temporary folder, removed")
    parser.add_argument("--size", choices=("small", "full"), default="small", help="synthetic study size")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the SR")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        return _demo(args.work, args)
    with tempfile.TemporaryDirectory(prefix="ainode-demo-") as tmp:
        return _demo(Path(tmp), args)


def _demo(work: Path, args: argparse.Namespace) -> int:
    from node.synth.generate import generate_cohort

    for part in ("study", "spool", "pacs"):  # a rerun starts afresh (an identical re-send is never re-processed)
        shutil.rmtree(work / part, ignore_errors=True)
    print(f"[1/4] synthesising a {args.size} study (MR T1CE + T2 + DICOM-SEG) in {work / 'study'} ...", flush=True)
    generate_cohort(work / "study", 1, args.seed, size=args.size)
    files = sorted((work / "study" / "case0000").rglob("*.dcm"))

    receiver = ReceivingAE(work / "pacs")
    node_port = _free_port()
    namespace = argparse.Namespace(
        config=None, ae_title="AINODE", port=node_port, destination=[f"{RECEIVER_AE}@127.0.0.1:{receiver.port}"],
        spool_dir=work / "spool", database=None, quiet_period=2.0, broker=None,
        models=None, allow_demo_models="true",  # the demo runs the shipped demonstration models, and says so
    )
    settings = replace(settings_from_args(namespace), broker_url=None,  # always the embedded broker
                       dl_model_dir=DEMO_DL_DIR)  # and the demonstration deep model (issue 13)
    print(f"[2/4] starting the node (AINODE on port {node_port}, embedded broker, SQLite ledger) and a "
          f"receiving PACS ({RECEIVER_AE} on port {receiver.port})", flush=True)
    print("      DEMONSTRATION models (trained on synthetic data, never for patients) are allowed for this demo; "
          "ainode serve refuses them unless --allow-demo-models is given", flush=True)
    node = start_node(settings)
    try:
        start = time.monotonic()
        print(f"[3/4] sending {len(files)} instances to the node by C-STORE ...", flush=True)
        send_files(files, Destination("AINODE", "127.0.0.1", node_port), calling_ae=RECEIVER_AE)
        sent_at = time.monotonic()
        print("[4/4] waiting for the Structured Report (quiet period 2 s, then processing) ...", flush=True)
        deadline = sent_at + args.timeout
        while not receiver.structured_reports():
            if node.worker is not None and node.worker.poll() is not None:
                raise ProcessingError(f"the worker stopped (status {node.worker.returncode}); "
                                      f"see {node.settings.spool_dir / 'worker.log'}")
            if time.monotonic() > deadline:
                raise ProcessingError(f"no SR arrived within {args.timeout:.0f} s; "
                                      f"see {node.settings.spool_dir / 'worker.log'}")
            time.sleep(0.5)
        elapsed = time.monotonic() - sent_at
        time.sleep(1.0)  # let the companion objects of the same delivery arrive
        sr = receiver.structured_reports()[0]
        print(f"\nSR received by the PACS {elapsed:.1f} s after the last instance was sent "
              f"({time.monotonic() - start:.1f} s in all); {len(receiver.received)} object(s) received.\n")
        print(summarise(sr))
        truth = json.loads((work / "study" / "truth" / "case0000.json").read_text(encoding="utf-8"))
        print(f"\nSynthetic ground truth: metastasis subtype {truth['metastasis_subtype']} "
              f"(primary {truth['primary_subtype']}). Demonstration models trained on synthetic data only.")
        print(f"Files the PACS received: {work / 'pacs'}")
    finally:
        node.stop()
        receiver.stop()
    sys.stdout.flush()
    return 0
