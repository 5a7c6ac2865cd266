"""The primary tumour's subtype set beforehand (``ainode primary``): storage, precedence, audit, the command."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from node import cli
from node.errors import ConfigError
from node.jobs.runner import primary_lookup
from node.ledger.db import Ledger
from node.ledger.primary import KeyKind, clear_primary, list_primary, lookup_primary, set_primary
from node.ledger.repository import Repository

STUDY = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture
def repo(ledger_url: str):
    ledger = Ledger.open(ledger_url)
    yield Repository(ledger)
    ledger.dispose()


def test_most_specific_entry_wins_and_changes_are_audited(repo: Repository) -> None:
    assert lookup_primary(repo, STUDY, "ACC1", "PID1") is None
    set_primary(repo, KeyKind.PATIENT, "PID1", "TN", 1.0, "cli:test")
    assert lookup_primary(repo, STUDY, "ACC1", "PID1").subtype == "TN"  # type: ignore[union-attr]
    set_primary(repo, KeyKind.ACCESSION, "ACC1", "HR-/HER2+", 2.0, "cli:test")
    found = lookup_primary(repo, STUDY, "ACC1", "PID1")
    assert found is not None and (found.kind, found.subtype) == (KeyKind.ACCESSION, "HR-/HER2+")
    set_primary(repo, KeyKind.STUDY, STUDY, "HR+/HER2-", 3.0, "cli:test")
    set_primary(repo, KeyKind.STUDY, STUDY, "HR+/HER2+", 4.0, "cli:other")  # replaces, no second row
    found = lookup_primary(repo, STUDY, "ACC1", "PID1")
    assert found is not None and (found.kind, found.subtype, found.set_by) == (KeyKind.STUDY, "HR+/HER2+", "cli:other")
    assert "study" in found.source and STUDY not in found.source
    assert lookup_primary(repo, "1.2.3", None, "PID1").subtype == "TN"  # type: ignore[union-attr]
    assert lookup_primary(repo, "1.2.3", "ACC2", "PID2") is None
    assert len(list_primary(repo)) == 3
    assert clear_primary(repo, KeyKind.STUDY, STUDY, 5.0, "cli:test")
    assert not clear_primary(repo, KeyKind.STUDY, STUDY, 6.0, "cli:test")
    assert lookup_primary(repo, STUDY, "ACC1", "PID1").kind is KeyKind.ACCESSION  # type: ignore[union-attr]
    events = [(e.event, e.detail) for e in repo.audit_trail()]
    assert [e for e, _ in events].count("primary-subtype-set") == 4
    assert ("primary-subtype-cleared", "study (by cli:test)") in events
    assert ("primary-subtype-set", "study: HR+/HER2- -> HR+/HER2+ (by cli:other)") in events
    assert [e for e in repo.audit_trail(STUDY) if e.event.startswith("primary-subtype")]  # findable by the study


def test_patient_ids_and_accession_numbers_are_stored_as_digests(repo: Repository) -> None:
    set_primary(repo, KeyKind.PATIENT, "SYN-77-0001", "TN", 1.0, "cli:test")
    set_primary(repo, KeyKind.ACCESSION, "A-12345", "TN", 1.0, "cli:test")
    with repo.ledger.engine.connect() as connection:
        dumped = " ".join(str(row) for table in ("primary_subtypes", "audit_events")
                          for row in connection.execute(text(f"SELECT * FROM {table}")))
    assert "SYN-77-0001" not in dumped and "A-12345" not in dumped
    assert lookup_primary(repo, "1.2.3", "A-12345", None).kind is KeyKind.ACCESSION  # type: ignore[union-attr]


def test_bad_keys_are_refused_with_a_reason(repo: Repository) -> None:
    with pytest.raises(ConfigError, match="not a Study Instance UID"):
        set_primary(repo, KeyKind.STUDY, "../../etc", "TN", 1.0, "cli:test")
    with pytest.raises(ConfigError, match="empty"):
        set_primary(repo, KeyKind.PATIENT, "  ", "TN", 1.0, "cli:test")
    assert lookup_primary(repo, STUDY, "", "   ") is None  # empty header values match nothing


def test_job_lookup_reports_subtype_and_source(repo: Repository) -> None:
    lookup = primary_lookup(repo)
    assert lookup(STUDY, None, None) is None
    set_primary(repo, KeyKind.PATIENT, "PID9", "TN", 1.0, "cli:test")
    assert lookup(STUDY, "ACC", "PID9") == ("TN", "set with 'ainode primary' for the patient")


def test_command_sets_lists_and_clears(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--database", f"sqlite:///{tmp_path / 'ledger.sqlite3'}"]
    # before the node ever ran: the ledger is created
    assert cli.main(["primary", "set", "hr+/her2-", "--study", STUDY, *db]) == 0
    assert "primary subtype HR+/HER2- set for the study" in capsys.readouterr().out
    assert cli.main(["primary", "set", "triple negative", "--patient-id", "SYN-1-0002", *db]) == 0
    capsys.readouterr()
    assert cli.main(["primary", "list", *db]) == 0
    listed = capsys.readouterr().out
    assert STUDY in listed and "HR+/HER2-" in listed and "TN" in listed and "SYN-1-0002" not in listed
    assert cli.main(["primary", "clear", "--study", STUDY, *db]) == 0
    capsys.readouterr()
    assert cli.main(["primary", "clear", "--study", STUDY, *db]) == 2
    assert "no primary subtype is set for that study" in capsys.readouterr().err
    assert cli.main(["primary", "set", "luminal", "--study", STUDY, *db]) == 2
    assert "unknown primary subtype 'luminal'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a key is required
        cli.main(["primary", "set", "TN", *db])
