"""The node's runtime settings: one frozen :class:`Settings`, read once in each ``main()``.

Precedence, highest first: CLI overrides > ``AINODE_*`` environment variables > the optional YAML file
(``--config`` or ``AINODE_CONFIG``) > the defaults below. Every value goes through a small typed parser that
raises :class:`ConfigError` naming the variable and the bad value; ``docs/configuration.md`` has the full table.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from node.errors import ConfigError

ENV_PREFIX = "AINODE_"
CONFIG_ENV = "AINODE_CONFIG"


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


@dataclass(frozen=True)
class Destination:
    """A DICOM peer results are sent to, written ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    """Everything the listener and the ledger need; build it with :meth:`Settings.load`."""

    ae_title: str = "AINODE"
    port: int = 11112
    bind_address: str = "0.0.0.0"
    accepted_calling_aets: tuple[str, ...] = ()  # empty = any calling AE title is accepted
    max_associations: int = 10
    max_pdu: int = 16382  # bytes; 0 = unlimited
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # set = client certificates are required and checked against it
    spool_dir: Path = Path("spool")
    min_free_disk_bytes: int = 1 << 30
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP
    database_url: str | None = None  # None = SQLite (WAL) file ``<spool_dir>/ledger.sqlite3``
    quiet_period_s: float = 60.0
    force_complete_s: float = 3600.0
    force_complete_action: ForceCompleteAction = ForceCompleteAction.FAIL
    late_instance_policy: LateInstancePolicy = LateInstancePolicy.RERUN
    destinations: tuple[Destination, ...] = ()

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

    def check(self) -> None:
        """Cross-field rules a single parser cannot see."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both tls_cert and tls_key (or neither)")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_ca (client certificate check) needs tls_cert and tls_key")
        for path in (self.tls_cert, self.tls_key, self.tls_ca):
            if path is not None and not path.is_file():
                raise ConfigError(f"TLS file {path} does not exist")
        if self.force_complete_s < self.quiet_period_s:
            raise ConfigError(
                f"force_complete_s ({self.force_complete_s:g}) must not be shorter than "
                f"quiet_period_s ({self.quiet_period_s:g})"
            )


# ---------------------------------------------------------------------------------------------------------
# typed parsers: each takes the raw value (a string from the environment/CLI, or a YAML scalar/list)


_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash
_DESTINATION = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})$")
_SIZE = re.compile(r"^\s*(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_ae_title(value: object, where: str) -> str:
    text = str(value).strip()
    if not _AE_TITLE.match(text):
        raise ConfigError(f"{where}: {value!r} is not an AE title (1-16 printable ASCII characters, no backslash)")
    return text


def parse_ae_titles(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(parse_ae_title(item, where) for item in items if str(item).strip())


def _parse_int(value: object, where: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not an integer")
    try:
        number = int(str(value).strip())
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not an integer") from exc
    if not low <= number <= high:
        raise ConfigError(f"{where}: {number} is outside {low}..{high}")
    return number


def parse_port(value: object, where: str) -> int:
    return _parse_int(value, where, 0, 65535)


def parse_count(value: object, where: str) -> int:
    return _parse_int(value, where, 1, 10_000)


def parse_pdu(value: object, where: str) -> int:
    number = _parse_int(value, where, 0, 2**32 - 1)
    if number and number < 4096:  # PS3.8 allows less, but tiny PDUs only slow everything down
        raise ConfigError(f"{where}: {number} is too small (use 0 for unlimited or at least 4096)")
    return number


def parse_bytes(value: object, where: str) -> int:
    """``1073741824``, ``500M``, ``5G``, ``5GiB``: binary units."""
    match = _SIZE.match(str(value))
    if not match or isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a size (e.g. 5G, 500M, 1048576)")
    unit = (match["unit"] or "").upper().rstrip("B").rstrip("I")
    return int(float(match["number"]) * _UNITS[unit])


def parse_seconds(value: object, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a number of seconds")
    try:
        number = float(str(value).strip())
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not a number of seconds") from exc
    if not 0.0 <= number <= 30 * 86400:
        raise ConfigError(f"{where}: {number:g} s is outside 0..2592000")
    return number


def parse_text(value: object, where: str) -> str:
    text = str(value).strip()
    if not text:
        raise ConfigError(f"{where}: must not be empty")
    return text


def parse_optional_text(value: object, where: str) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def parse_path(value: object, where: str) -> Path:
    return Path(parse_text(value, where)).expanduser()


def parse_optional_path(value: object, where: str) -> Path | None:
    text = "" if value is None else str(value).strip()
    return Path(text).expanduser() if text else None


def parse_destination(value: object, where: str) -> Destination:
    text = str(value).strip()
    match = _DESTINATION.match(text)
    if not match:
        raise ConfigError(f"{where}: {text!r} is not a destination written AET@HOST:PORT")
    host = match["host"].strip("[]")
    return Destination(parse_ae_title(match["aet"], where), host, _parse_int(match["port"], where, 1, 65535))


def parse_destinations(value: object, where: str) -> tuple[Destination, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(parse_destination(item, where) for item in items if str(item).strip())


def _choice(kind: type[enum.StrEnum]) -> Callable[[object, str], Any]:
    def parse(value: object, where: str) -> Any:
        text = str(value).strip().lower()
        try:
            return kind(text)
        except ValueError as exc:
            allowed = ", ".join(m.value for m in kind)
            raise ConfigError(f"{where}: {value!r} is not one of {allowed}") from exc

    return parse


_PARSERS: dict[str, Callable[[object, str], Any]] = {
    "ae_title": parse_ae_title,
    "port": parse_port,
    "bind_address": parse_text,
    "accepted_calling_aets": parse_ae_titles,
    "max_associations": parse_count,
    "max_pdu": parse_pdu,
    "tls_cert": parse_optional_path,
    "tls_key": parse_optional_path,
    "tls_ca": parse_optional_path,
    "spool_dir": parse_path,
    "min_free_disk_bytes": parse_bytes,
    "duplicate_policy": _choice(DuplicatePolicy),
    "database_url": parse_optional_text,
    "quiet_period_s": parse_seconds,
    "force_complete_s": parse_seconds,
    "force_complete_action": _choice(ForceCompleteAction),
    "late_instance_policy": _choice(LateInstancePolicy),
    "destinations": parse_destinations,
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
