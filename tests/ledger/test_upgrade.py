"""A ledger made by the previous version (no ``deliveries.path`` column) opened by this one: the column is added
and the pending delivery it holds, whose path is in ``detail``, is still sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    inspect,
    text,
)

from node.delivery.outbox import deliver_pending
from node.ledger import deliveries as store
from node.ledger.db import Ledger, add_missing_columns, normalise_url
from node.ledger.repository import Repository
from node.ledger.states import DeliveryState
from node.values import Destination

#: The tables the outbox reads, as the previous version declared them (``deliveries`` without ``path``).
OLD = MetaData()
Table("studies", OLD, Column("id", Integer, primary_key=True), Column("study_instance_uid", String(64), unique=True),
      Column("state", String(16)), Column("version", Integer), Column("opened_at", Float),
      Column("first_received_at", Float), Column("last_received_at", Float), Column("state_changed_at", Float),
      Column("content_digest", String(64)), Column("forced", Boolean), Column("reason", Text))
Table("jobs", OLD, Column("id", Integer, primary_key=True), Column("study_id", ForeignKey("studies.id")),
      Column("study_version", Integer), Column("idempotency_key", String(64), unique=True),
      Column("content_digest", String(64)), Column("state", String(16)), Column("forced", Boolean),
      Column("reason", Text), Column("supersedes_job_id", ForeignKey("jobs.id")), Column("created_at", Float),
      Column("updated_at", Float))
Table("deliveries", OLD, Column("id", Integer, primary_key=True), Column("job_id", ForeignKey("jobs.id")),
      Column("destination", String(128)), Column("sop_instance_uid", String(64)), Column("state", String(16)),
      Column("attempts", Integer), Column("last_status", Integer), Column("detail", Text),
      Column("updated_at", Float), UniqueConstraint("job_id", "destination", "sop_instance_uid"))
STUDY = "1.2.3.4"
PACS = "PACS@127.0.0.1:11112"


def _old_ledger(url: str, result: Path) -> None:
    """What the previous version left: a done job with one pending delivery, its path in ``detail``."""
    engine = create_engine(normalise_url(url))
    OLD.create_all(engine)
    with engine.begin() as connection:
        connection.execute(OLD.tables["studies"].insert(), {
            "study_instance_uid": STUDY, "state": "done", "version": 1, "opened_at": 1.0,
            "first_received_at": 1.0, "last_received_at": 2.0, "state_changed_at": 5.0, "content_digest": "d" * 64,
            "forced": False,
        })
        connection.execute(OLD.tables["jobs"].insert(), {
            "study_id": 1, "study_version": 1, "idempotency_key": "k" * 64, "content_digest": "d" * 64,
            "state": "done", "forced": False, "created_at": 3.0, "updated_at": 5.0,
        })
        connection.execute(OLD.tables["deliveries"].insert(), {
            "job_id": 1, "destination": PACS, "sop_instance_uid": "1.2.3.4.99", "state": "pending",
            "attempts": 0, "detail": str(result), "updated_at": 5.0,
        })
    assert "path" not in {c["name"] for c in inspect(engine).get_columns("deliveries")}
    engine.dispose()


def test_an_old_ledger_gets_the_path_column_and_its_delivery_is_sent(ledger_url: str, tmp_path: Path) -> None:
    result = tmp_path / "results" / "sr.dcm"
    result.parent.mkdir()
    result.write_bytes(b"DICM")
    _old_ledger(ledger_url, result)

    ledger = Ledger.open(ledger_url)
    try:
        assert "path" in {c["name"] for c in inspect(ledger.engine).get_columns("deliveries")}
        assert add_missing_columns(ledger.engine) == []  # opening again changes nothing
        repo = Repository(ledger)
        [item] = store.deliveries(repo)
        assert item.path == result and item.state is DeliveryState.PENDING  # read from ``detail``

        sent: list[tuple[list[Path], Destination]] = []

        def send(paths: list[Path], destination: Destination, **_: Any) -> None:
            sent.append((paths, destination))

        [outcome] = deliver_pending(repo, 100.0, send=send)
        assert outcome.state is DeliveryState.SENT
        assert sent == [([result], Destination("PACS", "127.0.0.1", 11112))]
        assert [e.event for e in repo.audit_trail(STUDY)] == ["delivery-sent"]
    finally:
        ledger.dispose()


def test_new_deliveries_keep_their_path_in_the_path_column(ledger_url: str, tmp_path: Path) -> None:
    result = tmp_path / "sr.dcm"
    _old_ledger(ledger_url, tmp_path / "old.dcm")
    ledger = Ledger.open(ledger_url)
    try:
        repo = Repository(ledger)
        record = repo.record_delivery(1, "OTHER@10.0.0.2:104", "1.2.3.4.99", DeliveryState.PENDING, 10.0,
                                      path=str(result))
        assert record.path == str(result) and record.detail is None
        later = repo.record_delivery(1, "OTHER@10.0.0.2:104", "1.2.3.4.99", DeliveryState.FAILED, 11.0, status=0xA700,
                                     detail="refused")
        assert later.path == str(result) and later.detail == "refused"  # an update without a path keeps it
        with ledger.engine.connect() as connection:
            rows = connection.execute(text("SELECT path, detail FROM deliveries ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [(None, str(tmp_path / "old.dcm")), (str(result), "refused")]
        assert [i.path for i in store.deliveries(repo)] == [tmp_path / "old.dcm", result]
    finally:
        ledger.dispose()
