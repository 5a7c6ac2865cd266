"""Every environment variable the node reads, for ``docs/configuration.md`` (generated tables).

:class:`node.config.Settings` fields are read as ``AINODE_<FIELD>`` (by :mod:`node.config`, the only module that
reads the environment); their meanings are in :data:`SETTING_HELP`. The variables outside ``Settings`` (the
settings file and logging, needed before settings exist) are declared in :data:`VARIABLES`.
``tests/docs/test_configuration.py`` scans ``node/**/*.py`` for ``AINODE_*`` names and fails when one is not on
the page or a declared one is no longer read. ``python -m node.cli.configuration --write`` regenerates the
page's tables; ``--check`` exits 1 when stale.
"""

from __future__ import annotations

import argparse
import enum
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from node.config import ENV_PREFIX, Settings
from node.docgen import generator_main, markdown_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

#: What each setting means (one entry per :class:`Settings` field).
SETTING_HELP: dict[str, str] = {
    "ae_title": "our AE title (1-16 printable ASCII characters, no backslash); also the calling AE title of results "
    "unless a destination sets `calling_ae`",
    "port": "DICOM TCP port; `0` = any free port (tests)",
    "bind_address": "address the listener binds (IPv4 or IPv6)",
    "accepted_calling_aets": "calling AE titles allowed to associate; empty = any. Comma-separated (env, CLI) or a "
    "YAML list; others are rejected at association and audited",
    "max_associations": "concurrent associations accepted (1-10000); more are rejected",
    "max_associations_per_peer": "concurrent associations from one IP address (1-10000); more are rejected "
    "(A-ASSOCIATE-RJ, transient, local limit exceeded). Also the most connections one address may hold before "
    "sending its A-ASSOCIATE-RQ: the oldest of them is closed when a new one arrives",
    "listener_processes": "listener processes of `ainode serve` sharing the DICOM port (one listening socket; "
    "each new association goes to the least busy process), so parallel associations use several cores; `0` = "
    "min(CPUs, 4), `1` = the listener in the `serve` process alone. Each process has the association limits "
    "above and its own ledger writer; a process that dies is restarted (its unconfirmed instances fail at the "
    "sender; confirmed ones are durable and recorded at its restart)",
    "handshake_timeout_s": "seconds from TCP accept until the TLS handshake is done and the A-ASSOCIATE-RQ has "
    "arrived; a connection that stays silent longer is closed and audited",
    "max_pdu": "maximum PDU size we receive, in bytes; `0` = unlimited, else at least 4096. A peer's PDU larger "
    "than max(this, 1 MiB) closes the connection",
    "max_instance_bytes": "largest dataset one C-STORE may carry, as received (`512M`, `1G`...); a larger one is "
    "refused `0xA701` without being kept (the data after the limit is read and discarded)",
    "max_inflated_bytes": "largest Deflated Explicit VR Little Endian dataset once inflated; inflation stops at "
    "the limit and the instance is refused `0xA701`",
    "max_element_bytes": "largest value of any element other than Pixel Data / Float Pixel Data / Double Float "
    "Pixel Data (private elements included); a larger one is refused `0xA701`",
    "tls_cert": "PEM certificate of the listener; with `tls_key` turns TLS (1.2+) on",
    "tls_key": "PEM private key of `tls_cert`",
    "tls_ca": "CA bundle: when set, clients must present a certificate it signed (mutual TLS)",
    "spool_dir": "the spool folder: received instances, results, the default SQLite ledger, the embedded broker",
    "min_free_disk_bytes": "C-STORE is refused (0xA700) when free disk would drop below this; `500M`, `5G`, `5GiB` "
    "or bytes",
    "duplicate_policy": "a known SOP Instance UID with different content: `keep` the first copy or `replace` it",
    "database_url": "ledger database: `sqlite:///path` or `postgresql://user@host:5432/db`; none = SQLite "
    "`<spool_dir>/ledger.sqlite3`",
    "quiet_period_s": "seconds without a new instance before a study with its required series is processed when "
    "the headers cannot tell whether it is whole (see `settle_s`); an upper bound otherwise",
    "settle_s": "seconds (0 to 2) after its last instance before a study is processed once its required series are "
    "geometrically whole and no association storing into it is open (docs/listener.md)",
    "geometric_completeness": "`false`: ignore the geometry and the open associations, the quiet period alone "
    "decides when a study is complete (the rule before issue 12; benchmarks' baseline)",
    "force_complete_s": "deadline from a study version's first instance (at least the quiet period)",
    "force_complete_action": "at the deadline without the required series: `process` what is there or `fail`",
    "late_instance_policy": "an instance arriving after processing: `rerun` (new version, superseding SR) or "
    "`ignore` (stored and audited)",
    "retention_days": "remove the received instances of studies done or failed and idle (no instance, no state change) "
    "for this many days from the spool, hourly (the scheduler; `ainode purge` by hand); empty = keep everything. "
    "The ledger keeps the study and its audit trail (operations.md, Retention)",
    "retention_results": "with `retention_days`: also remove a study's SR and companions once every delivery of it "
    "reached the PACS",
    "destinations": "where results are sent, `AET@HOST:PORT` (IPv6 `AET@[::1]:104`), optionally with per-destination "
    "options `?calling_ae=AET&tls=yes&tls_ca=PATH&tls_cert=PATH&tls_key=PATH&tls_check_hostname=no&commitment=yes` "
    "(or a YAML mapping with `ae_title`, `host`, `port` and those keys; see conformance.md 3.4); comma-separated "
    "(env, CLI) or a YAML list; none = results stay in the spool",
    "delivery_retry_initial_s": "first retry delay of a delivery whose destination is down or answered a "
    "temporary failure; doubles at each attempt",
    "delivery_retry_max_s": "longest delay between two attempts of a delivery",
    "delivery_dead_letter_after_s": "a delivery still failing this long after its first failed attempt is "
    "dead-lettered (`failed`, or `commit-failed` when the PACS did not commit it); `ainode resend` re-queues it",
    "delivery_timeout_s": "connection, association and DIMSE timeout when sending results",
    "commitment_port": "TCP port on which the worker accepts the Storage Commitment N-EVENT-REPORT a PACS sends on a "
    "new association (register the calling AE title there, e.g. in Orthanc's DicomModalities); `0` = only on the "
    "N-ACTION's own association",
    "commitment_timeout_s": "how long to wait for the Storage Commitment result (N-EVENT-REPORT) before the "
    "attempt counts as failed and the object is sent again",
    "broker_url": "Celery broker, `redis://HOST:PORT/DB` (or `rediss://`); none = the embedded filesystem broker in "
    "`<spool_dir>/broker`; `--broker` wins",
    "broker_visibility_timeout": "Redis only: seconds an unacknowledged message stays invisible before another "
    "worker gets it (longer than the hard task time limit)",
    "broker_key_prefix": "Redis only: key prefix, so several nodes can share one Redis database",
    "queue": "Celery queue name (`ainode worker --queue`)",
    "poll_interval": "seconds between polls for ready studies (celery beat); deliveries are retried every "
    "max(this, 30) s",
    "task_soft_time_limit": "seconds after which a processing task is stopped and its job marked failed",
    "task_time_limit": "seconds after which the process running a task is killed; none = max(soft limit + 60, 1800)",
    "task_max_retries": "retries of a task after a temporary error (ledger unreachable...)",
    "retry_backoff": "first retry delay in seconds (exponential backoff with jitter, at most 900 s)",
    "models_dir": "model bundles folder (`ainode serve --models`); none = the shipped `models/demo`",
    "failure_sr": "send a short failure SR when a study cannot be processed (`0`/`false`/`no`/`off` to turn off)",
    "deadline_failure_sr": "send the failure SR also for a study failed at the force-complete deadline "
    "(`force_complete_action: fail`) without being processed; `0` to turn off",
    "primary_subtype_attributes": "DICOM keywords searched for \"primary subtype: <class>\"; comma-separated or a "
    "YAML list",
    "recover_orphans": "embedded broker, one worker: at start, re-send jobs a killed worker took with it (`ainode "
    "worker --recover` sets it; `ainode serve` uses it for its own worker)",
    "job_heartbeat_s": "seconds between renewals of the leases of the jobs a worker runs (by its main process)",
    "job_stale_after_s": "a processing job whose lease was not renewed for this long is sent again by the periodic "
    "poll (its worker was killed); at least twice `job_heartbeat_s`",
    "job_max_redeliveries": "times a job is sent again after the process running it died (out of memory, crash, "
    "kill); one more death fails the job with the reason",
    "worker_stop_timeout_s": "`ainode serve`: seconds its worker gets to stop after SIGTERM before its whole process "
    "group is killed (its job is re-sent at the next start)",
    "worker_max_memory_mb": "MiB: a pool process whose peak resident size passed this is replaced by a fresh one "
    "after the task it ran (Celery `worker_max_memory_per_child`); `0` = no bound. Pool processes are warm: they "
    "keep imports, template, atlas and models across jobs (docs/jobs.md)",
    "worker_max_tasks_per_child": "tasks after which a pool process is replaced by a fresh one (a safety net "
    "against slow leaks); `0` = no limit",
    "worker_preload": "import the pipeline and load the MNI template, the atlas and the model bundles in the "
    "worker before its pool processes fork, so the first job is as fast as the next; `ainode worker` says `ready` "
    "after it (`0` to turn off)",
    "web_token": "the dashboard's access token (at least 16 characters; no default: `ainode web` refuses to start "
    "without one); never logged",
    "web_token_file": "file holding the dashboard token (Docker secret); exclusive with `web_token`",
    "web_trusted_proxies": "addresses or networks of the reverse proxies in front of `ainode web` (comma-separated "
    "or a YAML list): from these, `X-Forwarded-For` names the client (login limits, audit) and "
    "`X-Forwarded-Proto: https` makes the session cookie `Secure`; none = the headers are ignored",
    "web_secure_cookies": "always mark the session cookie `Secure` (the dashboard is only reached over HTTPS)",
    "index_lesion": "which predicted lesion carries the patient-level answer: `largest` (the largest enhancing "
    "lesion by volume) or `seg` (the segment whose label or description names it `index` / `target`; the largest, "
    "with a warning, when none does)",
    "allow_demo_models": "let `ainode serve` start with demonstration models (manifest `training_data: synthetic`, "
    "e.g. the shipped `models/demo`); refused otherwise (`--allow-demo-models`); never for patients",
    "dl_model_dir": "the multimodal deep model's ONNX bundle folder (`ainode train-dl`, e.g. the shipped "
    "`models/demo-dl`); run beside the radiomics model and reported as a separate algorithm; none = not run",
    "dl_heads": "which of the deep model's heads the SR reports: comma-separated `er`, `pr`, `her2` (default all)",
    "her2_three_tier": "run the experimental HER2 three-tier head (developed on primary breast tumours on breast "
    "MRI, not on brain metastases); the SR marks it experimental",
}


@dataclass(frozen=True)
class Variable:
    """An ``AINODE_*`` variable outside :class:`Settings`."""

    name: str
    default: str
    meaning: str
    read_by: str


VARIABLES: tuple[Variable, ...] = (
    Variable("AINODE_CONFIG", "none", "YAML settings file (the `--config` option wins)",
             "`node.config`, every command"),
    Variable("AINODE_LOG_FORMAT", "`json` for `serve`, `worker`, `web`, `python -m node.scp.server` and the Celery "
             "worker; `text` for other commands",
             "`json` (one JSON object per line) or `text`; see [Logging](#logging)", "`node.config` (`log_options`)"),
    Variable("AINODE_LOG_VERBOSITY", "`1` (info) for the worker",
             "log level of processes started without `-v`: `0` warnings, `1` info, `2` debug; `ainode -v serve` "
             "passes its level to the worker", "`node.config` (`log_options`)"),
)


def _type_text(annotation: object) -> str:
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " or ".join(f"`{m.value}`" for m in annotation)
    if isinstance(annotation, type):
        return f"`{annotation.__name__}`"
    text = str(annotation)
    for module in ("pathlib.", "node.config.", "typing."):
        text = text.replace(module, "")
    return f"`{text}`"


def format_default(value: object) -> str:
    """A default as the page shows it (``none``, ``empty``, or the value in code font)."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return f"`{','.join(map(str, value))}`" if value else "empty"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def settings_table() -> str:
    defaults = Settings()
    hints = typing.get_type_hints(Settings)
    missing = {f.name for f in fields(Settings)} ^ set(SETTING_HELP)
    if missing:
        raise AssertionError(f"Settings field(s) without help, or help without a field: {sorted(missing)}")
    rows = [[f"`{f.name}`", f"`{ENV_PREFIX}{f.name.upper()}`", _type_text(hints[f.name]),
             format_default(getattr(defaults, f.name)), SETTING_HELP[f.name]] for f in fields(Settings)]
    return markdown_table(["Setting (YAML key)", "Environment variable", "Type / values", "Default", "Meaning"], rows)


def variables_table() -> str:
    rows = [[f"`{v.name}`", v.default, v.meaning, v.read_by] for v in sorted(VARIABLES, key=lambda v: v.name)]
    return markdown_table(["Variable", "Default", "Meaning", "Read by"], rows)


def _options(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> the option string, for the parser's long options."""
    return {a.dest: next(o for o in a.option_strings if o.startswith("--")) for a in parser._actions
            if a.option_strings and any(o.startswith("--") for o in a.option_strings)}


def cli_table() -> str:
    from node.cli import serve
    from node.scp import server

    serve_parser = argparse.ArgumentParser()
    serve.add_node_arguments(serve_parser)
    serve_options = {serve.CLI_SETTINGS[dest]: option for dest, option in _options(serve_parser).items()
                     if dest in serve.CLI_SETTINGS}
    names = {f.name for f in fields(Settings)}
    scp_options = {dest: option for dest, option in _options(server.build_parser()).items() if dest in names}
    rows = [[f"`{name}`", f"`{serve_options[name]}`" if name in serve_options else "",
             f"`{scp_options[name]}`" if name in scp_options else ""]
            for name in (f.name for f in fields(Settings)) if name in serve_options or name in scp_options]
    return markdown_table(["Setting", "`ainode serve`", "`python -m node.scp.server`"], rows)


def blocks() -> dict[str, str]:
    """Every generated block of ``docs/configuration.md``, by name."""
    return {"settings": settings_table(), "variables": variables_table(), "cli": cli_table()}


def main(argv: Sequence[str] | None = None) -> int:
    return generator_main("node.cli.configuration", DOC, blocks, argv)


if __name__ == "__main__":
    sys.exit(main())
