"""The ledger tests use the fixtures of tests/scp/fixtures.py (synthetic study, ledgers, listeners)."""

from tests.scp.fixtures import ledger_url, sqlite_url, start, synth_case

__all__ = ["ledger_url", "sqlite_url", "start", "synth_case"]
