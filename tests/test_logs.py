"""Structured logs and privacy: the JSON/text formatters, correlation ids, redaction, and an end-to-end run of
``ainode -vv serve`` (listener + real Celery worker process) whose every log line must be JSON with the required
fields and must not contain any synthetic patient's identifiers (``tests/phi.py``)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import

from node import log
from node.cli.conformance import SCU_SOP_CLASSES
from node.delivery.scu import send_files
from node.errors import ConfigError
from node.spool import uid_key
from node.values import Destination
from tests.phi import Identifier, assert_no_phi, find_phi, patient_identifiers
from tests.support.net import free_port
from tests.support.scp import StoreSCP
from tests.support.waiting import wait_for

REQUIRED = {"time", "level", "logger", "message", "process", "thread"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``log.configure`` replaces the root logger's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    pool = logging.getLogger("multiprocessing")
    handlers, level, pool_handlers = root.handlers[:], root.level, pool.handlers[:]
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        pool.handlers[:] = pool_handlers
        logging.captureWarnings(False)


#: Celery's worker writes its shutdown notice straight to stdout (``safe_say``), not through logging.
CELERY_CONSOLE = re.compile(r"^worker: (Warm|Cold|Soft) shutdown \(MainProcess\)$")


def _json_lines(text: str) -> list[dict[str, object]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or CELERY_CONSOLE.match(line):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"line {number} is not JSON: {line[:300]}")
        assert isinstance(record, dict), line
        missing = REQUIRED - set(record)
        assert not missing, f"line {number} lacks {missing}: {line[:300]}"
        assert str(record["time"]).endswith("Z")
        datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00"))
        records.append(record)
    return records


# -- formatters and context ----------------------------------------------------------------------------------


def test_json_line_fields_correlation_and_exception(restore_logging: None) -> None:
    stream = io.StringIO()
    assert log.configure(1, log_format=log.LogFormat.JSON, stream=stream) is log.LogFormat.JSON
    logger = logging.getLogger("node.test")
    key = log.study_key("1.2.3.4")
    logger.info("outside")
    with log.correlated("poll"), log.correlated(job=7, study=key):
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed %d", 1)
    logger.debug("not shown at info")
    outside, failed = _json_lines(stream.getvalue())
    assert outside["message"] == "outside" and "job" not in outside and "correlation_id" not in outside
    assert outside["logger"] == "node.test" and outside["level"] == "INFO" and outside["process"] == os.getpid()
    assert failed["message"] == "failed 1" and failed["level"] == "ERROR"
    assert (failed["job"], failed["study"], failed["correlation"]) == ("7", key, "poll")
    assert failed["correlation_id"] == f"poll/{key}/job-7"
    assert "ValueError: boom" in str(failed["exception"])


def test_celery_pool_records_are_json_too(restore_logging: None) -> None:
    """billiard's logger does not propagate to the root; its records must not fall through to logging's
    last-resort handler as plain text (seen in CI: a pool process SIGKILLed at shutdown)."""
    from billiard.util import get_logger

    stream = io.StringIO()
    log.configure(1, log_format=log.LogFormat.JSON, stream=stream)
    pool = get_logger()
    assert pool.name == "multiprocessing" and not pool.propagate
    pool.error("Process %r pid:%r exited with %r", "ForkPoolWorker-6", 28437, "signal 9 (SIGKILL)")
    (record,) = _json_lines(stream.getvalue())
    assert record["logger"] == "multiprocessing" and record["level"] == "ERROR"
    assert record["message"] == "Process 'ForkPoolWorker-6' pid:28437 exited with 'signal 9 (SIGKILL)'"


def test_text_format_prefixes_the_correlation_id(restore_logging: None) -> None:
    stream = io.StringIO()
    log.configure(1, log_format=log.LogFormat.TEXT, stream=stream)
    with log.correlated(job=3, study="abc"):
        logging.getLogger("node.test").warning("hello")
    line = stream.getvalue().strip()
    assert line.endswith("WARNING [abc/job-3] node.test: hello"), line


def test_format_choice_and_environment() -> None:
    assert log.default_format("serve") is log.default_format("worker") is log.LogFormat.JSON
    assert log.default_format("synth") is log.default_format(None) is log.LogFormat.TEXT
    assert log.resolve_format(log.LogFormat.JSON, {"AINODE_LOG_FORMAT": "Text"}) is log.LogFormat.TEXT
    assert log.resolve_format(log.LogFormat.TEXT, {"AINODE_LOG_FORMAT": "json"}) is log.LogFormat.JSON
    assert log.resolve_format(log.LogFormat.TEXT, {}) is log.LogFormat.TEXT
    with pytest.raises(ConfigError, match="AINODE_LOG_FORMAT: 'xml' is not one of json, text"):
        log.resolve_format(env={"AINODE_LOG_FORMAT": "xml"})
    assert log.env_verbosity(1, {"AINODE_LOG_VERBOSITY": "2"}) == 2
    with pytest.raises(ConfigError, match="AINODE_LOG_VERBOSITY"):
        log.env_verbosity(1, {"AINODE_LOG_VERBOSITY": "loud"})


def test_celery_banner_is_off_in_json_mode(restore_logging: None, tmp_path: Path) -> None:
    """Celery prints its start-up banners outside logging: ``--quiet`` when the logs are JSON."""
    import argparse

    from node.cli import worker as worker_command

    args = argparse.Namespace(concurrency=1, beat=True, hostname=None)
    log.configure(0, log_format=log.LogFormat.JSON, stream=io.StringIO())
    assert worker_command.worker_argv(args)[0] == "--quiet"
    assert worker_command.beat_argv()[0] == "--quiet"
    log.configure(0, log_format=log.LogFormat.TEXT, stream=io.StringIO())
    assert worker_command.worker_argv(args)[0] == "worker"


def test_study_key_is_the_spool_folder_name() -> None:
    uid = "1.2.826.0.1.3680043.8.498.1"
    assert log.study_key(uid) == uid_key(uid) and uid not in log.study_key(uid)


def _set_planted_values() -> None:
    """What highdicom does when it copies the patient module into the SR: set header values, validated on set."""
    ds = Dataset()
    ds.PatientBirthDate = "1938-10-27"  # not a DA: the warning quotes it (so would a bad PatientBirthTime, Age...)


def test_pydicom_echoes_header_values_and_the_filter_redacts_them(restore_logging: None) -> None:
    # the leak channel is real: pydicom's validation warning quotes the value itself
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _set_planted_values()
    assert any("1938-10-27" in str(w.message) for w in caught)
    # ... through the node's handler (pydicom's logger and the captured warning) the values are gone
    stream = io.StringIO()
    log.configure(1, log_format=log.LogFormat.JSON, stream=stream)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        _set_planted_values()
    output = stream.getvalue()
    records = _json_lines(output)
    assert {r["logger"] for r in records} >= {"pydicom", "py.warnings"}
    assert log.REDACTED in output
    assert_no_phi(output, [Identifier("1938-10-27", "PatientBirthDate")])


def test_redact_patterns() -> None:
    assert log.redact("Invalid value for VR PN: 'Doe^John'.") == f"Invalid value for VR PN: {log.REDACTED}"
    assert "19380101" not in log.redact("Unable to convert '19380101x' to 'DA' object")
    assert "42kg" not in log.redact('Value "42kg" is not valid for elements with a VR of DS')
    assert "abc" not in log.redact("invalid literal for int() with base 10: 'abc'")
    assert log.redact("job 3 done") == "job 3 done"


def test_uids_are_hashed_in_every_record_and_traceback(restore_logging: None) -> None:
    study = "1.2.826.0.1.3680043.8.498.12996356107752966330786546161163038780"
    sop = "2.25.329800735698586629295641978511506172918"
    stream = io.StringIO()
    log.configure(1, log_format=log.LogFormat.JSON, stream=stream)
    logger = logging.getLogger("node.test")
    logger.info("loaded study %s: T1CE (series UID %s), SR SR_%s.dcm", study, "1.2.3.4.5.6", sop)
    try:
        raise ValueError(f"instance {sop} of study {study} is broken")
    except ValueError:
        logger.exception("failed")
    logger.info("transfer syntax 1.2.840.10008.1.2.1 from 127.0.0.1:104, pydicom 3.0.1")
    output = stream.getvalue()
    for uid in (study, sop, "1.2.3.4.5.6"):
        assert uid not in output
    first, failed, kept = _json_lines(output)
    assert first["message"] == (f"loaded study uid:{log.study_key(study)}: T1CE (series UID "
                                f"uid:{log.study_key('1.2.3.4.5.6')}), SR SR_uid:{log.study_key(sop)}.dcm")
    assert f"uid:{log.study_key(sop)}" in str(failed["exception"])
    assert kept["message"] == "transfer syntax 1.2.840.10008.1.2.1 from 127.0.0.1:104, pydicom 3.0.1"


def test_assert_no_phi_catches_planted_identifiers() -> None:
    name = Identifier("Planted^Leakname^Q", "PatientName")
    birth = Identifier("19380127", "PatientBirthDate")
    for text in ("patient PLANTED^LEAKNAME^Q", "Leakname Planted", "planted, leakname", "/data/leakname/t1",
                 "born 1938-01-27", "id 19380127"):
        with pytest.raises(AssertionError, match="patient identifier"):
            assert_no_phi(text, [name, birth])
    assert_no_phi("Leaknames and 'Q' and 193801270", [name, birth])  # whole tokens; 1-letter parts skipped
    assert find_phi("Planted Segmentation Lab", [name], allowed_words=["planted"]) == []
    with pytest.raises(AssertionError, match="vacuously"):
        assert_no_phi("anything", [])


# -- end to end: ainode -vv serve, a real worker, C-STORE in, SR out -------------------------------------------


@pytest.fixture(scope="module")
def synthetic_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from node.synth.generate import generate_cohort

    folder = tmp_path_factory.mktemp("phi-study")
    generate_cohort(folder, 1, 23, size="small")
    return folder / "case0000"


def _wait(predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"ainode serve exited ({proc.returncode}) while waiting for {what}")
        return predicate()

    wait_for(ready, timeout, what, interval=0.3)


def _echo(port: int) -> bool:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    if not assoc.is_established:
        return False
    assoc.release()
    return True


def test_serve_logs_are_json_correlated_and_free_of_patient_identifiers(
    synthetic_study: Path, tmp_path: Path
) -> None:
    identifiers = patient_identifiers(synthetic_study)
    assert {i.attribute for i in identifiers} >= {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"}
    planted_dir = tmp_path / "planted"
    planted_dir.mkdir()
    source = pydicom.dcmread(sorted((synthetic_study / "t1ce").glob("*.dcm"))[0])
    source.StudyInstanceUID, source.SeriesInstanceUID = generate_uid(), generate_uid()
    source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    source.PatientName, source.PatientID = "Planted^Leakname", "PLANT-4711"
    # a birth date that is not a DA, written raw: stored as received (a second study that never completes)
    source[0x00100030] = RawDataElement(Tag(0x00100030), "DA", 10, b"1938-10-27", 0, False, True)
    source.save_as(planted_dir / "planted.dcm")
    identifiers += [Identifier("Planted^Leakname", "PatientName"), Identifier("PLANT-4711"),
                    Identifier("1938-10-27", "PatientBirthDate")]

    receiver = StoreSCP(tmp_path / "pacs", ae_title="DEMOPACS").start()
    port = free_port()
    spool = tmp_path / "spool"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AINODE_")}
    env.update({"AINODE_POLL_INTERVAL": "2", "PYTHONWARNINGS": "default", "AINODE_ALLOW_DEMO_MODELS": "1"})
    out, err = (tmp_path / "serve.out").open("wb"), (tmp_path / "serve.err").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "-vv", "serve", "--port", str(port), "--spool-dir", str(spool),
         "--destination", f"DEMOPACS@127.0.0.1:{receiver.port}", "--quiet-period", "1"],
        cwd=ROOT, env=env, stdout=out, stderr=err,
    )
    try:
        _wait(lambda: _echo(port), 60, "the listener", proc)
        files = [planted_dir / "planted.dcm", *sorted(synthetic_study.rglob("*.dcm"))]
        send_files(files, Destination("AINODE", "127.0.0.1", port), calling_ae="PACS")
        _wait(lambda: len(receiver.files) >= 3, 240, "the SR and its companions at the PACS", proc)
        received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in receiver.files}
        assert received <= set(SCU_SOP_CLASSES.values()), "sent a SOP class the conformance statement omits"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        err.close()
        receiver.stop()

    stdout = (tmp_path / "serve.out").read_text(errors="replace")
    stderr = (tmp_path / "serve.err").read_text(errors="replace")
    logs = {path.name: path.read_text(errors="replace") for path in spool.rglob("*.log")}
    assert "worker.log" in logs
    # stdout: only the banner (a message for the operator, not a log line)
    assert stdout.startswith("ainode serve: AINODE listening") and len(stdout.splitlines()) == 1, stdout[:2000]
    records = _json_lines(stderr) + [r for text in logs.values() for r in _json_lines(text)]
    loggers = {str(r["logger"]) for r in records}
    assert {"node.scp.server", "celery.apps.worker", "node.jobs.runner", "pynetdicom.association"} <= loggers, loggers
    assert any(r["level"] == "DEBUG" for r in records)  # -vv reached both processes
    key = log.study_key(str(source.StudyInstanceUID))
    done = [r for r in records if str(r["message"]).startswith("job 1 done")]
    assert done and done[0]["job"] == "1" and done[0]["study"] != key and len(str(done[0]["study"])) == 32
    assert any(r.get("correlation") == "deliver" and r["logger"] == "node.delivery.scu" for r in records)
    everything = "\n".join([stdout, stderr, *logs.values()])
    assert_no_phi(everything, identifiers)
    # no study, series, SOP instance or frame of reference UID either: sent, or made by the node (the SR's)
    uids = _instance_uids([*files, *receiver.files])
    assert len(uids) > 100
    leaked = sorted(uid for uid in uids if uid in everything)
    assert not leaked, f"{len(leaked)} UID(s) in the logs, e.g. {leaked[:3]}"


def _instance_uids(paths: list[Path]) -> set[str]:
    """The study, series, SOP instance and frame of reference UIDs of ``paths`` (standard UIDs excluded)."""
    uids = set()
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            if keyword in ds:
                uids.add(str(ds.data_element(keyword).value))  # type: ignore[union-attr]
    return uids
