"""The JSON API, /health and /metrics against a real uvicorn server and a real ledger (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.config import Settings
from node.errors import TransientError
from node.jobs.broker import queue_depth, resolve_broker
from node.jobs.recovery import queued_job_ids
from node.ledger.states import DeliveryState, JobState, StudyState
from node.values import Destination
from node.web.dispatch import CeleryDispatcher
from node.web.health import broker_probe
from tests.web.conftest import DONE_UID, FAILED_UID, RECEIVING_UID, TOKEN, WebNode


def spool_settings(spool_dir: Path, env: dict[str, str] | None = None) -> Settings:
    """Settings from ``env`` (as if it were the environment) with the spool in ``spool_dir``."""
    return Settings.load(env={**(env or {}), "AINODE_SPOOL_DIR": str(spool_dir)})



def test_no_token_is_401_and_not_audited(web: WebNode) -> None:
    with web.api(token=None) as client:
        response = client.get("/api/studies")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Bearer" in response.json()["error"]
    assert web.events() == []


def test_wrong_token_is_401_and_audited(web: WebNode) -> None:
    with web.api(token="not-the-token-at-all") as client:
        response = client.post(f"/api/studies/{DONE_UID}/rerun")
    assert response.status_code == 401 and response.json() == {"error": "wrong token"}
    assert web.events() == [("web-login-failed", "web:127.0.0.1",
                             f"wrong Bearer token on POST /api/studies/{DONE_UID}/rerun")]
    assert [j.id for j in web.repo.jobs(DONE_UID)] == [web.filled.done_job]  # nothing happened


def test_studies_list_and_detail(web: WebNode) -> None:
    with web.api() as client:
        listed = client.get("/api/studies")
        detail = client.get(f"/api/studies/{DONE_UID}")
        failed_only = client.get("/api/studies", params={"state": "failed"})
        bad_state = client.get("/api/studies", params={"state": "nope"})
        missing = client.get("/api/studies/1.2.3.4")
    assert listed.status_code == 200 and listed.headers["cache-control"] == "no-store"
    rows = {row["study_instance_uid"]: row for row in listed.json()["studies"]}
    assert list(rows) == [RECEIVING_UID, FAILED_UID, DONE_UID]  # most recently received first
    done = rows[DONE_UID]
    assert (done["state"], done["series_count"], done["instance_count"]) == ("done", 3, 6)
    assert done["latest_job"]["state"] == "done" and done["latest_job"]["duration_s"] == pytest.approx(39.5)
    assert done["prediction"] == "HR+/HER2- (p=0.71) + 1 more lesion"
    assert done["deliveries"] == {"sent": 1, "failed": 1}
    assert rows[FAILED_UID]["latest_job"]["reason"] == "no DICOM-SEG of the lesions was received"
    assert rows[RECEIVING_UID]["latest_job"] is None and rows[RECEIVING_UID]["prediction"] is None

    body = detail.json()
    assert [s["series_description"] for s in body["series"]] == ["T1 3D post", "T2 axial", "Lesions"]
    assert [s["instances"] for s in body["series"]] == [3, 2, 1]
    (job,) = body["jobs"]
    assert job["result"]["timings_s"]["total"] == 36.5 and len(job["result"]["lesions"]) == 2
    assert job["result"]["lesions"][1]["ood_reasons"] == ["volume below the training range"]
    assert [(d["state"], d["attempts"], d["last_status"]) for d in body["deliveries"]] == [
        ("sent", 1, 0), ("failed", 2, 0xA700)]
    assert "job-done" in [e["event"] for e in body["audit"]]
    assert [r["study_instance_uid"] for r in failed_only.json()["studies"]] == [FAILED_UID]
    assert bad_state.status_code == 400 and "expected one of" in bad_state.json()["error"]
    assert missing.status_code == 404 and missing.json() == {"error": "study 1.2.3.4 is not in the ledger"}


def test_rerun_creates_one_keyed_job_and_sends_it(web: WebNode) -> None:
    first_job = web.filled.done_job
    with web.api() as client:
        created = client.post(f"/api/studies/{DONE_UID}/rerun", json={"after_job": first_job})
        again = client.post(f"/api/studies/{DONE_UID}/rerun", json={"after_job": first_job})
        busy = client.post(f"/api/studies/{DONE_UID}/rerun")  # the study is queued now
        receiving = client.post(f"/api/studies/{RECEIVING_UID}/rerun")
        unknown_job = client.post(f"/api/studies/{DONE_UID}/rerun", json={"after_job": 999})
    assert created.status_code == 201 and created.json()["created"] is True
    job = created.json()["job"]
    assert (job["state"], job["supersedes_job_id"], job["study_version"]) == ("queued", first_job, 1)
    assert again.status_code == 200 and again.json() == {"created": False, "job": job}  # idempotent
    assert busy.status_code == 409 and "cannot be re-run" in busy.json()["error"]
    assert receiving.status_code == 409
    assert unknown_job.status_code == 404

    jobs = web.repo.jobs(DONE_UID)
    assert [(j.id, j.state) for j in jobs] == [(first_job, JobState.DONE), (job["id"], JobState.QUEUED)]
    assert jobs[1].idempotency_key != jobs[0].idempotency_key
    study = web.repo.study(DONE_UID)
    assert study is not None and study.state is StudyState.QUEUED
    assert queued_job_ids(web.queue_folder) == {job["id"]}  # handed to the workers, once
    events = web.events()
    assert events[0] == ("web-rerun", "web:127.0.0.1", f"job {job['id']} queued (re-run after job {first_job})")
    assert events[1][0] == "web-rerun" and "already requested" in str(events[1][2])
    assert [e[0] for e in events[2:]] == ["web-rerun-refused", "web-rerun-refused"]
    queued = [e for e in web.repo.audit_trail(DONE_UID) if e.event == "job-queued"]
    assert queued[-1].detail == f"job {job['id']}, version 1, supersedes job {first_job}, re-run requested by " \
                                "web:127.0.0.1"


def test_resend_requeues_a_dead_letter(web: WebNode) -> None:
    dead, sent = web.filled.dead_delivery, web.filled.sent_delivery
    with web.api() as client:
        resent = client.post(f"/api/deliveries/{dead}/resend")
        not_failed = client.post(f"/api/deliveries/{sent}/resend")
        missing = client.post("/api/deliveries/4242/resend")
        not_a_number = client.post("/api/deliveries/abc/resend")
        failures = client.get("/api/failures").json()
    assert resent.status_code == 200 and resent.json()["resent"] == 1
    assert (resent.json()["delivery"]["state"], resent.json()["delivery"]["attempts"]) == ("pending", 0)
    assert not_failed.status_code == 409 and missing.status_code == 404 and not_a_number.status_code == 422
    assert failures["deliveries"] == [] and [j["id"] for j in failures["jobs"]] == [web.filled.failed_job]
    assert [s["study_instance_uid"] for s in failures["studies"]] == [FAILED_UID]
    trail = [e.event for e in web.repo.audit_trail(DONE_UID)]
    assert trail[-2:] == ["delivery-resend", "web-resend"]
    assert web.events()[-1][1] == "web:127.0.0.1"
    assert len(queued_job_ids(web.queue_folder)) == 0 and any(web.queue_folder.glob("*.msg"))  # a deliver task


def test_api_on_sqlite_and_postgresql(node_factory: Callable[..., WebNode], ledger_url: str) -> None:
    node = node_factory(ledger_url)
    with node.api() as client:
        rows = client.get("/api/studies").json()["studies"]
        created = client.post(f"/api/studies/{FAILED_UID}/rerun")
        resent = client.post(f"/api/deliveries/{node.filled.dead_delivery}/resend")
    assert [r["state"] for r in rows] == ["receiving", "failed", "done"]
    assert created.status_code == 201 and resent.json()["resent"] == 1
    assert [d.state for d in node.repo.jobs(FAILED_UID)] == [JobState.FAILED, JobState.QUEUED]


def _metrics(node: WebNode, token: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with node.api(token=token) as client:
        response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_match_the_ledger(web: WebNode) -> None:
    with web.api(token="wrong-token-wrong-token") as client:
        client.get("/api/studies")  # one failed login
    values = _metrics(web)
    assert values[("ainode_ledger_up", ())] == 1 and values[("ainode_broker_up", ())] == 1
    assert values[("ainode_instances_received_total", ())] == web.filled.instances  # open: no AE titles
    with_token = _metrics(web, TOKEN)
    assert with_token[("ainode_instances_received_total", (("calling_ae_title", "MODALITY"),))] == \
        web.filled.instances
    studies = {s.value: sum(1 for x in web.repo.studies() if x.state is s) for s in StudyState}
    for state, count in studies.items():
        assert values[("ainode_studies", (("state", state),))] == count
    assert values[("ainode_jobs", (("state", "done"),))] == 1 and values[("ainode_jobs", (("state", "failed"),))] == 1
    assert values[("ainode_deliveries", (("state", "failed"),))] == 1
    assert values[("ainode_deliveries", (("state", "sent"),))] == 1
    assert values[("ainode_delivery_failures_total", (("outcome", "retry"),))] == 1
    assert values[("ainode_delivery_failures_total", (("outcome", "dead-letter"),))] == 1
    assert values[("ainode_web_login_failures_total", ())] == 1
    assert values[("ainode_job_duration_seconds_count", (("state", "done"),))] == 1
    assert values[("ainode_job_duration_seconds_sum", (("state", "done"),))] == pytest.approx(39.5)
    assert values[("ainode_job_duration_seconds_bucket", (("le", "30.0"), ("state", "done")))] == 0
    assert values[("ainode_job_duration_seconds_bucket", (("le", "60.0"), ("state", "done")))] == 1
    assert values[("ainode_stage_duration_seconds_sum", (("stage", "pipeline.preprocess"),))] == 20.0
    assert values[("ainode_stage_duration_seconds_count", (("stage", "total"),))] == 1
    assert values[("ainode_queue_depth", (("queue", "web-test"),))] == 0

    with web.api() as client:
        assert client.post(f"/api/studies/{DONE_UID}/rerun").status_code == 201
    after = _metrics(web)
    assert after[("ainode_queue_depth", (("queue", "web-test"),))] == 1
    assert after[("ainode_jobs", (("state", "queued"),))] == 1
    assert after[("ainode_studies", (("state", "queued"),))] == 1


def test_health_is_200_when_all_checks_pass_and_503_when_a_destination_is_down(
    node_factory: Callable[..., WebNode],
) -> None:
    node = node_factory()
    with node.api(token=None) as client:
        healthy = client.get("/health")
    assert healthy.status_code == 200, healthy.text
    checks = {c["name"]: c for c in healthy.json()["checks"]}
    assert set(checks) == {"database", "broker", "spool", f"destination {node.pacs.destination}"}
    assert all(c["ok"] for c in checks.values()) and healthy.json()["status"] == "ok"

    down = Destination("GONE", "127.0.0.1", node.pacs.destination.port)
    node.pacs.close()  # nothing listens on its port any more
    other = node_factory(destinations=(down,))
    with other.api(token=None) as client:
        failing = client.get("/health")
    assert failing.status_code == 503 and failing.json()["status"] == "failing"
    bad = [c for c in failing.json()["checks"] if not c["ok"]]
    assert [c["name"] for c in bad] == [f"destination {down}"] and "refused" in bad[0]["detail"].lower()


def test_broker_down_fails_health_and_metrics_say_so(web: WebNode) -> None:
    import shutil

    shutil.rmtree(web.queue_folder)  # the embedded broker's folder is gone
    with web.api(token=None) as client:
        health = client.get("/health")
    assert health.status_code == 503
    assert [c["name"] for c in health.json()["checks"] if not c["ok"]] == ["broker"]
    assert _metrics(web)[("ainode_broker_up", ())] == 0


def test_delivery_state_counts_cover_every_state(web: WebNode) -> None:
    values = _metrics(web)
    assert {labels[0][1] for (name, labels) in values if name == "ainode_deliveries"} == {
        s.value for s in DeliveryState}
    assert TOKEN not in str(values)


def test_queue_depth_and_broker_check_on_redis(tmp_path: Path) -> None:
    """Against the Redis at 127.0.0.1:6379 (skipped without it), with a key prefix and queue of its own."""
    redis = pytest.importorskip("redis")
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable at 127.0.0.1:6379: {exc}")
    run = uuid.uuid4().hex[:10]
    env = {"AINODE_BROKER_URL": "redis://127.0.0.1:6379/0", "AINODE_BROKER_KEY_PREFIX": f"ainode-web-{run}:",
           "AINODE_QUEUE": f"web-{run}"}
    broker = resolve_broker(spool_settings(tmp_path, env))
    dispatcher = CeleryDispatcher(broker, Settings.load(env=env))
    try:
        assert queue_depth(broker, env["AINODE_QUEUE"]) == 0
        dispatcher.process(7, "1.2.3", "/spool/x", "/spool/results/x/job-7")
        dispatcher.deliver(7)
        assert queue_depth(broker, env["AINODE_QUEUE"]) == 2
        assert broker_probe(broker)().endswith("answers PING")
        down = resolve_broker(spool_settings(tmp_path), "redis://127.0.0.1:1/0")
        with pytest.raises(TransientError, match="cannot be reached"):
            queue_depth(down, "x", timeout_s=0.5)
    finally:
        dispatcher.close()
        keys = list(client.scan_iter(match=f"*{run}*"))
        if keys:
            client.delete(*keys)
        client.close()
