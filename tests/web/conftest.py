"""A node's ledger filled through the real repository and outbox operations, the web app on a real uvicorn server
on a free port, an embedded broker in the spool (messages are real files), and a real TCP "PACS" for /health."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from node.config import Settings
from node.jobs.broker import BrokerConfig, embedded_broker
from node.jobs.lesions import LesionSummary
from node.jobs.process import ProcessResult
from node.jobs.runner import write_result_json
from node.ledger import deliveries as store
from node.ledger.db import Ledger
from node.ledger.repository import InstanceHeader, Repository, idempotency_key
from node.ledger.states import DeliveryState
from node.spool import result_dir
from node.values import Destination
from node.web.app import create_app
from node.web.dispatch import CeleryDispatcher
from tests.scp.fixtures import FakeClock, ledger_url
from tests.support.waiting import wait_for

__all__ = ["ledger_url"]

TOKEN = "test-token-0123456789abcdef"
QUEUE = "web-test"
ROOT = "1.2.826.0.1.3680043.8.498.77"
DONE_UID, FAILED_UID, RECEIVING_UID = f"{ROOT}.1", f"{ROOT}.2", f"{ROOT}.3"
MR, SEG = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.66.4"
EVLE = "1.2.840.10008.1.2.1"
T0 = 1_795_000_000.0  # 2026-11-18 (readable dates on the screenshots)


@dataclass
class Filled:
    """What :func:`fill` put in the ledger."""

    done_job: int
    failed_job: int
    sent_delivery: int
    dead_delivery: int
    instances: int


def _receive(repo: Repository, uid: str, clock: FakeClock, series: list[tuple[str, str, int]]) -> int:
    """Record instances as the listener does: ``series`` = (modality, description, instance count)."""
    count = 0
    for number, (modality, description, n) in enumerate(series, start=1):
        for i in range(n):
            header = InstanceHeader(
                study_instance_uid=uid, series_instance_uid=f"{uid}.{number}", sop_instance_uid=f"{uid}.{number}.{i}",
                sop_class_uid=SEG if modality == "SEG" else MR, transfer_syntax_uid=EVLE, modality=modality,
                series_description=description, series_number=number, frame_of_reference_uid=f"{uid}.9",
            )
            repo.record_instance(header, path=f"x/{uid}/{number}/{i}.dcm", size_bytes=1000, sha256=f"{count:064d}",
                                 calling_ae_title="MODALITY", peer="127.0.0.1:4242", at=clock.advance(1))
            count += 1
    return count


def _queue_job(repo: Repository, uid: str, clock: FakeClock) -> int:
    study = repo.study(uid)
    assert study is not None and repo.mark_ready(study, clock.advance(60))
    job = repo.enqueue(uid, idempotency_key(uid, study.content_digest), clock.advance(1))
    assert job is not None
    repo.start_job(job.id, clock.advance(2))
    return job.id


def _result(uid: str, out_dir: Path) -> ProcessResult:
    lesion = {
        "segment_number": 1, "label": "Metastasis 1", "volume_ml": 2.5, "subtype": "HR+/HER2-", "probability": 0.71,
        "probabilities": {"HR+/HER2-": 0.71, "HR+/HER2+": 0.12, "HR-/HER2+": 0.1, "TN": 0.07},
        "heads": {"er": {"label": "positive", "probability": 0.8, "probabilities": {}, "out_of_distribution": False}},
        "top_features": [["original_firstorder_Mean", 0.42], ["original_glcm_Contrast", -0.2]],
        "shap_units": "log-odds", "out_of_distribution": False, "ood_reasons": [],
    }
    second = {**lesion, "segment_number": 2, "label": "Metastasis 2", "probability": 0.55, "subtype": "TN",
              "out_of_distribution": True, "ood_reasons": ["volume below the training range"]}
    timings = {"models": 0.5, "pipeline.load": 1.25, "pipeline.preprocess": 20.0, "pipeline.features": 12.0,
               "predict": 0.75, "sr": 2.0, "total": 36.5}
    lesions = (LesionSummary.from_json(lesion), LesionSummary.from_json(second))
    return ProcessResult(uid, out_dir / "sr.dcm", (out_dir / "sc-1.dcm",), lesions, "without-primary",
                         ("pons from the automatic method",), timings)


def fill(repo: Repository, spool_dir: Path, clock: FakeClock, pacs: Destination) -> Filled:
    """Three studies: one done (prediction, a sent and a dead-letter delivery), one failed, one receiving."""
    instances = _receive(repo, DONE_UID, clock, [("MR", "T1 3D post", 3), ("MR", "T2 axial", 2), ("SEG", "Lesions", 1)])
    done_job = _queue_job(repo, DONE_UID, clock)
    out_dir = result_dir(spool_dir, DONE_UID, done_job)
    out_dir.mkdir(parents=True)
    result = _result(DONE_UID, out_dir)
    clock.advance(36.5)
    write_result_json(out_dir, result)
    for path in result.paths:
        repo.record_delivery(done_job, str(pacs), f"{DONE_UID}.99.{path.stem}", DeliveryState.PENDING, clock(),
                             path=str(path))
    repo.finish_job(done_job, clock.advance(1), ok=True)
    sent, dead = store.deliveries(repo)
    for item, fate in ((sent, store.mark_sent), (dead, store.mark_dead)):
        claimed = store.claim(repo, item, clock.advance(1))
        assert claimed is not None
        if fate is store.mark_dead:
            store.mark_retry(repo, claimed, clock.advance(1), None, "association refused")
            claimed = store.claim(repo, store.deliveries(repo)[1], clock.advance(10))
            assert claimed is not None
            store.mark_dead(repo, claimed, clock.advance(1), 0xA700, "out of resources")
        else:
            store.mark_sent(repo, claimed, clock.advance(1))

    instances += _receive(repo, FAILED_UID, clock, [("MR", "T1 3D post", 2), ("MR", "T2 axial", 1)])
    failed_job = _queue_job(repo, FAILED_UID, clock)
    repo.finish_job(failed_job, clock.advance(5), ok=False, reason="no DICOM-SEG of the lesions was received")
    instances += _receive(repo, RECEIVING_UID, clock, [("MR", "T1 3D post", 1)])
    return Filled(done_job, failed_job, sent.id, dead.id, instances)


class Pacs:
    """A TCP listener standing in for a destination's port (what /health probes)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.destination = Destination("PACS", "127.0.0.1", int(self.sock.getsockname()[1]))

    def close(self) -> None:
        self.sock.close()


@dataclass
class WebNode:
    root: Path
    settings: Settings
    ledger: Ledger
    repo: Repository
    clock: FakeClock
    broker: BrokerConfig
    filled: Filled
    pacs: Pacs
    base_url: str = ""

    @property
    def queue_folder(self) -> Path:
        return Path(self.broker.transport_options["data_folder_in"])

    def api(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=10, follow_redirects=False)

    def events(self, prefix: str = "web-") -> list[tuple[str, str | None, str | None]]:
        return [(e.event, e.peer, e.detail) for e in self.repo.audit_trail() if e.event.startswith(prefix)]


class Served:
    """``app`` on uvicorn in a thread, on a free port (port 0), stopped at teardown."""

    def __init__(self, app: FastAPI) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="on",
                                proxy_headers=False)  # as ainode web runs it: the app reads forwarded headers
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 20, "uvicorn started", interval=0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def make_node(root: Path, url: str, *, destinations: tuple[Destination, ...] | None = None) -> WebNode:
    spool = root / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    pacs = Pacs()
    settings = Settings.load(env={}, overrides={
        "spool_dir": spool, "database_url": url, "min_free_disk_bytes": 0,
        "destinations": [str(d) for d in (destinations if destinations is not None else (pacs.destination,))],
    })
    ledger = Ledger.open(url)
    repo = Repository(ledger)
    clock = FakeClock(T0)
    filled = fill(repo, spool, clock, pacs.destination)
    return WebNode(root, settings, ledger, repo, clock, embedded_broker(spool / "broker"), filled, pacs)


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., WebNode]]:
    """``node_factory(url=None, destinations=None, **settings)``: a filled ledger and the app serving it (with
    ``settings`` changed); all stopped after."""
    made: list[tuple[WebNode, Served, CeleryDispatcher]] = []

    def factory(url: str | None = None, destinations: tuple[Destination, ...] | None = None,
                **settings_changes: Any) -> WebNode:
        root = tmp_path / f"node{len(made)}"
        node = make_node(root, url or f"sqlite:///{root / 'ledger.sqlite3'}", destinations=destinations)
        settings = replace(node.settings, queue=QUEUE, **settings_changes)
        dispatcher = CeleryDispatcher(node.broker, settings)
        app = create_app(settings, TOKEN, ledger=node.ledger, broker=node.broker, dispatcher=dispatcher,
                         clock=node.clock, health_timeout_s=1.0)
        served = Served(app)
        node.base_url = served.url
        made.append((node, served, dispatcher))
        return node

    yield factory
    for node, served, dispatcher in made:
        served.stop()
        dispatcher.close()
        node.pacs.close()
        node.ledger.dispose()


@pytest.fixture
def web(node_factory: Callable[..., WebNode]) -> WebNode:
    return node_factory()
