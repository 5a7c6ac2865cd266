"""Logging set-up shared by every entry point: one line per record, JSON or text, correlation ids, never PHI.

* **Correlation ids** live in a ``ContextVar``: :func:`correlated` sets ``job`` (the ledger's job id), ``study``
  (:func:`study_key` of the StudyInstanceUID: the name of the study's spool folder, not the UID itself) and/or a
  free ``correlation`` tag (``poll``, ``recover``...) for the block, so no call site passes them by hand. Every
  record carries them.
* **Formats** (``AINODE_LOG_FORMAT=json|text``): ``json`` writes one JSON object per line (``time`` ISO-8601 UTC,
  ``level``, ``logger``, ``message``, ``process``, ``thread``, plus ``correlation_id`` / ``job`` / ``study`` where
  set and ``exception`` with the traceback); ``text`` writes ``TIME LEVEL [correlation] logger: message``. The
  default is ``json`` for the long-running services (``ainode serve``, ``worker``, ``web``,
  ``python -m node.scp.server``, the Celery worker) and ``text`` for interactive commands; the variable overrides
  both. ``AINODE_LOG_VERBOSITY`` (0 = warnings, 1 = info, 2 = debug) sets the level of processes started
  without ``-v`` (the worker started by ``ainode serve`` inherits the serve process's ``-v``).
* **Privacy.** Messages must never contain patient names, IDs, birth dates or accession numbers. As a safety net
  the handler's filter redacts the values that pydicom echoes into its validation warnings and conversion errors
  (``Invalid value for VR PN: '...'``), which would otherwise carry header values such as a malformed
  PatientName into the logs; Python warnings are routed through the same handler (``logging.captureWarnings``).
  Study, series and SOP Instance UIDs are replaced by their hashed key (:func:`hide_uids`) in every record and
  traceback, whichever module logged them (the DICOM standard's own UIDs are kept).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

from node.config import log_options
from node.errors import ConfigError


class LogFormat(enum.StrEnum):
    JSON = "json"  # one JSON object per line, for log collectors
    TEXT = "text"  # one human-readable line


#: Sub-commands that run as long-lived services and therefore log JSON unless ``AINODE_LOG_FORMAT`` says otherwise.
SERVICE_COMMANDS = frozenset({"serve", "worker", "web"})

#: The correlation fields of the current context, in the order they are shown.
_FIELDS = ("correlation", "study", "job")
_context: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("log_context", default=())

# pydicom (and the int/float conversions it relies on) quote the offending header value in these messages; each
# pattern's group 1 is kept and the rest of the match replaced
_VALUE_ECHOES = (
    re.compile(r"(Invalid value for VR \w+: ).+"),  # a repr: anything up to the end of the line
    re.compile(r"""(Unable to convert (?:non-conformant value )?)(['"]).*?\2"""),
    re.compile(r"""(Value )(['"]).*?\2(?= is not valid)"""),
    re.compile(r"""(invalid literal for \w+\(\) with base \d+: )(['"]).*?\2"""),
    re.compile(r"""(could not convert string to float: )(['"]).*?\2"""),
)
REDACTED = "<redacted>"


def redact(text: str) -> str:
    """``text`` with the header values pydicom quotes in its validation / conversion messages replaced."""
    for pattern in _VALUE_ECHOES:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


#: A DICOM UID as it may appear in a message (also inside a file name such as ``SR_<uid>.dcm``): at least five
#: numeric components, the first 0, 1 or 2 (an IPv4 address has four, a version number three), or a UUID-derived
#: ``2.25.<integer>``.
_UID = re.compile(r"(?<![0-9.])(?:[0-2](?:\.(?:0|[1-9][0-9]*)){4,}|2\.25\.[1-9][0-9]{5,})(?![0-9])")
#: The UIDs of the DICOM standard itself (SOP classes, transfer syntaxes): not about a patient, kept as written.
STANDARD_UID_ROOT = "1.2.840.10008."


def hide_uids(text: str) -> str:
    """``text`` with every Study/Series/SOP Instance UID (any UID but the standard's own) replaced by
    ``uid:<key>``, the key being :func:`study_key` of the UID: for a study, the name of its spool folder and the
    ``study`` field of its log records. The UIDs stay in the ledger (``ainode status``), out of the logs."""
    return _UID.sub(lambda m: m.group(0) if m.group(0).startswith(STANDARD_UID_ROOT)
                    else f"uid:{study_key(m.group(0))}", text)


def study_key(study_instance_uid: str) -> str:
    """The log/spool identifier of a study: the first 32 hex digits of the SHA-256 of its StudyInstanceUID.

    It is the name of the study's spool folder (:func:`node.spool.uid_key`) and of its results folder, so a log
    line leads to the files without the UID in the logs; the ledger (``ainode status``) holds the UID and job ids.
    """
    return hashlib.sha256(study_instance_uid.encode("ascii")).hexdigest()[:32]


def context() -> dict[str, str]:
    """The correlation fields set by the enclosing :func:`correlated` blocks (``job``, ``study``, ``correlation``)."""
    return dict(_context.get())


def correlation_id() -> str:
    """The fields of :func:`context` in one short tag: ``<study>/job-<id>``, ``poll``, ``job-3`` ... or ``-``."""
    fields = context()
    parts = [fields["correlation"]] if "correlation" in fields else []
    if "study" in fields:
        parts.append(fields["study"])
    if "job" in fields:
        parts.append(f"job-{fields['job']}")
    return "/".join(parts) or "-"


@contextmanager
def correlated(value: str | None = None, *, job: int | str | None = None, study: str | None = None) -> Iterator[None]:
    """Tag every log record emitted inside the block; fields of an enclosing block stay unless given again.

    ``value`` is a free tag (``poll``), ``job`` the ledger's job id, ``study`` a :func:`study_key` (never a patient
    identifier; the caller hashes the UID).
    """
    fields = dict(_context.get())
    for name, given in (("correlation", value), ("study", study), ("job", job)):
        if given is not None:
            fields[name] = str(given)
    token = _context.set(tuple((name, fields[name]) for name in _FIELDS if name in fields))
    try:
        yield
    finally:
        _context.reset(token)


class CorrelationFilter(logging.Filter):
    """Adds ``correlation_id`` and the context fields to each record and redacts quoted header values."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = context()
        record.correlation_id = correlation_id()
        record.log_context = fields
        message = record.getMessage()
        cleaned = hide_uids(redact(message))
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; see the module docstring for the keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "process_name": record.processName,
            "thread": record.threadName,
        }
        fields: Mapping[str, str] | None = getattr(record, "log_context", None)
        if fields is None:  # a record that did not pass the filter (a handler added by someone else)
            fields = context()
        if fields:
            entry["correlation_id"] = str(getattr(record, "correlation_id", None) or correlation_id())
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = hide_uids(redact(self.formatException(record.exc_info)))
        elif record.exc_text:
            entry["exception"] = hide_uids(redact(record.exc_text))
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``2026-01-01 12:00:00,000 INFO [<study>/job-3] node.jobs.tasks: message``; tracebacks redacted too."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(correlation_id)s] %(name)s: %(message)s")

    def formatException(self, ei: Any) -> str:
        return hide_uids(redact(super().formatException(ei)))


def parse_format(value: str, where: str) -> LogFormat:
    text = value.strip().lower()
    try:
        return LogFormat(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not one of json, text") from exc


def resolve_format(default: LogFormat = LogFormat.TEXT, env: Mapping[str, str] | None = None) -> LogFormat:
    """``AINODE_LOG_FORMAT`` (read by :func:`node.config.log_options`) when set, else ``default``."""
    chosen = log_options(env).format
    return LogFormat(chosen) if chosen else default


def env_verbosity(default: int = 1, env: Mapping[str, str] | None = None) -> int:
    """``AINODE_LOG_VERBOSITY`` (0 warnings, 1 info, 2 debug) when set, else ``default``."""
    chosen = log_options(env).verbosity
    return default if chosen is None else chosen


def default_format(command: str | None) -> LogFormat:
    """The format a sub-command logs in when ``AINODE_LOG_FORMAT`` is not set."""
    return LogFormat.JSON if command in SERVICE_COMMANDS else LogFormat.TEXT


_configured_format: LogFormat | None = None


#: Loggers that do not propagate to the root. billiard (Celery's process pool) logs as "multiprocessing" with
#: ``propagate = 0`` and no handler, so without this its records (e.g. "Process 'ForkPoolWorker-6' exited with
#: 'signal 9 (SIGKILL)'") reach stderr through logging's last-resort handler, as plain text.
_NON_PROPAGATING = ("multiprocessing",)


def configure(
    verbosity: int = 0,
    *,
    log_format: LogFormat | None = None,
    default: LogFormat = LogFormat.TEXT,
    stream: IO[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> LogFormat:
    """Configure the root logger once, from a ``main()``: 0 = warnings, 1 = info, 2+ = debug.

    The format is ``log_format`` if given, else ``AINODE_LOG_FORMAT``, else ``default``; returns it.
    """
    chosen = log_format or resolve_format(default, env)
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(JsonFormatter() if chosen is LogFormat.JSON else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _NON_PROPAGATING:  # their records never reach the root: give them the same handler
        logging.getLogger(name).handlers[:] = [handler]
    logging.captureWarnings(True)  # warnings (pydicom's echo header values) go through the filter and formatter
    global _configured_format
    _configured_format = chosen
    return chosen


def configured_format() -> LogFormat | None:
    """The format of the last :func:`configure` in this process (``None`` before the first)."""
    return _configured_format
