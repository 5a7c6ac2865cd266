"""docs/configuration.md against the code: generated tables current, every documented default parses back to the
code's default, and every ``AINODE_*`` variable the code reads is on the page (a variable added later, e.g. by the
dashboard, fails here until it is declared in ``node/cli/configuration.py``)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from node.cli import configuration as environment
from node.config import ENV_PREFIX, Settings
from node.docgen import read_blocks, stale_blocks
from node.jobs.broker import BrokerConfig
from node.jobs.celery_app import production_settings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
VARIABLE = re.compile(r"AINODE_[A-Z0-9_]+")


def _rows(block: str) -> list[list[str]]:
    lines = [line for line in block.strip().splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))] for line in lines[2:]]


def variables_in_code() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "node").rglob("*.py"):
        found |= set(VARIABLE.findall(path.read_text(encoding="utf-8")))
    return found


def test_generated_tables_are_current() -> None:
    assert stale_blocks(DOC, environment.blocks()) == [], "run: python -m node.cli.configuration --write"
    assert environment.main(["--check", "--doc", str(DOC)]) == 0


def test_every_setting_is_documented_with_its_env_name_and_default() -> None:
    rows = {row[0].strip("`"): row for row in _rows(read_blocks(DOC.read_text(encoding="utf-8"))["settings"])}
    defaults = Settings()
    assert set(rows) == {f.name for f in fields(Settings)}
    for name, row in rows.items():
        assert row[1] == f"`{ENV_PREFIX}{name.upper()}`", row
        shown = row[3]
        expected = getattr(defaults, name)
        if shown == "none":
            assert expected is None, name
        elif shown == "empty":
            assert expected == (), name
        else:  # the documented default, read through the node's own parser, is the code's default
            parsed = Settings.load(env={f"{ENV_PREFIX}{name.upper()}": shown.strip("`")})
            assert getattr(parsed, name) == expected, (name, shown)


def test_every_variable_the_code_reads_is_on_the_page() -> None:
    page = DOC.read_text(encoding="utf-8")
    in_code = variables_in_code()
    missing = sorted(name for name in in_code if name not in page)
    assert not missing, f"AINODE_* variables read by node/ but not in docs/configuration.md: {missing}"
    settings_vars = {f"{ENV_PREFIX}{f.name.upper()}" for f in fields(Settings)}
    declared = {v.name for v in environment.VARIABLES}
    assert sorted(in_code - settings_vars - declared) == [], "declare them in node/cli/configuration.py VARIABLES"
    assert sorted(declared - in_code) == [], "declared in node/cli/configuration.py but no longer read by node/"


def test_job_defaults_reach_the_celery_configuration() -> None:
    """The documented job-layer defaults are the ones the worker runs with."""
    defaults = Settings()
    conf = production_settings(BrokerConfig("memory://"), defaults)
    assert conf["task_default_queue"] == defaults.queue == "ainode"
    assert conf["task_soft_time_limit"] == defaults.task_soft_time_limit
    assert conf["task_time_limit"] == max(defaults.task_soft_time_limit + 60, 1800)
    assert conf["beat_schedule"]["poll-ready-studies"]["schedule"] == defaults.poll_interval


def test_only_node_config_reads_the_environment() -> None:
    """One configuration: no module but node/config.py reads os.environ / os.getenv (the thread-count variables,
    which the node *sets* for ANTs and the BLAS/OpenMP libraries of a pool process, are the writes allowed
    elsewhere: ITK's by name, node.jobs.warm's from its THREAD_VARIABLES)."""
    reads = re.compile(r"os\.environ(?!\[\"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS\"\] =|\[name\] = str\(threads\))"
                       r"|os\.getenv|environ\.get\(")
    offenders = sorted(
        f"{path.relative_to(ROOT)}:{number}"
        for path in (ROOT / "node").rglob("*.py")
        if path.name != "config.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if reads.search(line) and not line.lstrip().startswith("#")
    )
    assert offenders == []


def test_listener_page_points_here_instead_of_keeping_a_copy() -> None:
    listener = (ROOT / "docs" / "listener.md").read_text(encoding="utf-8")
    assert "configuration.md" in listener
    assert "| `max_pdu` |" not in listener
