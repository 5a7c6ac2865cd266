"""The job layer's functions as plain calls (engineering.md §3.13): broker resolution, the production settings,
dispatching ready studies exactly once, and one real job (the real process_study on a real received study)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from node.config import Settings
from node.errors import ConfigError
from node.jobs.broker import EMBEDDED_URL, resolve_broker
from node.jobs.celery_app import production_settings
from node.jobs.runner import run_process_job
from node.jobs.tasks import _RETRY_POLICY, process_study_task
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
    assert conf["worker_prefetch_multiplier"] == 1 and conf["worker_max_tasks_per_child"] == 1
    assert conf["worker_concurrency"] == 3
    assert conf["task_soft_time_limit"] == 100 and conf["task_time_limit"] >= 160
    with pytest.raises(ConfigError, match="AINODE_TASK_TIME_LIMIT"):
        production_settings(resolve_broker(spool_settings(tmp_path)),
                            Settings.load(env={"AINODE_TASK_TIME_LIMIT": "-1"}))


def test_tasks_retry_only_transient_errors() -> None:
    from node.errors import TransientError

    assert _RETRY_POLICY["autoretry_for"] == (TransientError,)
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
