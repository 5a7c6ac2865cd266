"""The group commit's batch (Repository.record_spooled) writes exactly what recording its instances one at a time
writes: the rows, the study and series times, the audit trail."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from node.ledger.db import Ledger
from node.ledger.records import SpooledInstance
from node.ledger.repository import Repository
from node.ledger.tables import AuditEvent, Instance, Series, Study
from tests.ledger.test_repository import header, record

OTHER = "1.2.3.5"


def _item(series: str, sop: str, at: float, study: str = "1.2.3.4") -> SpooledInstance:
    return SpooledInstance(header(series, sop, study), f"s/{sop}.dcm", 10 + int(at), f"{int(at):064d}",
                           calling_ae_title="PACS", peer="127.0.0.1:1", at=at)


BATCH = [
    _item("1.2.3.4.1", "1.2.3.4.1.2", 21.0),  # the ready study: revoked, then receiving
    _item("1.2.3.4.1", "1.2.3.4.1.3", 23.0),
    _item("1.2.3.4.2", "1.2.3.4.2.1", 22.0),  # a new series of it
    _item("1.2.3.4.1", "1.2.3.4.1.4", 22.5),  # earlier than the last one: the series keeps 23.0
    _item("1.2.3.5.1", "1.2.3.5.1.1", 24.0, OTHER),  # a new study
    _item("1.2.3.5.1", "1.2.3.5.1.2", 25.0, OTHER),
    _item("1.2.3.5.1", "1.2.3.5.1.2", 26.0, OTHER),  # the same SOP instance again: raced
    _item("1.2.3.4.2", "1.2.3.4.2.2", 27.0),
]


def _dump(ledger: Ledger) -> dict[str, list[tuple[object, ...]]]:
    tables = {t.__tablename__: t.__table__ for t in (Study, Series, Instance, AuditEvent)}
    dump = {}
    with ledger.read() as connection:
        for name, table in tables.items():
            columns = [c for c in table.columns if not c.name.endswith("id") or c.name.endswith("_uid")]
            dump[name] = sorted(tuple(row) for row in connection.execute(select(*columns)))
    return dump


def _ready_study(tmp_path: Path, name: str) -> tuple[Ledger, Repository]:
    ledger = Ledger.open(f"sqlite:///{tmp_path / name}")
    repo = Repository(ledger)
    record(repo, "1.2.3.4.1", "1.2.3.4.1.1", 10.0)
    snapshot = repo.study("1.2.3.4")
    assert snapshot is not None and repo.mark_ready(snapshot, 20.0)
    return ledger, repo


Setup = Callable[[Path, str], tuple[Ledger, Repository]]


def _batched_and_one_by_one(tmp_path: Path, setup: Setup, batch: list[SpooledInstance]) -> tuple[
        list[tuple[str, float]], dict[str, list[tuple[object, ...]]], dict[str, list[tuple[object, ...]]]]:
    """The batch recorded at once and one instance at a time, each on its own copy of ``setup``'s ledger: the
    (SOP Instance UID, time) of each item the batch found raced, and both ledgers' contents."""
    batched, repo = setup(tmp_path, "batched.sqlite3")
    single, one_by_one = setup(tmp_path, "single.sqlite3")
    try:
        raced = [(item.header.sop_instance_uid, item.at) for item, _known in repo.record_spooled(batch)]
        for item in batch:
            one_by_one.record_spooled([item])
        return raced, _dump(batched), _dump(single)
    finally:
        batched.dispose()
        single.dispose()


def test_a_batch_writes_what_single_instances_write(tmp_path: Path) -> None:
    raced, batched, expected = _batched_and_one_by_one(tmp_path, _ready_study, BATCH)
    assert raced == [("1.2.3.5.1.2", 26.0)]
    assert batched == expected
    assert len(expected["instances"]) == len(BATCH)  # the ready study's first instance + 7 new, one raced
    assert any("ready-revoked" in map(str, row) for row in expected["audit_events"])


RECEIVING_BATCH = [
    _item("1.2.3.4.1", "1.2.3.4.1.2", 31.0),  # a series of the receiving study: the batch's steady state
    _item("1.2.3.5.1", "1.2.3.5.1.2", 32.0, OTHER),  # a series of the ready study: revoked by _record's rules
    _item("1.2.3.4.1", "1.2.3.4.1.3", 30.5),  # earlier than the one before: the series keeps 31.0
    _item("1.2.3.4.2", "1.2.3.4.2.1", 33.0),  # a new series of the receiving study
    _item("1.2.3.4.1", "1.2.3.4.1.4", 34.0),
    _item("1.2.3.5.1", "1.2.3.5.1.3", 35.0, OTHER),
]


def _receiving_and_ready(tmp_path: Path, name: str) -> tuple[Ledger, Repository]:
    ledger = Ledger.open(f"sqlite:///{tmp_path / name}")
    repo = Repository(ledger)
    record(repo, "1.2.3.4.1", "1.2.3.4.1.1", 10.0)  # study 1.2.3.4 stays receiving
    repo.record_spooled([_item("1.2.3.5.1", "1.2.3.5.1.1", 11.0, OTHER)])
    snapshot = repo.study(OTHER)
    assert snapshot is not None and repo.mark_ready(snapshot, 20.0)
    return ledger, repo


def test_a_batch_into_series_already_receiving_writes_what_single_instances_write(tmp_path: Path) -> None:
    raced, batched, expected = _batched_and_one_by_one(tmp_path, _receiving_and_ready, RECEIVING_BATCH)
    assert raced == []
    assert batched == expected
    assert len(expected["instances"]) == 2 + len(RECEIVING_BATCH)
    assert any("ready-revoked" in map(str, row) for row in expected["audit_events"])
    series_times = {row[0]: row for row in expected["series"]}
    assert series_times["1.2.3.4.1"][-2:] == (10.0, 34.0)  # first and last received
