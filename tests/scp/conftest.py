"""The listener tests' fixtures live in tests/scp/fixtures.py (shared with tests/ledger)."""

from tests.scp.fixtures import ledger_url, sqlite_url, start, synth_case

__all__ = ["ledger_url", "sqlite_url", "start", "synth_case"]
