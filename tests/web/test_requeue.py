"""Re-queue a stuck job from the dashboard and the API (issue 10 item 7): a job left queued after its message
was lost (publishing failed after the job row committed) or processing after its worker was killed."""

from __future__ import annotations

import httpx

from node.jobs.recovery import queued_job_ids
from node.ledger.repository import idempotency_key
from node.ledger.states import JobState, StudyState
from tests.web.conftest import RECEIVING_UID, TOKEN, WebNode


def _queued_job(web: WebNode) -> int:
    """The receiving study made ready and queued, as if publishing its task had failed (no message)."""
    study = web.repo.study(RECEIVING_UID)
    assert study is not None and web.repo.mark_ready(study, web.clock.advance(60))
    job = web.repo.enqueue(RECEIVING_UID, idempotency_key(RECEIVING_UID, study.content_digest), web.clock.advance(1))
    assert job is not None
    return job.id


def test_api_requeues_a_stuck_job_once_it_is_stuck(web: WebNode) -> None:
    job = _queued_job(web)
    with web.api() as client:
        early = client.post(f"/api/jobs/{job}/requeue")
        web.clock.advance(301)  # queued and unchanged for more than 300 s: stuck
        stuck = client.post(f"/api/jobs/{job}/requeue")
        again = client.post(f"/api/jobs/{job}/requeue")  # just re-queued: not stuck
        forced = client.post(f"/api/jobs/{job}/requeue", json={"force": True})
        done = client.post(f"/api/jobs/{web.filled.done_job}/requeue", json={"force": True})
        unknown = client.post("/api/jobs/4242/requeue")
    assert early.status_code == 409 and "not stuck before 300 s" in early.json()["error"]
    assert stuck.status_code == 200 and stuck.json()["job"]["state"] == "queued"
    assert again.status_code == 409 and forced.status_code == 200
    assert done.status_code == 409 and "re-run the study instead" in done.json()["error"]
    assert unknown.status_code == 404
    assert queued_job_ids(web.queue_folder) == {job}  # the process task was sent (twice, one job)
    assert len(list(web.queue_folder.glob("*.msg"))) == 2
    trail = [(e.event, e.detail) for e in web.repo.audit_trail(RECEIVING_UID) if "requeue" in e.event]
    assert [t[0] for t in trail] == ["web-requeue-refused", "job-requeued", "web-requeue", "web-requeue-refused",
                                     "job-requeued", "web-requeue"]
    assert "re-queued by web:127.0.0.1" in str(trail[1][1]) and "(forced)" in str(trail[4][1])


def test_dashboard_requeues_a_processing_job_whose_worker_died(web: WebNode) -> None:
    job = _queued_job(web)
    web.repo.start_job(job, web.clock.advance(1))  # then the worker was killed: no one finishes it
    web.clock.advance(web.settings.hard_time_limit + 1)
    with httpx.Client(base_url=web.base_url, timeout=10, follow_redirects=False) as client:
        assert client.post("/login", data={"token": TOKEN, "next": "/studies"}).status_code == 303
        page = client.get(f"/studies/{RECEIVING_UID}")
        assert f'id="requeue-{job}"' in page.text  # the button is offered for a processing job
        csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        forged = client.post(f"/jobs/{job}/requeue", data={"csrf": "forged", "study": RECEIVING_UID})
        done = client.post(f"/jobs/{job}/requeue", data={"csrf": csrf, "study": RECEIVING_UID})
        shown = client.get(done.headers["location"])
    assert forged.status_code == 403
    assert done.status_code == 303 and done.headers["location"].endswith(f"notice=requeued&job={job}")
    assert f"Job #{job} re-queued" in shown.text
    jobs = {j.id: j.state for j in web.repo.jobs(RECEIVING_UID)}
    assert jobs[job] is JobState.QUEUED
    study = web.repo.study(RECEIVING_UID)
    assert study is not None and study.state is StudyState.QUEUED
    assert queued_job_ids(web.queue_folder) == {job}
