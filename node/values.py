"""Typed parsers of configuration values, each raising :class:`ConfigError` that names where the value came from.

Each parser takes the raw value (a string from the environment or the command line, or a YAML scalar/list) and
``where`` ("environment variable AINODE_PORT", "option --port", "config.yaml: key 'port'").
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import ConfigError


@dataclass(frozen=True)
class Destination:
    """A DICOM peer results are sent to, written ``AET@HOST:PORT`` with optional ``?option=value&...``
    (:data:`DESTINATION_OPTIONS`), or as a YAML mapping with the same keys plus ``ae_title``, ``host``, ``port``.

    ``str()`` is ``AET@HOST:PORT`` only: the key the ledger's delivery rows keep; :attr:`spec` is the full text.
    """

    ae_title: str
    host: str
    port: int
    calling_ae: str | None = None  # our calling AE title towards this peer; None = the node's ae_title
    tls: bool = False
    tls_ca: Path | None = None  # CA bundle the peer's certificate is checked against; None = the system's CAs
    tls_cert: Path | None = None  # our client certificate (mutual TLS), with tls_key
    tls_key: Path | None = None
    tls_check_hostname: bool = True  # the peer's certificate must name ``host``
    commitment: bool = False  # ask for Storage Commitment; a delivery is done only when the peer commits it

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"

    @property
    def spec(self) -> str:
        """The full text form, options included (parsed back by :func:`parse_destination`)."""
        options = []
        for name in DESTINATION_OPTIONS:
            value = getattr(self, name)
            if value == getattr(_DEFAULT_OPTIONS, name):
                continue
            options.append(f"{name}={('yes' if value else 'no') if isinstance(value, bool) else value}")
        return str(self) + ("?" + "&".join(options) if options else "")

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(f"destination {self}: tls_cert and tls_key go together (or neither)")


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


def parse_limit(value: object, where: str) -> int:
    """A non-negative integer limit; ``0`` = no limit."""
    return _parse_int(value, where, 0, 1_000_000_000)


def parse_processes(value: object, where: str) -> int:
    """A number of processes, 0 = automatic (0-64)."""
    return _parse_int(value, where, 0, 64)


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


def parse_limit_bytes(value: object, where: str) -> int:
    """A size limit (``parse_bytes`` units) of at least 1 KiB and at most 1 TiB."""
    number = parse_bytes(value, where)
    if not 1 << 10 <= number <= 1 << 40:
        raise ConfigError(f"{where}: {number} bytes is outside 1K..1T")
    return number


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


def parse_timeout(value: object, where: str) -> float:
    """A timeout in seconds: more than 0, at most one hour."""
    number = parse_seconds(value, where)
    if not 0.0 < number <= 3600.0:
        raise ConfigError(f"{where}: {number:g} s is outside (0, 3600]")
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


#: The per-destination options and their parsers (``AET@HOST:PORT?calling_ae=NODE1&tls=yes&commitment=yes``).
DESTINATION_OPTIONS: dict[str, Callable[[object, str], Any]] = {}  # filled below, once the parsers exist


def _destination_options(options: dict[str, object], where: str, text: str) -> dict[str, Any]:
    unknown = sorted(set(options) - set(DESTINATION_OPTIONS))
    if unknown:
        raise ConfigError(f"{where}: destination {text!r}: unknown option(s) {', '.join(unknown)}; known: "
                          + ", ".join(DESTINATION_OPTIONS))
    values = {name: DESTINATION_OPTIONS[name](raw, f"{where}: destination {text!r}, option {name}")
              for name, raw in options.items()}
    if any(values.get(k) is not None for k in ("tls_ca", "tls_cert", "tls_key")) and "tls" not in options:
        values["tls"] = True  # a TLS file implies TLS
    return values


def parse_destination(value: object, where: str) -> Destination:
    """``AET@HOST:PORT[?option=value&...]`` or a mapping (YAML) with ``ae_title``, ``host``, ``port`` and options."""
    if isinstance(value, Destination):
        return value
    if isinstance(value, dict):
        fields = {str(k): v for k, v in value.items()}
        missing = [k for k in ("ae_title", "host", "port") if k not in fields]
        if missing:
            raise ConfigError(f"{where}: a destination mapping needs {', '.join(missing)}")
        address = f"{fields.pop('ae_title')}@{fields.pop('host')}:{fields.pop('port')}"
        text, options = address, {k: v for k, v in fields.items()}
    else:
        text, _, query = str(value).strip().partition("?")
        options = {}
        for part in filter(None, query.split("&")):
            name, sep, raw = part.partition("=")
            if not sep:
                raise ConfigError(f"{where}: destination option {part!r} is not written name=value")
            options[name.strip()] = raw.strip()
    host_text = text.rpartition("@")[2].rpartition(":")[0] if "@" in text else ""
    if ":" in host_text and not host_text.startswith("["):  # a bare IPv6 address from a YAML mapping
        text = text.replace(f"@{host_text}:", f"@[{host_text}]:")
    match = _DESTINATION.match(text)
    if not match:
        raise ConfigError(f"{where}: {text!r} is not a destination written AET@HOST:PORT")
    host = match["host"].strip("[]")
    return Destination(parse_ae_title(match["aet"], where), host, _parse_int(match["port"], where, 1, 65535),
                       **_destination_options(options, where, text))


def parse_destinations(value: object, where: str) -> tuple[Destination, ...]:
    """A list (YAML: strings and/or mappings) or comma-separated text of destinations, each address once."""
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    destinations = tuple(parse_destination(item, where) for item in items
                         if isinstance(item, dict | Destination) or str(item).strip())
    seen: set[str] = set()
    for d in destinations:
        if str(d) in seen:
            raise ConfigError(f"{where}: destination {d} is listed twice")
        seen.add(str(d))
    return destinations


def parse_bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{where}: {value!r} is not a yes/no value (1/0, true/false, yes/no, on/off)")


def parse_optional_seconds(value: object, where: str) -> float | None:
    text = "" if value is None else str(value).strip()
    return parse_seconds(text, where) if text else None


def parse_optional_days(value: object, where: str) -> float | None:
    """A number of days, more than 0 and at most 100 years; empty / ``None`` = not set."""
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not a number of days") from exc
    if not 0.0 < number <= 36500:
        raise ConfigError(f"{where}: {number:g} days is outside 0 (excluded)..36500")
    return number


def parse_retries(value: object, where: str) -> int:
    return _parse_int(value, where, 0, 100)


def parse_keywords(value: object, where: str) -> tuple[str, ...]:
    """Comma-separated (or YAML list of) DICOM attribute keywords, each one pydicom knows."""
    from pydicom.datadict import tag_for_keyword

    items = value if isinstance(value, list | tuple) else str(value).split(",")
    names = tuple(str(n).strip() for n in items if str(n).strip())
    if not names:
        raise ConfigError(f"{where}: name at least one DICOM keyword")
    unknown = [n for n in names if tag_for_keyword(n) is None]
    if unknown:
        raise ConfigError(f"{where}: unknown DICOM keyword(s): {', '.join(unknown)}")
    return names


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: object, where: str) -> tuple[Network, ...]:
    """Comma-separated (or YAML list of) IP addresses or CIDR networks: ``10.0.0.5, 172.16.0.0/12, ::1``."""
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    networks = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise ConfigError(f"{where}: {text!r} is not an IP address or network (e.g. 10.0.0.5, 172.16.0.0/12)") \
                from exc
    return tuple(networks)


def choice(kind: type[enum.StrEnum]) -> Callable[[object, str], Any]:
    def parse(value: object, where: str) -> Any:
        text = str(value).strip().lower()
        try:
            return kind(text)
        except ValueError as exc:
            allowed = ", ".join(m.value for m in kind)
            raise ConfigError(f"{where}: {value!r} is not one of {allowed}") from exc

    return parse


DESTINATION_OPTIONS.update({
    "calling_ae": parse_ae_title,
    "tls": parse_bool,
    "tls_ca": parse_optional_path,
    "tls_cert": parse_optional_path,
    "tls_key": parse_optional_path,
    "tls_check_hostname": parse_bool,
    "commitment": parse_bool,
})
_DEFAULT_OPTIONS = Destination("DEFAULT", "localhost", 104)
