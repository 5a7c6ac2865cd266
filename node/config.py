"""The node's configuration: one frozen :class:`Settings`, loaded once per process and passed down.

This is the only module that reads ``AINODE_*`` environment variables. Precedence, highest first: CLI
overrides > ``AINODE_*`` environment variables > the optional YAML file (``--config`` or ``AINODE_CONFIG``) >
the defaults below. Every value goes through a small typed parser that raises :class:`ConfigError` naming the
variable and the bad value; ``docs/configuration.md`` has the full table (generated from this module).

A process that starts another one (``ainode serve`` starting its worker) hands its *effective* settings over
explicitly: :meth:`Settings.write_handover` writes them to a private file (mode 0600, the database password
may be in it) and the child loads exactly that with :meth:`Settings.read_handover`, without re-reading its
environment. :func:`log_options` reads the two logging variables, which apply before settings are loaded.
Size: every setting, its parser and its validation in one frozen class (docs/configuration.md is generated
from it); splitting it would split the one place an operator reads.
"""

from __future__ import annotations

import enum
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from node.errors import ConfigError
from node.values import (
    Destination,
    Network,
    choice,
    parse_ae_title,
    parse_ae_titles,
    parse_bool,
    parse_bytes,
    parse_count,
    parse_destinations,
    parse_keywords,
    parse_limit,
    parse_limit_bytes,
    parse_networks,
    parse_optional_days,
    parse_optional_path,
    parse_optional_seconds,
    parse_optional_text,
    parse_path,
    parse_pdu,
    parse_port,
    parse_processes,
    parse_retries,
    parse_seconds,
    parse_text,
    parse_timeout,
)

ENV_PREFIX = "AINODE_"
CONFIG_ENV = "AINODE_CONFIG"
LOG_FORMAT_ENV = "AINODE_LOG_FORMAT"
LOG_VERBOSITY_ENV = "AINODE_LOG_VERBOSITY"
DEFAULT_QUEUE = "ainode"
#: the longest ``settle_s`` (issue 12: a complete study is processed within ~2 s of its last association's end)
MAX_SETTLE_S = 2.0


class DuplicatePolicy(enum.StrEnum):
    """What a C-STORE of an already stored SOP Instance UID with *different* content does.

    An identical copy (same SHA-256) is always acknowledged and changes nothing.
    """

    KEEP = "keep"  # keep the first copy, answer Success, audit the difference
    REPLACE = "replace"  # replace the stored copy (the study's content digest changes)


class ForceCompleteAction(enum.StrEnum):
    """What happens to a study whose force-complete deadline passes before its required series are present."""

    PROCESS = "process"  # hand what is there to the job layer (flagged ``forced``)
    FAIL = "fail"  # mark the study failed with the reason (which series is missing)


class LateInstancePolicy(enum.StrEnum):
    """What a new instance arriving after a study was queued / processed does."""

    RERUN = "rerun"  # reopen the study as a new version; its result supersedes the first
    IGNORE = "ignore"  # store and audit it, but do not reprocess


class IndexLesionRule(enum.StrEnum):
    """Which predicted lesion carries the patient-level answer (node.jobs.index)."""

    LARGEST = "largest"  # the largest enhancing lesion by volume
    SEG = "seg"  # the segment the SEG names "index" / "target"; the largest when none is named


@dataclass(frozen=True)
class Settings:
    """Everything the listener and the ledger need; build it with :meth:`Settings.load`."""

    ae_title: str = "AINODE"
    port: int = 11112
    bind_address: str = "0.0.0.0"
    accepted_calling_aets: tuple[str, ...] = ()  # empty = any calling AE title is accepted
    max_associations: int = 10
    max_associations_per_peer: int = 8  # one router / PACS address sends over several associations
    handshake_timeout_s: float = 10.0  # TCP accept -> TLS handshake done and A-ASSOCIATE-RQ received
    max_pdu: int = 131072  # bytes; 0 = unlimited (docs/listener.md "Maximum PDU": senders write fewer, larger PDUs)
    max_instance_bytes: int = 1 << 30  # one C-STORE dataset as received
    max_inflated_bytes: int = 256 << 20  # a Deflated Explicit VR Little Endian dataset once inflated
    max_element_bytes: int = 16 << 20  # any element but Pixel Data
    listener_processes: int = 0  # listener processes sharing the port; 0 = min(CPUs, 4)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # set = client certificates are required and checked against it
    spool_dir: Path = Path("spool")
    min_free_disk_bytes: int = 1 << 30
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP
    database_url: str | None = None  # None = SQLite (WAL) file ``<spool_dir>/ledger.sqlite3``
    quiet_period_s: float = 60.0
    settle_s: float = 1.0  # whole study, no association open: ready this long after its last instance
    geometric_completeness: bool = True  # False: the quiet period alone decides (the rule before issue 12)
    force_complete_s: float = 3600.0
    force_complete_action: ForceCompleteAction = ForceCompleteAction.FAIL
    late_instance_policy: LateInstancePolicy = LateInstancePolicy.RERUN
    retention_days: float | None = None  # finished studies' instances leave the spool after this long idle; None = kept
    retention_results: bool = False  # retention also removes results whose every delivery reached the PACS
    destinations: tuple[Destination, ...] = ()
    # the outbox: retry schedule, dead letter, timeouts, storage commitment
    delivery_retry_initial_s: float = 10.0
    delivery_retry_max_s: float = 600.0
    delivery_dead_letter_after_s: float = 86400.0
    delivery_timeout_s: float = 30.0
    commitment_port: int = 0  # 0 = N-EVENT-REPORTs only on the N-ACTION's association
    commitment_timeout_s: float = 60.0
    # job layer: broker, queue, scheduling, limits and retries
    broker_url: str | None = field(default=None, repr=False)  # None = embedded broker in <spool_dir>/broker
    broker_visibility_timeout: float = 7200.0
    broker_key_prefix: str = "ainode:"
    queue: str = DEFAULT_QUEUE
    poll_interval: float = 5.0
    task_soft_time_limit: float = 1500.0
    task_time_limit: float | None = None  # None = max(soft limit + 60, 1800)
    task_max_retries: int = 5
    retry_backoff: float = 30.0
    models_dir: Path | None = None  # None = the shipped models/demo
    failure_sr: bool = True
    deadline_failure_sr: bool = True  # a study failed at the force-complete deadline gets a failure SR too
    primary_subtype_attributes: tuple[str, ...] = ("AdditionalPatientHistory", "PatientComments")
    recover_orphans: bool = False
    # recovery of a killed worker's job (leases, node.jobs.recovery) and the worker that ainode serve runs
    job_heartbeat_s: float = 5.0
    job_stale_after_s: float = 15.0
    job_max_redeliveries: int = 3
    worker_stop_timeout_s: float = 7.0  # an idle worker's warm shutdown takes ~4-5 s (Celery's timer, billiard's pool)
    # warm workers (node.jobs.warm): a pool process serves many jobs; these bound it
    worker_max_memory_mb: int = 1536  # peak resident size after which a pool process is replaced; 0 = no bound
    worker_max_tasks_per_child: int = 50  # jobs (tasks) after which a pool process is replaced; 0 = no limit
    worker_preload: bool = True  # import the pipeline, load the template, atlas and models before the pool forks
    # dashboard access (never logged: repr=False)
    web_token: str | None = field(default=None, repr=False)
    web_token_file: Path | None = None
    web_trusted_proxies: tuple[Network, ...] = ()
    web_secure_cookies: bool = False
    index_lesion: IndexLesionRule = IndexLesionRule.LARGEST
    # issue 11: demonstration models must be allowed explicitly; the HER2 three-tier head is experimental
    allow_demo_models: bool = False  # serve models whose manifest says training_data: synthetic
    her2_three_tier: bool = False  # run the experimental HER2 three-tier head (reported as experimental)
    # issue 13: the multimodal deep model (ONNX bundle, node.model.dl_bundle), run beside the radiomics model
    dl_model_dir: Path | None = None  # None = no deep model
    dl_heads: tuple[str, ...] = ("er", "pr", "her2")  # which of its heads the SR reports

    @property
    def hard_time_limit(self) -> float:
        """Seconds after which the process running a task is killed."""
        if self.task_time_limit is not None:
            return self.task_time_limit
        return max(self.task_soft_time_limit + 60.0, 1800.0)

    @property
    def effective_listener_processes(self) -> int:
        """How many listener processes ``ainode serve`` runs: the setting, or min(CPUs, 4) for 0."""
        return self.listener_processes or min(os.cpu_count() or 1, 4)

    @property
    def effective_database_url(self) -> str:
        """The configured database URL, or the default SQLite file inside the spool folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.spool_dir / 'ledger.sqlite3').resolve()}"

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @classmethod
    def load(
        cls,
        config_file: Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Defaults < YAML file < environment < ``overrides`` (CLI), each value parsed and checked."""
        environ = os.environ if env is None else env
        if config_file is None and environ.get(CONFIG_ENV):
            config_file = Path(environ[CONFIG_ENV])
        values: dict[str, Any] = {}
        if config_file is not None:
            for key, raw in _read_yaml(config_file).items():
                values[key] = _parse(key, raw, f"{config_file}: key '{key}'")
        for name in _PARSERS:
            var = ENV_PREFIX + name.upper()
            if var in environ:
                values[name] = _parse(name, environ[var], f"environment variable {var}")
        for key, raw in (overrides or {}).items():
            if raw is None:
                continue
            if key not in _PARSERS:
                raise ConfigError(f"unknown setting '{key}'")
            values[key] = _parse(key, raw, f"option --{key.replace('_', '-')}")
        settings = replace(cls(), **values)
        settings.check()
        return settings

    def to_json(self) -> dict[str, Any]:
        """Every setting as JSON values (paths and enums as text): what :meth:`write_handover` writes."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [v.spec if isinstance(v, Destination) else str(v) for v in value]
            elif isinstance(value, Path | enum.Enum):
                value = str(value)
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> Settings:
        """The inverse of :meth:`to_json`; every value goes through its parser again."""
        values = {key: _parse(key, raw, f"{where}: key '{key}'") for key, raw in data.items() if raw is not None}
        settings = replace(cls(), **values)
        settings.check()
        return settings

    def write_handover(self, folder: Path) -> Path:
        """The effective settings in a new private file (0600) under ``folder``, for a child process."""
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".settings-", suffix=".json", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(self.to_json(), handle)
        return Path(name)

    @classmethod
    def read_handover(cls, path: Path) -> Settings:
        """Settings written by :meth:`write_handover` (the environment is not consulted)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"settings file {path} cannot be read: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"settings file {path} must hold a JSON object")
        return cls.from_json(data, str(path))

    def check(self) -> None:
        """Cross-field rules a single parser cannot see."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both tls_cert and tls_key (or neither)")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_ca (client certificate check) needs tls_cert and tls_key")
        for path in (self.tls_cert, self.tls_key, self.tls_ca):
            if path is not None and not path.is_file():
                raise ConfigError(f"TLS file {path} does not exist")
        if self.web_token and self.web_token_file:
            raise ConfigError("set only one of web_token (AINODE_WEB_TOKEN) and web_token_file (AINODE_WEB_TOKEN_FILE)")
        if self.task_time_limit is not None and self.task_time_limit <= self.task_soft_time_limit:
            raise ConfigError(
                f"task_time_limit ({self.task_time_limit:g}) must be longer than task_soft_time_limit "
                f"({self.task_soft_time_limit:g})"
            )
        for destination in self.destinations:
            for path in (destination.tls_ca, destination.tls_cert, destination.tls_key):
                if path is not None and not path.is_file():
                    raise ConfigError(f"destination {destination}: TLS file {path} does not exist")
        if not 0 < self.delivery_retry_initial_s <= self.delivery_retry_max_s:
            raise ConfigError(
                f"delivery_retry_initial_s ({self.delivery_retry_initial_s:g}) must be > 0 and not longer than "
                f"delivery_retry_max_s ({self.delivery_retry_max_s:g})"
            )
        if self.delivery_timeout_s <= 0 or self.commitment_timeout_s <= 0:
            raise ConfigError("delivery_timeout_s and commitment_timeout_s must be longer than 0 s")
        if not 0 < 2 * self.job_heartbeat_s <= self.job_stale_after_s:
            raise ConfigError(
                f"job_stale_after_s ({self.job_stale_after_s:g}) must be at least twice job_heartbeat_s "
                f"({self.job_heartbeat_s:g}, more than 0): a lease renewed on time must never look stale"
            )
        if not 0 <= self.settle_s <= MAX_SETTLE_S:
            raise ConfigError(f"settle_s ({self.settle_s:g}) must be between 0 and {MAX_SETTLE_S:g} s: it only lets "
                              "the ledger settle; a longer wait is the quiet period's (quiet_period_s)")
        if self.force_complete_s < self.quiet_period_s:
            raise ConfigError(
                f"force_complete_s ({self.force_complete_s:g}) must not be shorter than "
                f"quiet_period_s ({self.quiet_period_s:g})"
            )


def parse_dl_heads(value: object, where: str) -> tuple[str, ...]:
    """Comma-separated (or YAML list of) deep-model heads: ``er``, ``pr``, ``her2`` (at least one)."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    heads = tuple(dict.fromkeys(str(h).strip().lower() for h in items if str(h).strip()))
    unknown = [h for h in heads if h not in ("er", "pr", "her2")]
    if not heads or unknown:
        raise ConfigError(f"{where}: name deep-model heads among er, pr, her2 (got {value!r})")
    return heads


_PARSERS: dict[str, Callable[[object, str], Any]] = {
    "ae_title": parse_ae_title,
    "port": parse_port,
    "bind_address": parse_text,
    "accepted_calling_aets": parse_ae_titles,
    "max_associations": parse_count,
    "max_associations_per_peer": parse_count,
    "handshake_timeout_s": parse_timeout,
    "max_pdu": parse_pdu,
    "max_instance_bytes": parse_limit_bytes,
    "max_inflated_bytes": parse_limit_bytes,
    "max_element_bytes": parse_limit_bytes,
    "listener_processes": parse_processes,
    "tls_cert": parse_optional_path,
    "tls_key": parse_optional_path,
    "tls_ca": parse_optional_path,
    "spool_dir": parse_path,
    "min_free_disk_bytes": parse_bytes,
    "duplicate_policy": choice(DuplicatePolicy),
    "database_url": parse_optional_text,
    "quiet_period_s": parse_seconds,
    "settle_s": parse_seconds,
    "geometric_completeness": parse_bool,
    "force_complete_s": parse_seconds,
    "force_complete_action": choice(ForceCompleteAction),
    "late_instance_policy": choice(LateInstancePolicy),
    "retention_days": parse_optional_days,
    "retention_results": parse_bool,
    "destinations": parse_destinations,
    "delivery_retry_initial_s": parse_seconds,
    "delivery_retry_max_s": parse_seconds,
    "delivery_dead_letter_after_s": parse_seconds,
    "delivery_timeout_s": parse_seconds,
    "commitment_port": parse_port,
    "commitment_timeout_s": parse_seconds,
    "broker_url": parse_optional_text,
    "broker_visibility_timeout": parse_seconds,
    "broker_key_prefix": parse_text,
    "queue": parse_text,
    "poll_interval": parse_seconds,
    "task_soft_time_limit": parse_seconds,
    "task_time_limit": parse_optional_seconds,
    "task_max_retries": parse_retries,
    "retry_backoff": parse_seconds,
    "models_dir": parse_optional_path,
    "failure_sr": parse_bool,
    "deadline_failure_sr": parse_bool,
    "primary_subtype_attributes": parse_keywords,
    "recover_orphans": parse_bool,
    "job_heartbeat_s": parse_seconds,
    "job_stale_after_s": parse_seconds,
    "job_max_redeliveries": parse_retries,
    "worker_stop_timeout_s": parse_seconds,
    "worker_max_memory_mb": parse_limit,
    "worker_max_tasks_per_child": parse_limit,
    "worker_preload": parse_bool,
    "web_token": parse_optional_text,
    "web_token_file": parse_optional_path,
    "web_trusted_proxies": parse_networks,
    "web_secure_cookies": parse_bool,
    "index_lesion": choice(IndexLesionRule),
    "allow_demo_models": parse_bool,
    "her2_three_tier": parse_bool,
    "dl_model_dir": parse_optional_path,
    "dl_heads": parse_dl_heads,
}
assert set(_PARSERS) == {f.name for f in fields(Settings)}, "every setting needs a parser"


def _parse(name: str, raw: object, where: str) -> Any:
    if name not in _PARSERS:
        raise ConfigError(f"{where}: unknown setting (known: {', '.join(_PARSERS)})")
    return _PARSERS[name](raw, where)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"configuration file {path} cannot be read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping of setting: value")
    return {str(k): v for k, v in data.items()}


def redact_url(url: str) -> str:
    """A database or broker URL without its password, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


@dataclass(frozen=True)
class LogOptions:
    """``AINODE_LOG_FORMAT`` / ``AINODE_LOG_VERBOSITY``: read before the settings, by every ``main()``."""

    format: str | None = None  # "json" or "text"; None = the command's default
    verbosity: int | None = None  # 0 warnings, 1 info, 2 debug; None = the command's default


def log_options(env: Mapping[str, str] | None = None) -> LogOptions:
    """The logging variables, checked (a bad value is a :class:`ConfigError` naming the variable)."""
    environ = os.environ if env is None else env
    fmt = environ.get(LOG_FORMAT_ENV, "").strip().lower() or None
    if fmt is not None and fmt not in ("json", "text"):
        raise ConfigError(f"environment variable {LOG_FORMAT_ENV}: {fmt!r} is not one of json, text")
    raw = environ.get(LOG_VERBOSITY_ENV, "").strip()
    verbosity = None
    if raw:
        try:
            verbosity = max(0, int(raw))
        except ValueError as exc:
            raise ConfigError(f"environment variable {LOG_VERBOSITY_ENV}: {raw!r} is not an integer") from exc
    return LogOptions(fmt, verbosity)
