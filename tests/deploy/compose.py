"""Read ``deploy/compose.yaml`` the way Docker Compose does, for tests on machines without a Docker engine.

YAML anchors and ``<<`` merge keys are resolved by the YAML loader; ``${VAR}``, ``${VAR:-default}``,
``${VAR-default}``, ``${VAR:?message}`` and ``$$`` are interpolated from the variables of ``deploy/.env`` (here:
``deploy/.env.example``, the file an operator copies to ``.env``); a service's process environment is its
``env_file`` entries overridden by its ``environment`` block, as in Compose. ``test_compose.py`` checks this
reading against ``docker compose config`` where the plugin is installed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DOCKERFILE = DEPLOY / "Dockerfile"

_ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")
_DOCUMENTED = re.compile(r"^#?\s*(?P<name>[A-Z_][A-Z0-9_]*)=")
_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]+)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def read_env_file(path: Path) -> dict[str, str]:
    """The ``NAME=value`` assignments of a Compose env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _ASSIGNMENT.match(line.strip())
        if match:
            value = match["value"].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[match["name"]] = value
    return values


def documented_variables(path: Path) -> set[str]:
    """Every variable an env file names, set (``NAME=``) or shown with its default (``# NAME=``)."""
    return {m["name"] for line in path.read_text(encoding="utf-8").splitlines()
            if (m := _DOCUMENTED.match(line.strip()))}


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution of one string."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        expression = match["braced"] or match["bare"]
        for operator in (":?", "?", ":-", "-"):
            if operator in expression:
                name, argument = expression.split(operator, 1)
                value = env.get(name)
                unset = value is None or (operator.startswith(":") and value == "")
                if operator.endswith("?"):
                    if unset:
                        raise ValueError(f"required variable {name} is missing: {argument}")
                    return str(value)
                return argument if unset else str(value)
        return env.get(expression, "")

    return _VARIABLE.sub(substitute, text)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file with anchors merged and variables substituted (default: from ``.env.example``)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return dict(_interpolate_tree(data, read_env_file(ENV_EXAMPLE) if env is None else env))


def _mapping(value: Any) -> dict[str, str]:
    """``environment`` as a mapping or as a list of ``NAME=value``."""
    if value is None:
        return {}
    if isinstance(value, list):
        return dict(str(item).split("=", 1) for item in value)
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


@dataclass(frozen=True)
class Service:
    """One service of the compose file, resolved."""

    name: str
    spec: dict[str, Any]
    command: tuple[str, ...]
    environment: dict[str, str]  # env_file values, then the environment block over them

    @property
    def healthcheck(self) -> list[str] | None:
        check = self.spec.get("healthcheck")
        return None if check is None or check.get("disable") else list(check["test"])

    @property
    def volumes(self) -> dict[str, str]:
        """Volume source -> mount path inside the container."""
        mounts = {}
        for item in self.spec.get("volumes", []):
            source, target = str(item).split(":")[:2]
            mounts[source] = target
        return mounts

    def depends_on(self) -> dict[str, str]:
        """Service -> condition."""
        value = self.spec.get("depends_on", {})
        if isinstance(value, list):
            return {name: "service_started" for name in value}
        return {name: str(cond.get("condition", "service_started")) for name, cond in value.items()}


def services(compose: dict[str, Any] | None = None, env_files: Mapping[str, Path] | None = None) -> dict[str, Service]:
    """Every service of the compose file; ``env_files`` maps an ``env_file`` entry to the file read for it
    (default: ``.env`` -> ``.env.example``)."""
    data = load_compose() if compose is None else compose
    files = {".env": ENV_EXAMPLE} if env_files is None else env_files
    out = {}
    for name, spec in data["services"].items():
        environment: dict[str, str] = {}
        entries = spec.get("env_file", [])
        for entry in [entries] if isinstance(entries, str) else entries:
            environment.update(read_env_file(files.get(entry, DEPLOY / entry)))
        environment.update(_mapping(spec.get("environment")))
        command = spec.get("command", [])
        out[name] = Service(name, spec, tuple(command if isinstance(command, list) else command.split()), environment)
    return out


def healthcheck_argv(test: list[str]) -> list[str]:
    """A healthcheck ``test`` as the argv Docker runs (``CMD-SHELL`` through ``/bin/sh -c``)."""
    kind, *rest = test
    if kind == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(rest)]
    assert kind == "CMD", f"unexpected healthcheck form {kind}"
    return rest
