"""Issue 12, items 1 and 2: a study is dispatched by the listener as soon as it is complete (geometrically whole, no
association open, ``settle_s``), never earlier: a missing slice, series in any order with pauses between them,
several associations, one still open; the quiet period only where the headers cannot tell; an enhanced
multi-frame series; two dispatchers racing for one study; open associations of dead processes.

Real listeners on free ports and real ledgers; waits poll with deadlines (the dispatcher counts its judgements).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pydicom
import pytest

from node.config import ForceCompleteAction, Settings
from node.errors import ConfigError
from node.imaging.series_rules import SeriesRules
from node.jobs.completeness import CompletenessChecker, CompletenessPolicy
from node.jobs.dispatcher import ReadyDispatcher
from node.jobs.runner import dispatch_ready
from node.ledger.associations import ProcessId, this_process
from node.ledger.db import Ledger
from node.ledger.repository import Repository
from node.ledger.states import StudyState
from node.scp.server import ListenerHandle
from tests.scp.fixtures import FakeClock, ListenerFactory, associate, send
from tests.support.studies import SynthCase, multi_frame_t1ce, seg_on_multi_frame

SETTLE = 0.2
QUIET = 60.0
WAIT_S = 30.0  # deadline of one judgement on a loaded machine (it takes milliseconds)


class Sent:
    """The process tasks a listener sent (a thread-safe recorder in place of the broker)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, job_id: int, study_uid: str, study_dir: str, out_dir: str) -> None:
        with self._lock:
            self.calls.append((job_id, study_uid, study_dir, out_dir))


def dispatching(start: ListenerFactory, url: str, **fields: object) -> tuple[ListenerHandle, Sent]:
    sent = Sent()
    listener = start(url, time.time, settle_s=SETTLE, quiet_period_s=QUIET, send_task=sent, **fields)
    assert listener.dispatcher is not None
    return listener, sent


def _ready(listener: ListenerHandle) -> ReadyDispatcher:
    """The listener's dispatcher, as the job layer built it (the listener knows it only by its protocol)."""
    assert isinstance(listener.dispatcher, ReadyDispatcher)
    return listener.dispatcher


def judged(listener: ListenerHandle, count: int) -> None:
    """Wait until the listener's dispatcher has judged ``count`` times (one per association end, or merged)."""
    assert listener.dispatcher is not None
    assert _ready(listener).wait_evaluations(count, WAIT_S), "the dispatcher never judged the study"


def deliver(listener: ListenerHandle, files: Sequence[Path]) -> None:
    """One association: ``files``, released; then wait for the judgement it triggers."""
    assert listener.dispatcher is not None
    before = _ready(listener).evaluations
    assert set(send(listener.port, files)) == {0}
    judged(listener, before + 1)


def study_uid(case: SynthCase) -> str:
    return str(pydicom.dcmread(case.t1ce[0], stop_before_pixels=True).StudyInstanceUID)


def never_ready_on_quiet(listener: ListenerHandle, rules: SeriesRules, uid: str) -> None:
    """Even far beyond the quiet period (not the force-complete deadline) the study stays receiving."""
    checker = CompletenessChecker(listener.repository, rules, CompletenessPolicy(QUIET, 600.0,
                                  ForceCompleteAction.FAIL, SETTLE), listener.spool.root)
    assert checker.find_ready_studies(time.time() + 5 * QUIET) == []
    snapshot = listener.repository.study(uid)
    assert snapshot is not None and snapshot.state is StudyState.RECEIVING
    assert snapshot.reason is not None and snapshot.reason.startswith("waiting for missing instances")


def test_a_missing_slice_in_the_middle_holds_the_study_until_it_arrives(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, series_rules: SeriesRules
) -> None:
    listener, sent = dispatching(start, sqlite_url)
    middle = len(synth_case.t2) // 2
    deliver(listener, synth_case.t1ce + synth_case.seg + synth_case.t2[:middle] + synth_case.t2[middle + 1:])
    assert sent.calls == []
    never_ready_on_quiet(listener, series_rules, study_uid(synth_case))
    waiting = listener.repository.study(study_uid(synth_case))
    assert waiting is not None and waiting.reason is not None and "T2: 1 slice(s) missing" in waiting.reason
    deliver(listener, synth_case.t2[middle:middle + 1])
    assert [c[1] for c in sent.calls] == [study_uid(synth_case)]
    audit = [e.detail for e in listener.repository.audit_trail() if e.event == "study-ready"]
    assert audit and audit[-1] is not None and audit[-1].startswith("complete: ")


@pytest.mark.parametrize("order", list(itertools.permutations(("t1ce", "t2", "seg"))), ids="-".join)
def test_series_in_every_order_with_a_pause_between_them(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, order: tuple[str, ...]
) -> None:
    listener, sent = dispatching(start, sqlite_url)
    for i, role in enumerate(order):
        deliver(listener, getattr(synth_case, role))  # each series its own association, judged before the next
        if i < len(order) - 1:
            assert sent.calls == [], f"dispatched after {order[:i + 1]}"
    assert len(sent.calls) == 1


def test_ready_only_after_the_last_open_association_is_released(
    start: ListenerFactory, ledger_url: str, synth_case: SynthCase
) -> None:
    listener, sent = dispatching(start, ledger_url)
    held = associate(listener.port)
    assert held.is_established
    try:
        for path in synth_case.seg + synth_case.t2[: len(synth_case.t2) // 2]:
            assert held.send_c_store(path).Status == 0
        # the rest over two more associations at once
        halves = (synth_case.t1ce[::2], synth_case.t1ce[1::2] + synth_case.t2[len(synth_case.t2) // 2:])
        senders = [threading.Thread(target=send, args=(listener.port, files)) for files in halves]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(WAIT_S)
        judged(listener, 1)
        assert listener.repository.studies_with_open_associations(time.time(), 600.0) == {study_uid(synth_case)}
        assert sent.calls == []  # whole, but an association storing into it is still open
    finally:
        held.release()
    deadline = time.monotonic() + WAIT_S
    while not sent.calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sent.calls) == 1
    assert listener.repository.open_associations() == []


def test_quiet_period_when_the_headers_cannot_tell(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, series_rules: SeriesRules, tmp_path: Path
) -> None:
    t2 = []
    for path in synth_case.t2:  # no count on the T2 and the SEG does not reference it: its ends are unknown
        ds = pydicom.dcmread(path)
        del ds.ImagesInAcquisition
        t2.append(tmp_path / "t2" / path.name)
        t2[-1].parent.mkdir(exist_ok=True)
        ds.save_as(t2[-1], enforce_file_format=True)
    clock = FakeClock()
    listener = start(sqlite_url, clock, settle_s=SETTLE, quiet_period_s=QUIET)
    assert set(send(listener.port, synth_case.t1ce + synth_case.seg + tuple(t2))) == {0}
    checker = CompletenessChecker(listener.repository, series_rules,
                                  CompletenessPolicy(QUIET, 600.0, ForceCompleteAction.FAIL, SETTLE),
                                  listener.spool.root)
    assert checker.find_ready_studies(clock.now + QUIET - 1) == []
    ready = checker.find_ready_studies(clock.now + QUIET)
    assert len(ready) == 1
    detail = [e.detail for e in listener.repository.audit_trail() if e.event == "study-ready"][-1]
    assert detail is not None and detail.startswith("quiet period: ") and "cannot tell" in detail


def test_geometric_completeness_off_is_the_quiet_period_alone(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, series_rules: SeriesRules
) -> None:
    clock = FakeClock()
    listener = start(sqlite_url, clock, settle_s=SETTLE, quiet_period_s=QUIET)
    assert set(send(listener.port, synth_case.all)) == {0}

    def checker(**fields: object) -> CompletenessChecker:
        settings = Settings.load(env={}, overrides={"settle_s": SETTLE, "quiet_period_s": QUIET, **fields})
        return CompletenessChecker(listener.repository, series_rules, CompletenessPolicy.from_settings(settings),
                                   listener.spool.root)

    assert checker(geometric_completeness="false").find_ready_studies(clock.now + 5) == []
    assert len(checker().find_ready_studies(clock.now + 5)) == 1  # the default: whole, no association open


def test_an_enhanced_multi_frame_t1ce(
    start: ListenerFactory, sqlite_url: str, synth_case: SynthCase, tmp_path: Path
) -> None:
    mf_path = tmp_path / "mf" / "mf.dcm"
    number = int(pydicom.dcmread(synth_case.t1ce[0], stop_before_pixels=True).SeriesNumber)
    mf = multi_frame_t1ce(synth_case, mf_path, "event", series_number=number)
    seg_path = seg_on_multi_frame(mf, mf_path, tmp_path / "seg" / "seg.dcm", "event", "Metastasis 1",
                                  (slice(10, 16), slice(10, 16), slice(30, 36)), series_number=100)
    listener, sent = dispatching(start, sqlite_url)
    deliver(listener, (seg_path, mf_path))
    assert sent.calls == []  # the T2 is missing
    deliver(listener, synth_case.t2)
    assert len(sent.calls) == 1


def test_two_dispatchers_race_for_one_study(
    start: ListenerFactory, ledger_url: str, synth_case: SynthCase, series_rules: SeriesRules
) -> None:
    """The listener's dispatcher and a worker's poll (two ledger connections, as two processes) dispatch the same
    ready study at the same moment: one job, one task sent, whichever wins."""
    clock = FakeClock()
    listener = start(ledger_url, clock, settle_s=SETTLE, quiet_period_s=QUIET)
    assert set(send(listener.port, synth_case.all)) == {0}
    ledgers = [Ledger.open(ledger_url) for _ in range(2)]
    sent = Sent()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    created: list[int] = []

    def dispatcher(ledger: Ledger) -> None:
        repo = Repository(ledger)
        checker = CompletenessChecker(repo, series_rules, CompletenessPolicy(QUIET, 600.0,
                                      ForceCompleteAction.FAIL, SETTLE), listener.spool.root)
        try:
            barrier.wait(WAIT_S)
            created.extend(job.id for job in dispatch_ready(repo, checker, clock.now + 2 * SETTLE, sent,
                                                            listener.spool.root))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher, args=(ledger,)) for ledger in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    for ledger in ledgers:
        ledger.dispose()
    assert errors == []
    assert len(created) == 1 and len(sent.calls) == 1 and sent.calls[0][0] == created[0]
    assert [job.id for job in listener.repository.jobs(study_uid(synth_case))] == created


def test_open_associations_of_dead_or_old_processes_are_ignored(sqlite_url: str) -> None:
    ledger = Ledger.open(sqlite_url)
    repo = Repository(ledger)
    try:
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
        dead = ProcessId(this_process().host, int(gone.stdout), 1.0)
        repo.association_opened("a-dead", "1.2.3.4", 100.0, calling_ae_title="PACS", process=dead)
        repo.association_opened("a-live", "1.2.3.5", 100.0, calling_ae_title="PACS")
        assert not repo.association_opened("a-live", "1.2.3.5", 101.0, calling_ae_title="PACS")  # once per pair
        repo.association_opened("a-other-host", "1.2.3.6", 100.0, calling_ae_title="PACS",
                                process=ProcessId("elsewhere", 1, 1.0))
        assert repo.studies_with_open_associations(110.0, 600.0) == {"1.2.3.5", "1.2.3.6"}
        assert repo.studies_with_open_associations(800.0, 600.0) == set()  # older than force-complete
        reused = ProcessId(this_process().host, this_process().pid, this_process().started_at + 1)
        repo.association_opened("a-reused-pid", "1.2.3.7", 100.0, calling_ae_title="PACS", process=reused)
        assert "1.2.3.7" not in repo.studies_with_open_associations(110.0, 600.0)
        assert repo.forget_dead_associations() == 2
        assert repo.association_ended("a-live") == ["1.2.3.5"]
        assert [r.association for r in repo.open_associations()] == ["a-other-host"]
    finally:
        ledger.dispose()


def test_the_dispatcher_thread_calls_on_loaded_once_and_judges_even_when_it_fails(
    sqlite_url: str, series_rules: SeriesRules, tmp_path: Path
) -> None:
    """``on_loaded`` (a node process freezes its start-up heap there: node/heap.py) runs once, in the dispatcher's
    thread after the job layer is imported; its failure is logged and the dispatcher judges as usual."""
    ledger = Ledger.open(sqlite_url)
    repo = Repository(ledger)
    calls: list[str] = []

    def failing() -> None:
        calls.append(threading.current_thread().name)
        raise RuntimeError("a callback that fails")

    checker = CompletenessChecker(repo, series_rules, CompletenessPolicy(QUIET, 600.0, ForceCompleteAction.FAIL,
                                                                         SETTLE), tmp_path)  # fmt: skip
    dispatcher = ReadyDispatcher(repo, checker, Sent(), tmp_path, SETTLE, time.time, failing).start()
    try:
        for _ in range(2):
            dispatcher.schedule(["1.2.3.4"], 0.0)
        assert dispatcher.wait_evaluations(1, WAIT_S), "the dispatcher stopped judging after its callback failed"
        assert calls == ["ainode-ready-dispatcher"]
    finally:
        dispatcher.stop()
        ledger.dispose()


def test_settle_s_is_validated() -> None:
    assert Settings().settle_s == 1.0
    for bad in ("-1", "2.5"):
        with pytest.raises(ConfigError, match="settle"):
            Settings.load(env={}, overrides={"settle_s": bad})
    assert Settings.load(env={}, overrides={"settle_s": "0", "quiet_period_s": "0"}).settle_s == 0.0



@pytest.mark.parametrize("worker", [True, False], ids=["listener-and-worker", "no-worker"])
def test_start_node_dispatches_a_complete_study_within_the_settle_time(
    tmp_path: Path, synth_case: SynthCase, worker: bool
) -> None:
    """``ainode serve`` with the default settings (quiet period 60 s): the study is queued within ``settle_s`` + a
    few seconds of the release, and the worker takes it; with ``--no-worker`` the message waits in the broker."""
    from node.cli.serve import start_node
    from node.jobs.broker import queue_depth, resolve_broker
    from node.ledger.states import JobState

    settings = Settings.load(env={}, overrides={
        "port": 0, "bind_address": "127.0.0.1", "spool_dir": tmp_path / "spool", "min_free_disk_bytes": 0,
        "allow_demo_models": "true"})
    assert settings.quiet_period_s == 60.0 and settings.settle_s == 1.0  # the defaults
    node = start_node(settings, worker=worker, worker_log=tmp_path / "worker.log")
    try:
        assert set(send(node.listener.port, synth_case.all)) == {0}
        released = time.time()
        repo = node.listener.repository
        uid = study_uid(synth_case)
        deadline = released + settings.settle_s + 10.0
        while not repo.jobs(uid) and time.time() < deadline:
            time.sleep(0.05)
        jobs = repo.jobs(uid)
        assert len(jobs) == 1, "not dispatched within settle_s + 10 s"
        queued_at = next(e.at for e in repo.audit_trail(uid) if e.event == "job-queued")
        assert queued_at - released <= settings.settle_s + 3.0  # not by the quiet period (60 s)
        if not worker:
            # whichever listener process of the pool took the association sent it: one message
            assert node.listener.dispatcher is not None
            deadline = time.time() + 5.0
            while queue_depth(resolve_broker(settings), settings.queue) < 1 and time.time() < deadline:
                time.sleep(0.05)
            assert queue_depth(resolve_broker(settings), settings.queue) == 1
            return
        deadline = time.time() + 120.0  # the worker's start on a loaded machine
        while repo.jobs(uid)[0].state is JobState.QUEUED and time.time() < deadline:
            time.sleep(0.2)
        assert repo.jobs(uid)[0].state is not JobState.QUEUED, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        node.stop()
