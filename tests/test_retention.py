"""Retention (node.retention, ``ainode purge``): the instances of studies finished long ago leave the spool, their
ledger rows and audit trail stay, nothing else is touched. Real listeners receive real studies into a SQLite or
PostgreSQL ledger; the studies are finished through the ledger's own job operations."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from node.cli import purge as purge_command
from node.cli import status as status_command
from node.errors import ConfigError
from node.ledger.records import idempotency_key
from node.ledger.repository import Repository
from node.ledger.states import DeliveryState, StudyState
from node.retention import ASIDE, _remove, purge
from node.scp.server import ListenerHandle
from node.scp.status import StoreStatus
from node.spool import RESULTS_DIRNAME, result_dir, result_json_path, uid_key
from tests.scp.fixtures import FakeClock, ListenerFactory, ledger_url, send, start
from tests.support.studies import SynthCase, synth_case

__all__ = ["ledger_url", "start", "synth_case"]

DAY = 86400.0


def _renamed(files: tuple[Path, ...], out: Path, tag: str) -> tuple[Path, ...]:
    """Copies of ``files`` with new Study / Series / SOP Instance UIDs (another study of the same patient)."""
    out.mkdir(parents=True)
    copies = []
    for n, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[tag, "study"])
        ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[tag, ds.SeriesInstanceUID])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(
            entropy_srcs=[tag, ds.SOPInstanceUID])
        copy = out / f"{n:04d}.dcm"
        ds.save_as(copy, enforce_file_format=True)
        copies.append(copy)
    return tuple(copies)


def _finish(repo: Repository, uid: str, at: float, *, ok: bool = True) -> int:
    """Take a received study through ready -> queued -> processing -> done (or failed) at ``at``; the job id."""
    study = repo.study(uid)
    assert study is not None and repo.mark_ready(study, at)
    job = repo.enqueue(uid, idempotency_key(uid, study.content_digest), at)
    assert job is not None
    repo.start_job(job.id, at)
    repo.finish_job(job.id, at, ok=ok, reason=None if ok else "test failure")
    return job.id


def _results(spool: Path, uid: str, job_id: int) -> Path:
    """A job's result folder as the job layer leaves it (an SR file and the summary beside the folder)."""
    folder = result_dir(spool, uid, job_id)
    folder.mkdir(parents=True)
    (folder / "sr.dcm").write_bytes(b"SR")
    result_json_path(folder).write_text("{}")
    return folder


@pytest.fixture
def received(start: ListenerFactory, ledger_url: str, synth_case: SynthCase,
             tmp_path: Path) -> tuple[ListenerHandle, FakeClock, str, str]:
    """A listener that has received two studies: the synthetic one (to be finished) and a second (still receiving,
    T1CE only); returns the listener, its clock and the two Study Instance UIDs."""
    clock = FakeClock()
    listener = start(ledger_url, clock)
    second = _renamed(synth_case.t1ce, tmp_path / "second", "retention")
    assert send(listener.port, synth_case.all + second) == [StoreStatus.SUCCESS] * (len(synth_case.all) + len(second))
    assert listener.flush(timeout_s=30)
    first_uid = str(pydicom.dcmread(synth_case.t1ce[0], stop_before_pixels=True).StudyInstanceUID)
    second_uid = str(pydicom.dcmread(second[0], stop_before_pixels=True).StudyInstanceUID)
    return listener, clock, first_uid, second_uid


@pytest.mark.parametrize("ledger_url", ["sqlite", "postgresql"], indirect=True)
def test_only_studies_finished_long_ago_lose_their_instances(
        received: tuple[ListenerHandle, FakeClock, str, str]) -> None:
    listener, clock, done_uid, receiving_uid = received
    repo, spool = listener.repository, listener.spool.root
    job_id = _finish(repo, done_uid, clock.advance(60))
    results = _results(spool, done_uid, job_id)
    done_files = [spool / p for s in repo.study(done_uid).series for p in s.files]  # type: ignore[union-attr]
    size = sum(p.stat().st_size for p in done_files)

    assert purge(repo, spool, older_than_s=30 * DAY, now=clock.now + 29 * DAY) == []  # not old enough

    later = clock.now + 31 * DAY
    (planned,) = purge(repo, spool, older_than_s=30 * DAY, now=later, dry_run=True)
    assert (planned.study_instance_uid, planned.state, planned.files, planned.bytes) == (
        done_uid, StudyState.DONE, len(done_files), size)
    assert all(p.is_file() for p in done_files)  # a dry run removes nothing
    assert not [e for e in repo.audit_trail(done_uid) if e.event == "study-purged"]

    (purged,) = purge(repo, spool, older_than_s=30 * DAY, now=later)
    assert (purged.files, purged.bytes, purged.results_removed) == (len(done_files), size, False)
    assert not any(p.exists() for p in done_files)
    assert not (spool / uid_key(done_uid)).exists()  # its emptied folders too
    assert (results / "sr.dcm").is_file()  # results stay unless asked for
    (event,) = [e for e in repo.audit_trail(done_uid) if e.event == "study-purged"]
    assert event.detail is not None and f"{len(done_files)} instance file(s), {size} bytes" in event.detail

    study = repo.study(done_uid)  # the ledger still lists the study and its instances
    assert study is not None and study.state is StudyState.DONE and study.instance_count == len(done_files)
    receiving = repo.study(receiving_uid)  # a study still receiving is never touched, however old
    assert receiving is not None and receiving.state is StudyState.RECEIVING
    assert all((spool / p).is_file() for s in receiving.series for p in s.files)

    assert purge(repo, spool, older_than_s=30 * DAY, now=later) == []  # nothing left to remove: no second event
    assert len([e for e in repo.audit_trail(done_uid) if e.event == "study-purged"]) == 1


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
def test_results_go_only_once_every_delivery_reached_the_pacs(
        received: tuple[ListenerHandle, FakeClock, str, str]) -> None:
    listener, clock, done_uid, _receiving = received
    repo, spool = listener.repository, listener.spool.root
    job_id = _finish(repo, done_uid, clock.advance(60))
    results = _results(spool, done_uid, job_id)
    repo.record_delivery(job_id, "PACS@127.0.0.1:104", "1.2.3.4", DeliveryState.FAILED, clock.now)
    later = clock.now + 31 * DAY

    (first,) = purge(repo, spool, older_than_s=30 * DAY, now=later, results=True)
    assert not first.results_removed and first.results_kept_because is not None
    assert "failed" in first.results_kept_because  # a dead letter may still be resent
    assert (results / "sr.dcm").is_file()

    repo.record_delivery(job_id, "PACS@127.0.0.1:104", "1.2.3.4", DeliveryState.SENT, clock.now)
    (second,) = purge(repo, spool, older_than_s=30 * DAY, now=later, results=True)
    assert second.results_removed and second.files == 0
    assert not results.exists() and not result_json_path(results).exists()
    assert not (spool / RESULTS_DIRNAME / uid_key(done_uid)).exists()


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
def test_a_purged_study_sent_again_is_stored_again(received: tuple[ListenerHandle, FakeClock, str, str],
                                                    synth_case: SynthCase) -> None:
    listener, clock, done_uid, _receiving = received
    repo, spool = listener.repository, listener.spool.root
    _finish(repo, done_uid, clock.advance(60), ok=False)  # a failed study is finished too
    (purged,) = purge(repo, spool, older_than_s=DAY, now=clock.now + 2 * DAY)
    assert purged.state is StudyState.FAILED and purged.files == len(synth_case.all)

    assert send(listener.port, synth_case.t2) == [StoreStatus.SUCCESS] * len(synth_case.t2)
    assert listener.flush(timeout_s=30)
    for path in synth_case.t2:  # what was sent is in the spool again
        ds = pydicom.dcmread(path)
        placed = spool / listener.spool.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert pydicom.dcmread(placed).PixelData == ds.PixelData


def test_a_file_replaced_since_it_was_read_stays(tmp_path: Path) -> None:
    path = tmp_path / "a.dcm"
    path.write_bytes(b"first copy")
    inode = path.stat().st_ino
    replacement = tmp_path / "incoming.part"
    replacement.write_bytes(b"second copy, acknowledged since")
    replacement.replace(path)  # what the listener's replace policy does: a new file renamed over the old

    assert not _remove(path, inode)
    assert path.read_bytes() == b"second copy, acknowledged since"
    assert not path.with_name(path.name + ASIDE).exists()
    assert _remove(path, path.stat().st_ino) and not path.exists()
    assert not _remove(path, 0)  # gone already


def test_purge_command_dry_run_and_removal(received: tuple[ListenerHandle, FakeClock, str, str], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    listener, clock, done_uid, receiving_uid = received
    repo, spool = listener.repository, listener.spool.root
    _finish(repo, done_uid, clock.advance(60))
    files = [spool / p for s in repo.study(done_uid).series for p in s.files]  # type: ignore[union-attr]
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    purge_command.register(sub)
    status_command.register(sub)
    database = listener.repository.ledger.url
    # the listener's clock (FakeClock) stands in January 1970: a 1-day retention finds the study old enough
    args = parser.parse_args(["purge", "--older-than-days", "1", "--dry-run", "--database", database,
                              "--spool-dir", str(spool)])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert done_uid in out and "would remove" in out and all(p.is_file() for p in files)

    args = parser.parse_args(["purge", "--older-than-days", "1", "--database", database, "--spool-dir", str(spool)])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert done_uid in out and "removed" in out and not any(p.exists() for p in files)

    # ainode status tells which studies lost their files to retention (only while nothing arrived since)
    args = parser.parse_args(["status", "--json", "--database", database, "--spool-dir", str(spool)])
    assert args.handler(args) == 0
    studies = {s["study_instance_uid"]: s for s in json.loads(capsys.readouterr().out)}
    assert studies[done_uid]["purged"] is not None and studies[receiving_uid]["purged"] is None
    args = parser.parse_args(["status", "--database", database, "--spool-dir", str(spool)])
    assert args.handler(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if done_uid in line and "removed by retention" in line]
    assert not [line for line in lines if receiving_uid in line and "removed by retention" in line]

    bad = parser.parse_args(["purge", "--older-than-days", "-1", "--database", database, "--spool-dir", str(spool)])
    with pytest.raises(ConfigError, match="older-than-days"):
        bad.handler(bad)


def test_the_scheduler_runs_retention_hourly_only_when_it_is_set(tmp_path: Path) -> None:
    from node.config import Settings
    from node.jobs.broker import resolve_broker
    from node.jobs.celery_app import PURGE_EVERY_S, production_settings
    from node.vocabulary import PURGE_TASK

    def schedule(env: dict[str, str]) -> dict[str, dict[str, object]]:
        settings = Settings.load(env={"AINODE_SPOOL_DIR": str(tmp_path / "spool"), **env})
        conf = production_settings(resolve_broker(settings), settings, 1)
        return dict(conf["beat_schedule"])

    assert PURGE_TASK not in [entry["task"] for entry in schedule({}).values()]
    (entry,) = [e for e in schedule({"AINODE_RETENTION_DAYS": "30"}).values() if e["task"] == PURGE_TASK]
    assert entry["schedule"] == PURGE_EVERY_S == 3600.0 and entry["options"] == {"expires": 3600.0}
    with pytest.raises(ConfigError, match="AINODE_RETENTION_DAYS"):
        Settings.load(env={"AINODE_RETENTION_DAYS": "0"})
    with pytest.raises(ConfigError, match="AINODE_RETENTION_DAYS"):
        Settings.load(env={"AINODE_RETENTION_DAYS": "thirty"})


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
def test_the_purge_task_applies_the_settings(received: tuple[ListenerHandle, FakeClock, str, str]) -> None:
    from node.config import Settings
    from node.jobs import context, tasks

    listener, clock, done_uid, receiving_uid = received
    repo, spool = listener.repository, listener.spool.root
    _finish(repo, done_uid, clock.advance(60))
    saved = list(context._bound)
    try:
        base = {"spool_dir": spool, "database_url": listener.repository.ledger.url}
        tasks.apply_settings(Settings.load(env={}, overrides=base))
        assert tasks.purge_expired_task() == 0  # retention not set: nothing removed
        assert (spool / uid_key(done_uid)).is_dir()
        tasks.apply_settings(Settings.load(env={}, overrides={**base, "retention_days": 1}))
        assert tasks.purge_expired_task() == 1  # the listener's clock stands in 1970: a day has passed
        assert not (spool / uid_key(done_uid)).exists() and (spool / uid_key(receiving_uid)).is_dir()
    finally:
        context.job_context().repo.ledger.dispose()
        context._bound[:] = saved
        context.job_context.cache_clear()


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
def test_a_file_that_cannot_be_removed_stays_and_the_rest_go(received: tuple[ListenerHandle, FakeClock, str, str],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    listener, clock, done_uid, _receiving = received
    repo, spool = listener.repository, listener.spool.root
    _finish(repo, done_uid, clock.advance(60))
    series = repo.study(done_uid).series  # type: ignore[union-attr]
    locked = (spool / series[0].files[0]).parent
    others = [spool / p for s in series[1:] for p in s.files]
    # an immutable folder: nothing in it can be renamed or removed, not even by root (EPERM)
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    try:
        (purged,) = purge(repo, spool, older_than_s=DAY, now=clock.now + 2 * DAY)
    finally:
        subprocess.run([chattr, "-i", str(locked)], check=True)
    assert purged.files == len(others) and not any(p.exists() for p in others)
    assert all((spool / p).is_file() for p in series[0].files)
    assert "retention cannot remove a file" in caplog.text
