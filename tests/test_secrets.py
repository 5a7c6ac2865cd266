"""Secrets stay secret where they are printed, and reach the database where they are needed (issue: Docker for
real — the compose deployment's PostgreSQL has a password)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from node.cli import serve, status, verbosity
from node.config import Settings, redact_url
from node.ledger.db import Ledger

URL = "postgresql://ainode:s3cret-pw@db:5432/ainode"


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url(URL) == "postgresql://ainode:***@db:5432/ainode"
    assert redact_url("sqlite:////spool/ledger.sqlite3") == "sqlite:////spool/ledger.sqlite3"
    assert redact_url("redis://db:6379/0") == "redis://db:6379/0"


def test_serve_startup_line_has_no_password(tmp_path: Path) -> None:
    settings = Settings.load(env={}, overrides={"database_url": URL, "spool_dir": str(tmp_path)})
    line = serve.startup_line(settings, 11112)
    assert "s3cret-pw" not in line and "ainode:***@db" in line


def test_status_opens_the_ledger_with_the_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``str(url)`` of SQLAlchemy 2 writes ``***``: ``ainode status`` then failed on every password-protected
    PostgreSQL ("password authentication failed"). The URL handed to the ledger must keep the password."""
    opened: list[str] = []

    def fake_open(url: str, *, create: bool = True) -> object:
        opened.append(url)
        raise RuntimeError("stop here")

    monkeypatch.setattr(Ledger, "open", staticmethod(fake_open))
    args = argparse.Namespace(config=None, database=URL, spool_dir=tmp_path)
    with pytest.raises(RuntimeError, match="stop here"):
        status._repository(args)
    assert len(opened) == 1 and "s3cret-pw" in opened[0], opened


def test_services_honour_the_log_verbosity_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ainode web`` ignored AINODE_LOG_VERBOSITY and wrote no log line at all; -v still wins."""
    monkeypatch.delenv("AINODE_LOG_VERBOSITY", raising=False)
    assert verbosity("web", 0) == 0 and verbosity("status", 0) == 0
    monkeypatch.setenv("AINODE_LOG_VERBOSITY", "1")
    assert verbosity("web", 0) == 1 and verbosity("serve", 0) == 1
    assert verbosity("web", 2) == 2
