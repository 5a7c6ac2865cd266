"""SIGKILL of the pool process running a job, then of the whole worker, under ``ainode serve``: the listener stays
up, serve restarts the worker, the job runs again and its SR arrives, and no process of the dead worker is
left. On the embedded broker and on Redis."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.ledger.states import JobState
from tests.chaos.conftest import NodeFactory, Pacs, study_files
from tests.chaos.harness import ServeProcess, alive, echo, group, redis_env, store, study_uid, wait_for


@pytest.fixture(params=["embedded", "redis"])
def broker_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    if request.param == "embedded":
        yield {}
    else:
        yield from redis_env()


def _runs(node: ServeProcess, job_id: int) -> list[int]:
    """The pids of the processes that started a run of ``job_id`` ("job N: run M" records), in order."""
    pids = []
    for line in node.worker_log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("job") == str(job_id) and str(record.get("message", "")).startswith(f"job {job_id}: run "):
            pids.append(int(record["process"]))
    return pids


def _processing(node: ServeProcess, uid: str) -> int | None:
    jobs = node.jobs(uid)
    return jobs[0].id if jobs and jobs[0].state is JobState.PROCESSING else None


@pytest.mark.slow
def test_pool_process_then_whole_worker_killed_mid_job(studies: list[Path], pacs: Pacs, make_node: NodeFactory,
                                                         broker_env: dict[str, str]) -> None:
    pacs.start()
    node = make_node(pacs.destination, **broker_env)
    node.start().wait_listening()
    node.wait_worker_ready()
    study = studies[0]
    uid = study_uid(study)
    assert set(store(node.port, study_files(study))) == {0}
    job_id = int(wait_for(lambda: _processing(node, uid), 180, "the job processing"))

    # 1. the pool process running the job: Celery puts the message back, a new pool process runs it again
    victim: int = wait_for(lambda: _runs(node, job_id)[-1] if _runs(node, job_id) else None, 60, "the run's process")
    os.kill(victim, signal.SIGKILL)
    pool_killed = time.monotonic()
    wait_for(lambda: len(_runs(node, job_id)) >= 2, 120, "the job run again after the pool process died")
    pool_redelivered_s = time.monotonic() - pool_killed
    assert echo(node.port)

    # 2. the whole worker (its main process): serve kills what is left of it and starts a new one
    worker = node.worker_pid()
    assert worker is not None
    members = group(worker)
    os.kill(worker, signal.SIGKILL)
    worker_killed = time.monotonic()
    assert echo(node.port), "the listener went down with the worker"
    node.wait_worker_ready(after=1)
    restarted_s = time.monotonic() - worker_killed
    wait_for(lambda: not any(alive(pid) for pid in members), 15, "no process of the dead worker left")
    wait_for(lambda: len(_runs(node, job_id)) >= 3, 120, "the job run again after the worker died")
    worker_redelivered_s = time.monotonic() - worker_killed
    wait_for(lambda: pacs.reports(uid), 600, "the SR at the PACS", interval=1.0)
    sr_s = time.monotonic() - worker_killed
    job = node.jobs(uid)[0]
    assert job.state is JobState.DONE
    events = [e.event for e in node.audit(uid)]
    print(f"\nCHAOS worker-kill ({'redis' if broker_env else 'embedded'}): pool process killed -> run again in "
          f"{pool_redelivered_s:.1f} s; whole worker killed -> restarted in {restarted_s:.1f} s, job running "
          f"again in {worker_redelivered_s:.1f} s, SR at the PACS {sr_s:.0f} s after the kill; SRs: "
          f"{len(pacs.reports(uid))}; runs: {len(_runs(node, job_id))}; "
          f"redelivered by the sweep: {events.count('job-redelivered')}; orphans: 0")
    assert worker_redelivered_s <= 30  # the new worker's start-up included
    assert node.stop() < 10
    assert node.node_processes() == []
