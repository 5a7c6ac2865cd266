"""Real Celery worker subprocesses on real brokers (the embedded filesystem broker and Redis), running the real
process_study on a real received study, with injected faults: a pool process or the whole worker SIGKILLed
mid-job (acks_late redelivery), the ledger database unreachable (transient: retried with backoff), a bad study
(permanent: not retried). Everything polls with deadlines; nothing sleeps a fixed time."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.ledger.db import Ledger
from node.ledger.repository import Repository
from node.ledger.states import JobState, StudyState
from node.log import study_key
from tests.chaos.harness import children
from tests.jobs.conftest import ROOT, BrokerUnderTest, FaultProxy, Node, WorkerFactory
from tests.support.net import free_port
from tests.support.scp import StoreSCP
from tests.support.waiting import wait_for

PROCESS = "ainode.process_study"
JOB_TIMEOUT = 180.0  # the small study takes ~10 s alone; the 2-core test machine is shared


def _sr_files(out_dir: str) -> list[Path]:
    return [p for p in Path(out_dir).iterdir() if p.is_file() and pydicom.dcmread(p).Modality == "SR"]


def _records(log: str) -> list[dict[str, Any]]:
    """The worker's JSON log records."""
    records = []
    for line in log.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def _state(node: Node, job_id: int) -> JobState:
    return node.job(job_id).state


def test_job_runs_in_a_worker(dispatched: tuple[Node, tuple[int, str, str, str]], broker: BrokerUnderTest,
                              workers: WorkerFactory) -> None:
    node, args = dispatched
    worker = workers(node.worker_env(), broker.env)
    worker.wait_ready()
    broker.client(node.spool_dir).send_task(PROCESS, args=list(args))
    wait_for(lambda: _state(node, args[0]) is JobState.DONE, JOB_TIMEOUT, f"job done ({worker.log_path})")
    assert len(_sr_files(args[3])) == 1
    log = worker.log()
    # the task's log lines carry the job id and the study key (JSON, the worker's default format)
    assert f'"study": "{study_key(args[1])}", "job": "{args[0]}"' in log
    assert "Retry in" not in log


@pytest.mark.slow
def test_pool_process_killed_mid_job_is_redelivered(
    dispatched: tuple[Node, tuple[int, str, str, str]], broker: BrokerUnderTest, workers: WorkerFactory
) -> None:
    """SIGKILL of the process running the job: reject_on_worker_lost requeues it, a new pool process (warm: forked
    from the preloaded worker) runs it."""
    node, args = dispatched
    worker = workers(node.worker_env(), broker.env)
    worker.wait_ready()
    broker.client(node.spool_dir).send_task(PROCESS, args=list(args))
    wait_for(lambda: _state(node, args[0]) is JobState.PROCESSING, JOB_TIMEOUT, "job started")
    victims = worker.children()
    assert victims, "the worker has no pool process"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _state(node, args[0]) is JobState.DONE, JOB_TIMEOUT, f"job done after kill ({worker.log_path})")
    assert len(_sr_files(args[3])) == 1
    log = worker.log()
    assert "WorkerLostError" in log or "signal 9" in log
    assert "running it again" in log  # the redelivered task found the job processing and re-ran it
    reran = [r for r in _records(log) if str(r.get("message")).startswith(f"job {args[0]} ran in ")]
    assert len(reran) == 1 and reran[0]["process"] not in victims, "the job was not re-run by a new pool process"
    started = [r["process"] for r in _records(log) if str(r.get("message")).startswith("pool process started: warm")]
    assert reran[0]["process"] in started
    events = [e.event for e in node.repo.audit_trail(args[1])]
    assert events.count("job-started") == 1 and events.count("job-done") == 1


@pytest.mark.slow
def test_whole_worker_killed_job_completes_on_a_new_worker(
    dispatched: tuple[Node, tuple[int, str, str, str]], redis_broker: BrokerUnderTest, workers: WorkerFactory
) -> None:
    """SIGKILL of the whole first worker (no chance to requeue): Redis keeps the unacknowledged message and hands
    it to the next worker once the visibility timeout (4 s here) passed."""
    node, args = dispatched
    first = workers(node.worker_env(), redis_broker.env, name="first")
    first.wait_ready()
    redis_broker.client(node.spool_dir).send_task(PROCESS, args=list(args))
    wait_for(lambda: _state(node, args[0]) is JobState.PROCESSING, JOB_TIMEOUT, "job started")
    first.kill()
    assert _state(node, args[0]) is JobState.PROCESSING
    second = workers(node.worker_env(), redis_broker.env, name="second")
    second.wait_ready()
    wait_for(lambda: _state(node, args[0]) is JobState.DONE, JOB_TIMEOUT, f"job done on the new worker "
             f"({second.log_path})")
    assert "running it again" in second.log()
    assert len(_sr_files(args[3])) == 1


@pytest.mark.slow
def test_embedded_worker_killed_job_recovered_by_the_next_worker(
    dispatched: tuple[Node, tuple[int, str, str, str]], workers: WorkerFactory
) -> None:
    """The embedded broker has no visibility timeout: a SIGKILLed worker takes its reserved message with it.
    ``ainode worker --recover`` re-sends queued/processing jobs that have no message left, once, at start."""
    node, args = dispatched
    env = {"AINODE_QUEUE": f"ainode-test-{uuid.uuid4().hex[:8]}"}
    first = workers(node.worker_env(), env, name="first")
    first.wait_ready()
    client = BrokerUnderTest("embedded", env).client(node.spool_dir)
    client.send_task(PROCESS, args=list(args))
    wait_for(lambda: _state(node, args[0]) is JobState.PROCESSING, JOB_TIMEOUT, "job started")
    first.kill()
    assert not list((node.spool_dir / "broker" / "queue").glob("*.msg"))  # the message went with the worker
    second = workers(node.worker_env(), env, name="second", options=("--recover",))
    second.wait_ready()
    wait_for(lambda: _state(node, args[0]) is JobState.DONE, JOB_TIMEOUT, f"job done ({second.log_path})")
    assert "had no message in the broker: sent again" in second.log()
    assert len(_sr_files(args[3])) == 1


def _postgres_admin() -> object:
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres", autocommit=True,
                               connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")


@pytest.mark.slow
def test_transient_ledger_outage_is_retried_with_backoff(
    node: Node, redis_broker: BrokerUnderTest, workers: WorkerFactory
) -> None:
    """The ledger (PostgreSQL behind a proxy) goes down: the task retries with growing delays, then succeeds."""
    admin = _postgres_admin()
    name = f"ainode_jobs_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[attr-defined]
    proxy = FaultProxy(("127.0.0.1", 5432))
    url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{name}"
    ledger = Ledger.open(url)
    try:
        # the same received study, copied into the PostgreSQL ledger through the real listener's records
        from tests.jobs.test_worker_faults import _copy_study

        repo = Repository(ledger)
        uid = _copy_study(node, repo)
        pg_node = Node(node.root, node.spool_dir, url, repo, node.clock, node.models_dir)
        jobs = pg_node.dispatch()
        assert len(jobs) == 1
        args = pg_node.sent[0]
        ledger.dispose()
        proxy.down = True
        worker = workers(pg_node.worker_env(), redis_broker.env, AINODE_TASK_MAX_RETRIES="6",
                         AINODE_RETRY_BACKOFF="1")
        worker.wait_ready()
        redis_broker.client(node.spool_dir).send_task(PROCESS, args=list(args))
        wait_for(lambda: worker.log().count("Retry in") >= 3, 120, f"three retries ({worker.log_path})")
        proxy.down = False
        wait_for(lambda: _state(pg_node, args[0]) is JobState.DONE, JOB_TIMEOUT, f"job done ({worker.log_path})")
        log = worker.log()
        assert "the ledger database cannot be reached" in log
        delays = [int(d) for d in re.findall(r"Retry in (\d+)s", log)]
        assert len(delays) >= 3 and max(delays) <= 2 ** len(delays)  # backoff 1 s * 2^n, with full jitter
        study = repo.study(uid)
        assert study is not None and study.state is StudyState.DONE
    finally:
        proxy.close()
        ledger.dispose()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[attr-defined]
        admin.close()  # type: ignore[attr-defined]


def _copy_study(node: Node, repo: Repository) -> str:
    """Record the spooled study of ``node`` in another ledger (same spool paths), ready to dispatch."""
    from node.ledger.records import InstanceHeader

    ledger_rows = node.repo.studies()
    assert len(ledger_rows) == 1
    snapshot = ledger_rows[0]
    for series in snapshot.series:
        for rel in series.files:
            path = node.spool_dir / rel
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            header = InstanceHeader(
                snapshot.study_instance_uid, series.series_instance_uid, str(ds.SOPInstanceUID),
                series.sop_class_uid, str(ds.file_meta.TransferSyntaxUID), series.modality,
                series.series_description, series.series_number, series.frame_of_reference_uid,
            )
            repo.record_instance(header, path=rel, size_bytes=path.stat().st_size, sha256="0" * 64,
                                 calling_ae_title="PACS", peer="127.0.0.1", at=node.clock())
    return snapshot.study_instance_uid


def test_permanent_error_is_not_retried(
    dispatched: tuple[Node, tuple[int, str, str, str]], broker: BrokerUnderTest, workers: WorkerFactory
) -> None:
    """A study that cannot be processed fails its job once, with the message; the task is not retried."""
    node, (job_id, uid, _study_dir, out_dir) = dispatched
    empty = node.root / "not-a-study"
    empty.mkdir()
    (empty / "notes.txt").write_text("no DICOM here")
    worker = workers(node.worker_env(), broker.env)
    worker.wait_ready()
    broker.client(node.spool_dir).send_task(PROCESS, args=[job_id, uid, str(empty), out_dir])
    wait_for(lambda: _state(node, job_id) is JobState.FAILED, JOB_TIMEOUT, f"job failed ({worker.log_path})")
    wait_for(lambda: "succeeded in" in worker.log(), 30, "task finished")
    assert "Retry in" not in worker.log()
    job = node.job(job_id)
    assert job.reason
    events = [e.event for e in node.repo.audit_trail(uid)]
    assert events.count("job-started") == 1 and events.count("job-failed") == 1


@pytest.mark.slow
def test_beat_dispatches_processes_and_delivers_to_a_pacs(node: Node, workers: WorkerFactory, tmp_path: Path) -> None:
    """The whole job layer in one worker with the embedded broker and ``--beat``: the periodic poll finds the
    received study ready, the job runs, and the SR (+ companions) reach a real Storage SCP."""
    pacs = StoreSCP(tmp_path / "pacs", free_port()).start()
    try:
        env = {**node.worker_env(), "AINODE_QUEUE": f"ainode-test-{uuid.uuid4().hex[:8]}",
               "AINODE_DESTINATIONS": str(pacs.destination), "AINODE_QUIET_PERIOD_S": "0",
               "AINODE_POLL_INTERVAL": "3"}
        worker = workers(env, {}, name="beat", concurrency=2, options=("--beat",))
        worker.wait_ready()
        uid = node.uids()[0]
        wait_for(lambda: node.repo.jobs(uid) and node.repo.jobs(uid)[0].state is JobState.DONE, JOB_TIMEOUT,
                 f"job done ({worker.log_path})")

        def sr_received() -> bool:  # the SR and its companions are sent in any order: wait for the SR itself
            stored = [tmp_path / "pacs" / f"{sop}.dcm" for sop in list(pacs.received)]  # appended once written
            return any(ds.Modality == "SR" and ds.StudyInstanceUID == uid
                       for ds in (pydicom.dcmread(path, stop_before_pixels=True) for path in stored))

        wait_for(sr_received, 60, f"SR received by the PACS ({worker.log_path})")
        assert len(node.repo.jobs(uid)) == 1  # polled many times, dispatched once
        assert not list(node.spool_dir.glob("celerybeat-schedule*"))  # beat's schedule lives in memory
        wait_for(lambda: any(e.event == "delivery-sent" for e in node.repo.audit_trail(uid)), 30, "sent audited")
    finally:
        pacs.stop()


# -- recovery timing, the redelivery cap, the hard time limit, beat and the embedded broker's files ----------

REDELIVERY_BUDGET_S = 30.0


@pytest.mark.slow
def test_whole_worker_killed_job_is_redelivered_within_30_s(
    dispatched: tuple[Node, tuple[int, str, str, str]], broker: BrokerUnderTest, workers: WorkerFactory
) -> None:
    """SIGKILL of the whole worker running a job (its main process too: on Redis the message stays unacknowledged
    for the 2-hour visibility timeout, on the embedded broker it is gone): the other worker's periodic poll finds
    the job's lease stale and sends it again. Default heartbeat (5 s), stale period (15 s) and poll (5 s)."""
    node, args = dispatched
    env = {**broker.env, "AINODE_BROKER_VISIBILITY_TIMEOUT": "7200"} if broker.name == "redis" else broker.env
    first = workers(node.worker_env(), env, name="first")
    first.wait_ready()
    broker.client(node.spool_dir).send_task(PROCESS, args=list(args))
    wait_for(lambda: _state(node, args[0]) is JobState.PROCESSING, JOB_TIMEOUT, "job started")
    second = workers(node.worker_env(), env, name="second", options=("--beat",))
    second.wait_ready()
    killed = time.monotonic()
    first.kill()
    wait_for(lambda: "running it again" in second.log(), 60, f"the job re-run ({second.log_path})")
    redelivered_s = time.monotonic() - killed
    print(f"\n{broker.name}: whole worker killed -> job running again after {redelivered_s:.1f} s")
    assert redelivered_s <= REDELIVERY_BUDGET_S
    wait_for(lambda: _state(node, args[0]) is JobState.DONE, JOB_TIMEOUT, f"job done ({second.log_path})")
    assert len(_sr_files(args[3])) == 1
    events = [e.event for e in node.repo.audit_trail(args[1])]
    assert events.count("job-redelivered") == 1 and events.count("job-done") == 1


@pytest.mark.slow
def test_a_job_whose_process_keeps_dying_fails_with_the_reason(
    dispatched: tuple[Node, tuple[int, str, str, str]], workers: WorkerFactory
) -> None:
    """A study that kills the process running it (out of memory, a segfault: here SIGKILL) is run again at most
    AINODE_JOB_MAX_REDELIVERIES times, then fails with that reason instead of being retried for ever."""
    node, args = dispatched
    env = {"AINODE_QUEUE": f"ainode-test-{uuid.uuid4().hex[:8]}"}
    worker = workers(node.worker_env(), env, AINODE_JOB_MAX_REDELIVERIES="1")
    worker.wait_ready()
    BrokerUnderTest("embedded", env).client(node.spool_dir).send_task(PROCESS, args=list(args))
    wait_for(lambda: _state(node, args[0]) is JobState.PROCESSING, JOB_TIMEOUT, "job started")
    for deaths in (1, 2):
        for pid in children(worker.proc.pid):  # every pool process, whichever thread of the worker forked it
            os.kill(pid, signal.SIGKILL)
        if deaths == 1:
            wait_for(lambda: "after 1 death(s)" in worker.log(), JOB_TIMEOUT, f"run 2 ({worker.log_path})")
    wait_for(lambda: _state(node, args[0]) is JobState.FAILED, JOB_TIMEOUT, f"job failed ({worker.log_path})")
    job = node.job(args[0])
    assert job.reason is not None and "died 2 time(s)" in job.reason
    study = node.repo.study(args[1])
    assert study is not None and study.state is StudyState.FAILED and study.reason == job.reason
    assert not _sr_files(args[3])


@pytest.mark.slow
def test_a_run_killed_at_the_hard_time_limit_fails_its_job(
    dispatched: tuple[Node, tuple[int, str, str, str]], workers: WorkerFactory
) -> None:
    """A run that does not react to the soft limit (here: SIGSTOPped) is killed at the hard limit; its job fails
    with that reason at once instead of staying processing for ever."""
    node, args = dispatched
    env = {"AINODE_QUEUE": f"ainode-test-{uuid.uuid4().hex[:8]}"}
    worker = workers(node.worker_env(), env, AINODE_TASK_SOFT_TIME_LIMIT="6", AINODE_TASK_TIME_LIMIT="9")
    worker.wait_ready()
    BrokerUnderTest("embedded", env).client(node.spool_dir).send_task(PROCESS, args=list(args))
    wait_for(lambda: _state(node, args[0]) is JobState.PROCESSING, JOB_TIMEOUT, "job started", interval=0.05)
    for pid in children(worker.proc.pid):
        os.kill(pid, signal.SIGSTOP)  # hung in C code: the soft limit's exception never comes
    wait_for(lambda: _state(node, args[0]) is JobState.FAILED, 60, f"job failed ({worker.log_path})")
    assert node.job(args[0]).reason == "processing was killed at the hard time limit (9 s, AINODE_TASK_TIME_LIMIT)"
    assert "Hard time limit" in worker.log()


def test_beat_keeps_its_schedule_in_memory_not_in_a_pickle(node: Node, workers: WorkerFactory,
                                                           tmp_path: Path) -> None:
    """No ``celerybeat-schedule`` shelve (a pickle anyone who can write the spool could use to run code), and the
    periodic tasks are still sent; an old shelve left by an earlier release is removed."""
    queue = f"ainode-test-{uuid.uuid4().hex[:8]}"
    (node.spool_dir / "celerybeat-schedule.dat").write_bytes(b"\x80\x04 a pickle")
    scheduler = workers({**node.worker_env(), "AINODE_POLL_INTERVAL": "1"}, {"AINODE_QUEUE": queue},
                        name="beat", options=("--beat-only",))
    folder = node.spool_dir / "broker" / "queue"

    def sent(task: str) -> int:
        return sum(1 for path in folder.glob(f"*.{queue}.msg") if f'"task": "{task}"' in path.read_text())

    wait_for(lambda: sent("ainode.poll_ready") >= 2, 90, f"two polls sent ({scheduler.log_path})")
    wait_for(lambda: sent("ainode.deliver") >= 1, 60, "the outbox task sent")
    leftovers = [p for d in (node.spool_dir, tmp_path, ROOT) for p in d.glob("celerybeat-schedule*")]
    assert leftovers == []


def test_half_written_broker_files_do_not_stop_the_next_start(node: Node, workers: WorkerFactory) -> None:
    """A full disk (or a crash) leaves an empty exchange table and a truncated message in the embedded broker:
    the next worker moves them to ``broker/quarantine`` with a warning and starts (it used to stop at once with
    "Unrecoverable error: JSONDecodeError" and exit status 0)."""
    queue = f"ainode-test-{uuid.uuid4().hex[:8]}"
    broker_dir = node.spool_dir / "broker"
    (broker_dir / "control").mkdir(parents=True, exist_ok=True)
    (broker_dir / "queue").mkdir(parents=True, exist_ok=True)
    (broker_dir / "control" / f"{queue}.exchange").write_bytes(b"")
    (broker_dir / "queue" / f"1_x.{queue}.msg").write_bytes(b'{"body": "eyJh')
    worker = workers(node.worker_env(), {"AINODE_QUEUE": queue})
    worker.wait_ready()
    assert sorted(p.name for p in (broker_dir / "quarantine").iterdir()) == [
        f"control-{queue}.exchange", f"queue-1_x.{queue}.msg"]
    assert "moved to" in worker.log() and "half-written" in worker.log()


def test_the_worker_exits_with_celerys_status(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An "Unrecoverable error" stops Celery with status 1: ``ainode worker`` must exit 1, not 0 (ainode serve
    restarts a worker that stopped either way, but an operator's supervisor may only restart failures)."""
    import argparse

    from node.cli import worker as worker_command
    from node.jobs.celery_app import app

    monkeypatch.setenv("AINODE_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setattr(app, "start", lambda argv: 1)
    parser = argparse.ArgumentParser()
    worker_command.add_arguments(parser)
    assert worker_command.run(parser.parse_args([])) == 1
    assert worker_command.run(parser.parse_args(["--beat-only"])) == 1
