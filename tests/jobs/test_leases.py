"""Job leases as plain calls on a real ledger: claims, heartbeats, the recovery sweep, the redelivery cap and the
hard time limit (``node.ledger.leases``, ``node.jobs.recovery``). The same rules with real, killed worker
processes are in ``test_worker_faults.py`` and ``tests/chaos``."""

from __future__ import annotations

from dataclasses import replace

import pytest

from node.config import ForceCompleteAction, Settings
from node.errors import ConfigError
from node.jobs.completeness import CompletenessChecker, CompletenessPolicy
from node.jobs.recovery import Heartbeat, fail_timed_out, recover_stalled, redispatch_orphans, resend_unsent
from node.jobs.runner import dispatch_ready
from node.ledger import leases
from node.ledger.states import JobState, StudyState
from tests.jobs.conftest import Node
from tests.support.waiting import wait_for

SETTINGS = replace(Settings(), job_heartbeat_s=5.0, job_stale_after_s=15.0, job_max_redeliveries=2,
                   task_time_limit=1800.0)
Dispatched = tuple[Node, tuple[int, str, str, str]]


def _claim(node: Node, job_id: int, holder: str, settings: Settings = SETTINGS) -> leases.Claim:
    return leases.claim_job(node.repo, job_id, holder, node.clock(), stale_after_s=settings.job_stale_after_s,
                            max_redeliveries=settings.job_max_redeliveries)


def _start(node: Node, job_id: int, holder: str) -> None:
    """A run claims its job and starts it, as ``ainode.process_study`` does."""
    assert _claim(node, job_id, holder).outcome is leases.ClaimOutcome.RUN
    if node.job(job_id).state is JobState.QUEUED:
        node.repo.start_job(job_id, node.clock())


def test_a_live_lease_keeps_duplicates_out_and_the_same_message_back_in(dispatched: Dispatched) -> None:
    node, (job_id, *_rest) = dispatched
    _start(node, job_id, "task-a")
    assert _claim(node, job_id, "task-b").outcome is leases.ClaimOutcome.HELD  # a duplicate message
    node.clock.advance(10)
    assert leases.renew_leases(node.repo, {"task-a"}, node.clock()) == 1
    node.clock.advance(10)  # 10 s after the renewal: still alive
    assert _claim(node, job_id, "task-b").outcome is leases.ClaimOutcome.HELD
    # the pool process running task-a died; Celery requeued the same message: its run died, it runs again
    again = _claim(node, job_id, "task-a")
    assert again.outcome is leases.ClaimOutcome.RUN and again.worker_deaths == 1 and again.attempts == 2


def test_a_stale_lease_is_taken_over_and_the_death_counted(dispatched: Dispatched) -> None:
    node, (job_id, *_rest) = dispatched
    _start(node, job_id, "task-a")
    node.clock.advance(SETTINGS.job_stale_after_s + 1)  # the whole worker was killed: no more renewals
    claim = _claim(node, job_id, "task-b")
    assert claim.outcome is leases.ClaimOutcome.RUN and claim.worker_deaths == 1


def test_a_run_that_ended_is_no_death(dispatched: Dispatched) -> None:
    node, (job_id, *_rest) = dispatched
    _start(node, job_id, "task-a")
    assert leases.end_attempt(node.repo, job_id, "task-a", node.clock())  # a transient error, or a stop
    assert _claim(node, job_id, "task-a").worker_deaths == 0
    assert not leases.end_attempt(node.repo, job_id, "task-b", node.clock())  # not the holder


def test_a_retry_keeps_its_lease_alive_until_it_is_due(dispatched: Dispatched) -> None:
    node, (job_id, *_rest) = dispatched
    _start(node, job_id, "task-a")
    leases.end_attempt(node.repo, job_id, "task-a", node.clock(), alive_until=node.clock() + 120)
    node.clock.advance(100)
    assert leases.stalled_jobs(node.repo, node.clock(), stale_after_s=15, never_leased_after_s=1800) == []
    assert leases.renew_leases(node.repo, {"task-a"}, node.clock()) == 0  # never moved back from the future
    node.clock.advance(40)
    assert [j.job_id for j in leases.stalled_jobs(node.repo, node.clock(), stale_after_s=15,
                                                  never_leased_after_s=1800)] == [job_id]


def test_the_sweep_resends_a_stalled_job_once_and_the_cap_fails_it(dispatched: Dispatched) -> None:
    node, (job_id, uid, study_dir, out_dir) = dispatched
    sent: list[tuple[int, str, str, str]] = []
    for death in range(1, SETTINGS.job_max_redeliveries + 2):
        _start(node, job_id, f"task-{death}")
        assert recover_stalled(node.repo, node.spool_dir, lambda *a: sent.append(a), node.clock(), SETTINGS) == []
        node.clock.advance(SETTINGS.job_stale_after_s + 1)  # its worker is killed mid-job
        resent = recover_stalled(node.repo, node.spool_dir, lambda *a: sent.append(a), node.clock(), SETTINGS)
        if death <= SETTINGS.job_max_redeliveries:
            assert resent == [job_id] and sent[-1] == (job_id, uid, study_dir, out_dir)
            # the re-sent message has a whole hard time limit to be claimed: no second message meanwhile
            node.clock.advance(600)
            assert recover_stalled(node.repo, node.spool_dir, lambda *a: sent.append(a), node.clock(),
                                   SETTINGS) == []
        else:
            assert resent == []
    assert len(sent) == SETTINGS.job_max_redeliveries
    job = node.job(job_id)
    assert job.state is JobState.FAILED and job.reason is not None
    assert "died 3 time(s)" in job.reason and "AINODE_JOB_MAX_REDELIVERIES" in job.reason
    study = node.repo.study(uid)
    assert study is not None and study.state is StudyState.FAILED and study.reason == job.reason
    events = [e.event for e in node.repo.audit_trail(uid)]
    assert events.count("job-redelivered") == SETTINGS.job_max_redeliveries and events[-1] == "job-failed"


def test_the_claim_fails_a_job_past_the_cap(dispatched: Dispatched) -> None:
    """Pool-process deaths with the worker alive: Celery requeues the same message, the claim counts them."""
    node, (job_id, *_rest) = dispatched
    for _ in range(SETTINGS.job_max_redeliveries + 1):
        _start(node, job_id, "task-a")
    claim = _claim(node, job_id, "task-a")
    assert claim.outcome is leases.ClaimOutcome.CAPPED and claim.worker_deaths == 3
    assert node.job(job_id).state is JobState.FAILED and node.job(job_id).reason == claim.reason
    assert _claim(node, job_id, "task-a").outcome is leases.ClaimOutcome.FINISHED


def test_a_run_killed_at_the_hard_time_limit_fails_its_job(dispatched: Dispatched) -> None:
    node, (job_id, *_rest) = dispatched
    _start(node, job_id, "task-a")
    assert fail_timed_out(node.repo, "task-a", node.clock(), 1800.0) == job_id
    assert node.job(job_id).reason == "processing was killed at the hard time limit (1800 s, AINODE_TASK_TIME_LIMIT)"
    assert fail_timed_out(node.repo, "task-a", node.clock(), 1800.0) is None  # once


def test_the_sweep_fails_a_run_older_than_the_hard_time_limit(dispatched: Dispatched) -> None:
    """The backstop when the worker's main process could not record the kill (it died too, or the ledger)."""
    node, (job_id, *_rest) = dispatched
    _start(node, job_id, "task-a")
    node.clock.advance(SETTINGS.hard_time_limit + 1)
    assert recover_stalled(node.repo, node.spool_dir, lambda *a: None, node.clock(), SETTINGS) == []
    job = node.job(job_id)
    assert job.state is JobState.FAILED and job.reason is not None and "hard time limit" in job.reason


def test_a_job_no_worker_ever_leased_waits_for_the_hard_time_limit(dispatched: Dispatched) -> None:
    """A job processing under a worker of an earlier release (no lease) is not taken from it early."""
    node, (job_id, *_rest) = dispatched
    node.repo.start_job(job_id, node.clock())
    node.clock.advance(600)
    assert recover_stalled(node.repo, node.spool_dir, lambda *a: None, node.clock(), SETTINGS) == []
    node.clock.advance(SETTINGS.hard_time_limit)
    assert recover_stalled(node.repo, node.spool_dir, lambda *a: None, node.clock(), SETTINGS) == [job_id]


def test_recover_releases_a_fresh_lease_when_no_other_worker_runs(dispatched: Dispatched) -> None:
    """``--recover`` (embedded broker, the only worker): the killed worker's lease is released at once."""
    node, (job_id, *_rest) = dispatched
    _start(node, job_id, "task-a")
    sent: list[tuple[int, str, str, str]] = []
    assert redispatch_orphans(node.repo, node.spool_dir, set(), lambda *a: sent.append(a), now=node.clock(),
                              settings=SETTINGS) == [job_id]
    claim = _claim(node, job_id, "task-b")
    assert claim.outcome is leases.ClaimOutcome.RUN and claim.worker_deaths == 1


def test_an_interrupted_run_is_no_death(dispatched: Dispatched) -> None:
    node, (job_id, *_rest) = dispatched
    _start(node, job_id, "task-a")
    assert leases.interrupt_attempts(node.repo, {"task-a"}) == 1  # a warm shutdown began
    node.clock.advance(SETTINGS.job_stale_after_s + 1)
    assert _claim(node, job_id, "task-b").worker_deaths == 0


def test_the_heartbeat_thread_renews_what_its_worker_holds(dispatched: Dispatched) -> None:
    node, (job_id, *_rest) = dispatched
    _start(node, job_id, "task-a")
    held = ["task-a"]
    beat = Heartbeat(node.repo, lambda: held, 0.05, clock=node.clock).start()
    try:
        node.clock.advance(100)
        wait_for(lambda: not leases.stalled_jobs(node.repo, node.clock(), stale_after_s=15,
                                                 never_leased_after_s=1800), 10, "the lease renewed")
        beat.stopping()  # a warm shutdown: the run is not a death any more

        def interrupted() -> bool:
            later = node.clock() + 1000
            return all(j.running_since is None for j in leases.stalled_jobs(node.repo, later, stale_after_s=0,
                                                                            never_leased_after_s=0))

        wait_for(interrupted, 10, "the run interrupted")
    finally:
        beat.stop()


def test_stale_after_must_exceed_two_heartbeats() -> None:
    with pytest.raises(ConfigError, match="job_stale_after_s"):
        Settings.load(env={"AINODE_JOB_HEARTBEAT_S": "10", "AINODE_JOB_STALE_AFTER_S": "15"})


def test_a_job_whose_send_failed_is_sent_again_by_the_poll(node: Node) -> None:
    """The broker was unreachable when the study was queued: the job stays queued in the ledger (nothing lost)
    and the next poll after the grace sends it, once; an operator is not needed."""
    def unreachable(*_args: object) -> None:
        raise ConnectionError("broker down")

    jobs = dispatch_ready(node.repo, _checker(node), node.clock(), unreachable, node.spool_dir)
    assert len(jobs) == 1 and node.job(jobs[0].id).state is JobState.QUEUED
    job_id, uid = jobs[0].id, jobs[0].study_instance_uid
    sent: list[tuple[int, str, str, str]] = []
    # within the grace the dispatcher may still be sending: nothing yet
    assert resend_unsent(node.repo, node.spool_dir, lambda *a: sent.append(a), node.clock(), SETTINGS) == []
    node.clock.advance(SETTINGS.job_stale_after_s + 1)
    # the broker is still down at the first poll: kept for the next one
    assert resend_unsent(node.repo, node.spool_dir, unreachable, node.clock(), SETTINGS) == []
    assert resend_unsent(node.repo, node.spool_dir, lambda *a: sent.append(a), node.clock(), SETTINGS) == [job_id]
    assert [s[:2] for s in sent] == [(job_id, uid)]
    node.clock.advance(600)
    assert resend_unsent(node.repo, node.spool_dir, lambda *a: sent.append(a), node.clock(), SETTINGS) == []
    assert len(sent) == 1


def test_a_sent_job_is_never_sent_again_by_the_unsent_sweep(dispatched: Dispatched) -> None:
    """A job waiting in the broker's queue behind others (sent, not yet claimed) gets no second message."""
    node, _args = dispatched
    node.clock.advance(3600)
    assert resend_unsent(node.repo, node.spool_dir, lambda *a: None, node.clock(), SETTINGS) == []


def _checker(node: Node) -> CompletenessChecker:
    from node.imaging.series_rules import load_rules

    return CompletenessChecker(node.repo, load_rules(), CompletenessPolicy(0.0, 600.0, ForceCompleteAction.FAIL),
                               node.spool_dir)


def test_a_redelivery_whose_send_failed_is_sent_by_the_next_poll(dispatched: Dispatched) -> None:
    """The sweep released a dead worker's job but the broker refused the new message: the next poll sends it
    (before, it waited a whole hard time limit for the lease to go stale again)."""
    node, (job_id, *_rest) = dispatched

    def unreachable(*_args: object) -> None:
        raise ConnectionError("broker down")

    _start(node, job_id, "task-a")
    node.clock.advance(SETTINGS.job_stale_after_s + 1)  # its worker is killed mid-job
    assert recover_stalled(node.repo, node.spool_dir, unreachable, node.clock(), SETTINGS) == []
    sent: list[tuple[int, str, str, str]] = []
    node.clock.advance(SETTINGS.job_stale_after_s + 1)
    assert resend_unsent(node.repo, node.spool_dir, lambda *a: sent.append(a), node.clock(), SETTINGS) == [job_id]
    assert _claim(node, job_id, "task-b").outcome is leases.ClaimOutcome.RUN
