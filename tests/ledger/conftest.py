"""The ledger tests use the fixtures of tests/scp/fixtures.py (ledgers, listeners) and the synthetic study of
tests/support/studies.py."""

from tests.scp.fixtures import ledger_url, sqlite_url, start
from tests.support.studies import synth_case

__all__ = ["ledger_url", "sqlite_url", "start", "synth_case"]
