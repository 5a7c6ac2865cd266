"""The job layer's functions as plain calls (docs/engineering.md §3.13): broker resolution, the production settings,
dispatching ready studies exactly once, and one real job (the real process_study on a real received study)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.config import Settings
from node.errors import ConfigError
from node.jobs.broker import EMBEDDED_URL, resolve_broker
from node.jobs.celery_app import production_settings
from node.jobs.runner import run_process_job
from node.jobs.tasks import _RETRY_POLICY, NodeTask, process_study_task
from node.ledger import deliveries as store
from node.ledger.states import DeliveryState, JobState, StudyState
from node.spool import result_dir
from node.values import Destination
from tests.jobs.conftest import Node


def spool_settings(spool_dir: Path, env: dict[str, str] | None = None) -> Settings:
    """Settings from ``env`` (as if it were the environment) with the spool in ``spool_dir``."""
    return Settings.load(env={**(env or {}), "AINODE_SPOOL_DIR": str(spool_dir)})


# -- broker and settings -----------------------------------------------------------------------------------


def test_broker_resolution_order(tmp_path: Path) -> None:
    env = {"AINODE_BROKER_URL": "redis://db:6379/3", "AINODE_BROKER_VISIBILITY_TIMEOUT": "30"}
    explicit = resolve_broker(spool_settings(tmp_path, env), "redis://other:6379/1")
    assert explicit.url == "redis://other:6379/1" and explicit.transport_options["visibility_timeout"] == 30.0
    from_env = resolve_broker(spool_settings(tmp_path, env))
    assert from_env.url == "redis://db:6379/3" and from_env.transport_options["global_keyprefix"] == "ainode:"
    embedded = resolve_broker(spool_settings(tmp_path))
    assert embedded.embedded and embedded.url == EMBEDDED_URL
    assert Path(embedded.transport_options["data_folder_in"]).is_dir()
    assert Path(embedded.transport_options["data_folder_in"]).is_relative_to(tmp_path / "broker")
    assert "***" in resolve_broker(spool_settings(tmp_path), "redis://:secret@db:6379/0").describe()


@pytest.mark.parametrize("url", ["amqp://guest@localhost//", "sqs://", "nonsense"])
def test_unsupported_broker_is_a_config_error(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="not supported"):
        resolve_broker(spool_settings(tmp_path), url)


def test_bad_visibility_timeout_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AINODE_BROKER_VISIBILITY_TIMEOUT"):
        resolve_broker(spool_settings(tmp_path, {"AINODE_BROKER_VISIBILITY_TIMEOUT": "soon"}), "redis://x:6379/0")


def test_production_settings(tmp_path: Path) -> None:
    conf = production_settings(resolve_broker(spool_settings(tmp_path)),
                               Settings.load(env={"AINODE_TASK_SOFT_TIME_LIMIT": "100"}), concurrency=3)
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["worker_prefetch_multiplier"] == 1 and conf["worker_max_tasks_per_child"] == 50
    assert conf["worker_max_memory_per_child"] == 1536 * 1024
    assert conf["worker_concurrency"] == 3
    assert conf["task_soft_time_limit"] == 100 and conf["task_time_limit"] >= 160
    with pytest.raises(ConfigError, match="AINODE_TASK_TIME_LIMIT"):
        production_settings(resolve_broker(spool_settings(tmp_path)),
                            Settings.load(env={"AINODE_TASK_TIME_LIMIT": "-1"}))


def test_tasks_retry_only_transient_errors() -> None:
    from node.errors import TransientError

    assert _RETRY_POLICY["autoretry_for"] == (TransientError,) and _RETRY_POLICY["base"] is NodeTask
    assert process_study_task.acks_late and process_study_task.reject_on_worker_lost
    assert process_study_task.max_retries == _RETRY_POLICY["max_retries"]
    assert process_study_task.name == "ainode.process_study"


# -- dispatch ----------------------------------------------------------------------------------------------


def test_dispatch_ready_hands_each_study_over_once(node: Node) -> None:
    jobs = node.dispatch()
    assert len(jobs) == 1 and jobs[0].state is JobState.QUEUED
    job_id, uid, study_dir, out_dir = node.sent[0]
    assert (job_id, uid) == (jobs[0].id, jobs[0].study_instance_uid)
    assert Path(study_dir).is_dir() and any(Path(study_dir).rglob("*"))
    assert Path(out_dir) == result_dir(node.spool_dir, uid, job_id)
    assert node.dispatch() == [] and len(node.sent) == 1  # queued: not ready any more, nothing handed twice
    assert node.repo.study(uid).state is StudyState.QUEUED  # type: ignore[union-attr]


@pytest.fixture
def listening(tmp_path: Path, start: Any, synth_case: Any, models_dir: Path) -> Iterator[tuple[Node, int, Path]]:
    """Like ``node``, with the listener kept (its port) for a late instance, and a T2 file to copy."""
    from node.ledger.db import Ledger
    from node.ledger.repository import Repository
    from tests.scp.fixtures import FakeClock, send

    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    clock = FakeClock()
    listener = start(url, clock, quiet_period_s=0)
    assert set(send(listener.port, synth_case.all)) == {0}
    ledger = Ledger.open(url)
    yield Node(tmp_path, tmp_path / "spool", url, Repository(ledger), clock, models_dir), listener.port, \
        synth_case.t2[0]
    ledger.dispose()


# -- one real job, as a plain call ---------------------------------------------------------------------------


def test_real_job_done_deliveries_recorded_and_rerun_skipped(dispatched: tuple[Node, tuple[int, str, str, str]]):
    node, (job_id, uid, study_dir, out_dir) = dispatched
    queued: list[int] = []
    pacs = Destination("PACS", "127.0.0.1", 104)
    ctx = node.context((pacs,))
    outcome = run_process_job(ctx, job_id, uid, Path(study_dir), Path(out_dir), queue_delivery=queued.append)
    assert outcome == "done" and queued == [job_id]
    assert node.job(job_id).state is JobState.DONE
    assert node.repo.study(uid).state is StudyState.DONE  # type: ignore[union-attr]
    srs = [p for p in Path(out_dir).iterdir() if p.is_file() and pydicom.dcmread(p).Modality == "SR"]
    assert len(srs) == 1 and pydicom.dcmread(srs[0]).StudyInstanceUID == uid
    pending = [e for e in node.repo.audit_trail(uid) if e.event == "delivery-pending"]
    assert len(pending) >= 1 and all(e.detail == f"job {job_id} -> {pacs}" for e in pending)
    assert {e.sop_instance_uid for e in pending} >= {pydicom.dcmread(srs[0]).SOPInstanceUID}
    # redelivered after success (acks_late): nothing runs twice, no second result
    assert run_process_job(ctx, job_id, uid, Path(study_dir), Path(out_dir), queue_delivery=queued.append) == "skipped"
    assert queued == [job_id]
    events = [e.event for e in node.repo.audit_trail(uid)]
    assert events.count("job-started") == 1 and events.count("job-done") == 1
    assert DeliveryState.PENDING.value in "".join(events)


def _srs(out_dir: Path) -> list[Path]:
    return [p for p in Path(out_dir).iterdir() if p.is_file() and pydicom.dcmread(p).Modality == "SR"]


def test_overlapping_runs_make_one_sr_and_one_set_of_deliveries(
    dispatched: tuple[Node, tuple[int, str, str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10 item 5: run A is processing when run B (a redelivery: visibility timeout, re-queue) runs the same
    job to the end; A then finishes too. One SR document, one set of deliveries, recorded by B alone."""
    from node.jobs import runner

    node, (job_id, uid, study_dir, out_dir) = dispatched
    ctx = node.context((Destination("PACS", "127.0.0.1", 104),))
    real_process_study = runner.process_study  # type: ignore[attr-defined]
    outcomes: list[str] = []
    calls: list[int] = []

    def overlapping(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # inside run A, before its own work: run B starts and finishes
            outcomes.append(run_process_job(ctx, job_id, uid, Path(study_dir), Path(out_dir)))
        return real_process_study(*args, **kwargs)

    monkeypatch.setattr(runner, "process_study", overlapping)
    outcomes.append(run_process_job(ctx, job_id, uid, Path(study_dir), Path(out_dir)))
    assert outcomes == ["done", "skipped"]  # B finished the job; A lost the race and recorded nothing
    srs = _srs(Path(out_dir))
    assert len(srs) == 1  # both runs wrote the same document (same UIDs, same file name)
    rows = store.deliveries(node.repo, job_id=job_id)
    objects = [p for p in Path(out_dir).iterdir() if p.is_file() and p.suffix == ".dcm"]
    assert len(rows) == len(objects) and {r.sop_instance_uid for r in rows} == {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in objects}
    events = [e.event for e in node.repo.audit_trail(uid)]
    assert events.count("job-done") == 1 and events.count("job-result") == 1
    assert events.count("delivery-pending") == len(objects)


def test_late_series_sr_supersedes_the_first(listening: tuple[Node, int, Path], tmp_path: Path) -> None:
    """Issue 10 item 6: a late series reopens the study as version 2; its SR references the version-1 SR in
    PredecessorDocumentsSequence, says so in words, and passes dsrdump and dciodvfy."""
    from node.sr.validate import validate_sr
    from tests.scp.fixtures import send

    node, port, t2_file = listening
    pacs = Destination("PACS", "127.0.0.1", 104)
    (first,) = node.dispatch()
    job1, uid, study_dir, out1 = node.sent[-1]
    assert run_process_job(node.context((pacs,)), job1, uid, Path(study_dir), Path(out1)) == "done"
    (sr1,) = (pydicom.dcmread(p) for p in _srs(Path(out1)))
    assert "PredecessorDocumentsSequence" not in sr1  # a first result replaces nothing

    late = pydicom.dcmread(t2_file)  # a copy of a T2 slice as a new series the rules ignore
    late.SeriesInstanceUID, late.SOPInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    late.file_meta.MediaStorageSOPInstanceUID = late.SOPInstanceUID
    late.SeriesDescription, late.SeriesNumber = "FLAIR late", 99
    late_path = tmp_path / "late.dcm"
    late.save_as(late_path, enforce_file_format=True)
    node.clock.advance(5)
    assert send(port, [late_path]) == [0]
    study = node.repo.study(uid)
    assert study is not None and study.version == 2
    node.clock.advance(5)
    (second,) = node.dispatch()
    assert second.supersedes_job_id == first.id
    job2, _, _, out2 = node.sent[-1]
    assert run_process_job(node.context((pacs,)), job2, uid, Path(study_dir), Path(out2)) == "done"
    (sr2_path,) = _srs(Path(out2))
    sr2 = pydicom.dcmread(sr2_path)
    assert sr2.SOPInstanceUID != sr1.SOPInstanceUID and sr2.SeriesInstanceUID != sr1.SeriesInstanceUID
    ref = sr2.PredecessorDocumentsSequence[0]
    assert ref.StudyInstanceUID == sr1.StudyInstanceUID == uid
    assert ref.ReferencedSeriesSequence[0].SeriesInstanceUID == sr1.SeriesInstanceUID
    sop = ref.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert (sop.ReferencedSOPInstanceUID, sop.ReferencedSOPClassUID) == (sr1.SOPInstanceUID, sr1.SOPClassUID)
    summary = sr2.ContentSequence[-1].ContentSequence[0].TextValue
    assert f"supersedes the earlier AI result of this study (job {job1})" in summary
    assert "study version 1 -> 2" in summary and sr1.SOPInstanceUID in summary
    assert validate_sr(sr2_path, checks=("roundtrip", "dsrdump", "dciodvfy")) == []


@pytest.mark.parametrize("enabled", [True, False])
def test_study_failed_at_the_deadline_gets_a_failure_sr(
    tmp_path: Path, start: Any, synth_case: Any, models_dir: Path, enabled: bool
) -> None:
    """Issue 10 item 8: a study failed at the force-complete deadline (its SEG never came) gets the failure SR
    at the PACS, through one ``failure-sr`` job; ``deadline_failure_sr: false`` turns it off."""
    from node.jobs.context import JobContext, JobOptions
    from node.ledger.db import Ledger
    from node.ledger.repository import Repository
    from tests.scp.fixtures import FakeClock, send

    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    clock = FakeClock()
    listener = start(url, clock, quiet_period_s=0)
    assert set(send(listener.port, synth_case.t1ce + synth_case.t2)) == {0}  # no SEG
    ledger = Ledger.open(url)
    try:
        node = Node(tmp_path, tmp_path / "spool", url, Repository(ledger), clock, models_dir)
        assert node.dispatch() == []  # still waiting for the SEG
        clock.advance(601)  # past force_complete_s (600 s in Node.dispatch)
        (job,) = node.dispatch()
        assert job.purpose == "failure-sr" and job.reason and "deadline" in job.reason
        assert node.dispatch() == []  # owed once
        job_id, uid, study_dir, out_dir = node.sent[-1]
        pacs = Destination("PACS", "127.0.0.1", 104)
        ctx = JobContext(node.repo, JobOptions((pacs,), models_dir, True, node.spool_dir), clock,
                         Settings(deadline_failure_sr=enabled))
        queued: list[int] = []
        assert run_process_job(ctx, job_id, uid, Path(study_dir), Path(out_dir), queue_delivery=queued.append) \
            == "failed"
        finished = node.job(job_id)
        assert finished.state is JobState.FAILED and finished.reason == job.reason
        study = node.repo.study(uid)
        assert study is not None and study.state is StudyState.FAILED and study.reason == job.reason
        rows = store.deliveries(node.repo, job_id=job_id)
        if not enabled:
            assert rows == [] and queued == [] and not any(Path(out_dir).glob("*.dcm"))
            return
        (sr_path,) = Path(out_dir).glob("*.dcm")
        sr = pydicom.dcmread(sr_path)
        assert sr.Modality == "SR" and sr.StudyInstanceUID == uid and "not processed" in sr.SeriesDescription
        assert "deadline" in sr.ContentSequence[-1].ContentSequence[0].TextValue
        assert [(r.sop_instance_uid, r.destination) for r in rows] == [(sr.SOPInstanceUID, str(pacs))]
        assert queued == [job_id]
    finally:
        ledger.dispose()


def test_invalid_study_fails_the_job_with_its_message(dispatched: tuple[Node, tuple[int, str, str, str]]):
    node, (job_id, uid, study_dir, out_dir) = dispatched
    broken = node.root / "broken"
    shutil.copytree(study_dir, broken)
    files = [p for p in broken.rglob("*") if p.is_file()]
    segs = [p for p in files if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SEG"]
    for path in segs:  # the study without its segmentation: a permanent, user-facing error
        path.unlink()
    queued: list[int] = []
    pacs = Destination("PACS", "127.0.0.1", 104)
    outcome = run_process_job(node.context((pacs,)), job_id, uid, broken, Path(out_dir), queue_delivery=queued.append)
    assert outcome == "failed"
    failure_srs = [p for p in Path(out_dir).iterdir() if p.is_file()]
    assert len(failure_srs) == 1 and pydicom.dcmread(failure_srs[0]).Modality == "SR"  # the "not processed" SR
    pending = [e for e in node.repo.audit_trail(uid) if e.event == "delivery-pending"]
    assert [e.sop_instance_uid for e in pending] == [pydicom.dcmread(failure_srs[0]).SOPInstanceUID]
    assert queued == [job_id]
    job = node.job(job_id)
    assert job.state is JobState.FAILED and job.reason and "seg" in job.reason.lower()
    study = node.repo.study(uid)
    assert study is not None and study.state is StudyState.FAILED and study.reason == job.reason


def test_redispatch_orphans_sends_only_jobs_without_a_message(dispatched: tuple[Node, tuple[int, str, str, str]],
                                                              tmp_path: Path) -> None:
    from celery import Celery

    from node.jobs.broker import embedded_broker
    from node.jobs.recovery import queued_job_ids, redispatch_orphans

    node, args = dispatched
    broker = embedded_broker(tmp_path / "broker")
    client = Celery("orphans")
    client.conf.update(production_settings(broker, Settings.load(env={"AINODE_QUEUE": "orphans"})))
    folder = Path(broker.transport_options["data_folder_in"])
    assert queued_job_ids(folder) == set()
    resent: list[tuple[int, str, str, str]] = []
    assert redispatch_orphans(node.repo, node.spool_dir, set(), lambda *a: resent.append(a)) == [args[0]]
    assert resent == [args]  # the same arguments dispatch_ready handed over
    client.send_task("ainode.process_study", args=list(args))
    assert queued_job_ids(folder) == {args[0]}
    assert redispatch_orphans(node.repo, node.spool_dir, queued_job_ids(folder), lambda *a: resent.append(a)) == []


def test_worker_command_arguments(tmp_path: Path) -> None:
    import argparse

    from node.cli import worker as worker_command

    parser = argparse.ArgumentParser()
    worker_command.register(parser.add_subparsers())
    args = parser.parse_args(["worker", "--broker", "redis://h:6379/0", "--concurrency", "3", "--beat", "--recover"])
    assert args.handler is worker_command.run and args.recover
    argv = worker_command.worker_argv(args)
    assert argv[0] == "worker" and argv[argv.index("--concurrency") + 1] == "3"
    assert argv[argv.index("--scheduler") + 1] == "celery.beat:Scheduler"  # in memory: no pickle shelve
    assert "--schedule" not in argv
    args.concurrency = 0
    with pytest.raises(ConfigError, match="concurrency"):
        worker_command.worker_argv(args)
