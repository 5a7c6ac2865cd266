"""The listener tests' fixtures live in tests/scp/fixtures.py (shared with tests/ledger); the synthetic study in
tests/support/studies.py."""

from tests.scp.fixtures import ledger_url, sqlite_url, start
from tests.support.studies import synth_case

__all__ = ["ledger_url", "sqlite_url", "start", "synth_case"]
