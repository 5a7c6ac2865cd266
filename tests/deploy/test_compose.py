"""``deploy/`` kept honest without a Docker engine: every service's command parses with the real ``ainode`` parser,
every ``AINODE_*`` variable in the compose file and ``.env.example`` is one the code reads (and every one the code
reads is documented), the values parse with the node's own parsers, and the deployment's promises (named volumes,
health checks, start-up order, Redis persistence on an internal network, one scheduler, a non-root image with the
CPU build of xgboost) are in the files. Where a ``docker compose`` / ``docker-compose`` client is installed, its
reading of the file (``config``) must equal ours (``tests/deploy/compose.py``), which the topology test relies on."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from node.cli import build_parser
from node.config import ENV_PREFIX, Settings
from node.jobs.broker import resolve_broker
from node.jobs.celery_app import production_settings
from tests.deploy.compose import (
    COMPOSE_FILE,
    DEPLOY,
    DOCKERFILE,
    ENV_EXAMPLE,
    ROOT,
    Service,
    documented_variables,
    load_compose,
    read_env_file,
    services,
)


def spool_settings(spool_dir: Path, env: dict[str, str] | None = None) -> Settings:
    """Settings from ``env`` (as if it were the environment) with the spool in ``spool_dir``."""
    return Settings.load(env={**(env or {}), "AINODE_SPOOL_DIR": str(spool_dir)})

NODE_SERVICES = ("listener", "scheduler", "worker", "web")
_LITERAL = re.compile(r"[\"'](AINODE_[A-Z0-9_]+)[\"']")


def code_variables() -> set[str]:
    """Every ``AINODE_*`` variable the node reads: one per Settings field, plus each one named in ``node/``."""
    names = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
    for path in (ROOT / "node").rglob("*.py"):
        names.update(_LITERAL.findall(path.read_text(encoding="utf-8")))
    return names


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _parse(service: Service) -> argparse.Namespace:
    parser = build_parser()
    argv = list(service.command[1:])
    command = next(a for a in argv if not a.startswith("-"))
    if command not in _subcommands(parser):
        if command == "web" and not (ROOT / "node" / "web" / "command.py").exists():
            pytest.skip("`ainode web` is not built yet (node/cli/web.py): the dashboard service waits for it")
        pytest.fail(f"service {service.name}: `ainode {command}` is not a command of this node")
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"service {service.name}: `{' '.join(service.command)}` does not parse (exit {exc.code})")


@pytest.fixture(scope="module")
def stack() -> dict[str, Service]:
    return services()


@pytest.mark.parametrize("name", NODE_SERVICES)
def test_node_commands_parse_with_the_cli(stack: dict[str, Service], name: str) -> None:
    service = stack[name]
    assert service.command[0] == "ainode"
    args = _parse(service)
    if name == "listener":
        assert args.command == "serve" and args.no_worker  # workers are their own services
    elif name == "scheduler":
        assert args.command == "worker" and args.beat_only and not args.beat
    elif name == "worker":
        assert args.command == "worker" and not args.beat and not args.beat_only
        assert "%h" in args.hostname  # unique per replica: the container's host name
    else:
        assert args.command == "web" and int(args.port) == 8080


def test_exactly_one_scheduler_and_scalable_workers(stack: dict[str, Service]) -> None:
    """The periodic poller (ready studies -> jobs, outbox -> deliveries) runs in exactly one process."""
    schedulers = []
    for name in NODE_SERVICES:
        if name == "web" and "web" not in _subcommands(build_parser()):
            continue
        args = _parse(stack[name])
        if getattr(args, "beat", False) or getattr(args, "beat_only", False) or (
                args.command == "serve" and not args.no_worker):
            schedulers.append(name)
    assert schedulers == ["scheduler"]
    for name in ("scheduler", "worker"):
        spec = stack[name].spec
        assert "container_name" not in spec and "ports" not in spec  # nothing that stops `--scale worker=N`
    assert stack["scheduler"].spec.get("deploy", {}).get("replicas", 1) == 1


def test_flower_runs_the_node_app_under_its_profile(stack: dict[str, Service]) -> None:
    flower = stack["flower"]
    assert flower.spec["profiles"] == ["flower"]
    assert flower.command[:4] == ("celery", "-A", "node.jobs.celery_app", "flower")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert any(d.startswith("flower") for d in deps["deploy"])
    assert '".[deploy]"' in DOCKERFILE.read_text(encoding="utf-8")
    pytest.importorskip("flower", reason="flower is not installed in this environment (pip install -e '.[deploy]')")
    done = subprocess.run([sys.executable, "-m", "celery", *flower.command[1:], "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=_node_env(flower))
    assert done.returncode == 0, done.stderr[-2000:]


def _node_env(service: Service) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("AINODE_")}
    env.update(service.environment)
    return env


def test_variables_are_the_ones_the_code_reads() -> None:
    known = code_variables()
    used = {name for service in services().values() for name in service.environment if name.startswith("AINODE_")}
    documented = {name for name in documented_variables(ENV_EXAMPLE) if name.startswith("AINODE_")}
    assert used - known == set(), "compose.yaml sets variables the node never reads"
    assert documented - known == set(), ".env.example documents variables the node never reads"
    assert known - documented == set(), "variables the node reads are missing from .env.example"
    # the compose-level variables are the ones compose.yaml uses
    compose_text = COMPOSE_FILE.read_text(encoding="utf-8")
    for name in read_env_file(ENV_EXAMPLE):
        if not name.startswith(("AINODE_", "COMPOSE_")):
            assert "${" + name in compose_text, f"{name} in .env.example is used nowhere in compose.yaml"


@pytest.mark.parametrize("name", NODE_SERVICES)
def test_values_parse_with_the_node_parsers(stack: dict[str, Service], name: str) -> None:
    """Each node service's environment is accepted by Settings and the job layer's parsers (no bad value hides
    in .env.example or compose.yaml until a container starts)."""
    env = stack[name].environment
    settings = Settings.load(env=env)
    assert str(settings.spool_dir) == stack[name].volumes["spool"]  # the spool is the mounted volume
    assert settings.effective_database_url.startswith("postgresql://")
    assert settings.destinations, "a deployment sends its results somewhere"
    broker = resolve_broker(spool_settings(settings.spool_dir, env))
    assert broker.url.startswith("redis://redis:") and not broker.embedded
    conf = production_settings(broker, Settings.load(env=env))
    assert conf["task_time_limit"] < conf["broker_transport_options"]["visibility_timeout"], \
        "a running job would be handed to a second worker before its time limit"
    models = Path(env["AINODE_MODELS_DIR"])
    assert models.is_relative_to("/opt/ainode/app")
    assert (ROOT / models.relative_to("/opt/ainode/app") / "subtype" / "manifest.json").is_file()


def test_volumes_healthchecks_and_start_order(stack: dict[str, Service]) -> None:
    compose = load_compose()
    assert set(compose["volumes"]) == {"spool", "postgres", "redis"}
    for name in ("listener", "scheduler", "worker", "web"):
        assert stack[name].volumes == {"spool": "/var/lib/ainode/spool"}, name
    assert stack["postgres"].volumes == {"postgres": "/var/lib/postgresql/data"}
    for name in ("listener", "worker", "web", "redis", "postgres"):
        assert stack[name].healthcheck, f"{name} has no health check"
    assert "echoscu" in " ".join(stack["listener"].healthcheck or [])
    assert "/health" in " ".join(stack["web"].healthcheck or [])
    assert "pg_isready" in " ".join(stack["postgres"].healthcheck or [])
    assert "redis-cli ping" in " ".join(stack["redis"].healthcheck or [])
    for name, service in stack.items():
        for dependency, condition in service.depends_on().items():
            assert condition == "service_healthy", f"{name} -> {dependency}: {condition}"
            assert stack[dependency].healthcheck, f"{name} waits for {dependency}, which has no health check"
    for name in ("scheduler", "worker", "web"):  # the listener creates the ledger's tables first
        assert set(stack[name].depends_on()) == {"redis", "postgres", "listener"}
    assert set(stack["listener"].depends_on()) == {"postgres"}


def test_redis_persists_and_backends_are_internal(stack: dict[str, Service]) -> None:
    compose = load_compose()
    redis = stack["redis"]
    argv = list(redis.command)
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction"
    assert argv[argv.index("--dir") + 1] == redis.volumes["redis"]  # the AOF lives on the named volume
    internal = {name for name, net in compose["networks"].items() if (net or {}).get("internal")}
    assert internal == {"backend"}
    for name in ("redis", "postgres"):
        assert set(stack[name].spec["networks"]) <= internal and "ports" not in stack[name].spec
    for name in ("web", "flower"):
        assert all(str(p).startswith("127.0.0.1:") for p in stack[name].spec["ports"]), f"{name} is public"


def test_dockerfile_is_multistage_non_root_with_cpu_xgboost() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    runtime = text.split("AS runtime", 1)[1]
    assert "build-essential" not in runtime  # no compilers in the image that runs
    for folder in ("node", "config", "models"):
        assert re.search(rf"^COPY .*\b{folder} /opt/ainode/app/{folder}$", runtime, re.M), folder
    assert '"numpy==2.3.5" setuptools wheel versioneer' in text and "--no-build-isolation" in text
    assert "! pip show --quiet xgboost" in text
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    names = {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower() for d in deps}
    assert "xgboost-cpu" in names and "xgboost" not in names
    # the deep model is served by onnxruntime: torch and monai stay in the training extra (issue 13)
    assert "! pip show --quiet torch" in text and "onnxruntime" in names and not {"torch", "monai"} & names
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert ignored[ignored.index("*")] == "*" and "!node/" in ignored and "!.venv/" not in ignored


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_reads_the_file_as_we_do(tmp_path: Path) -> None:
    """``docker compose config`` needs no engine: it validates the file against the Compose schema and prints it
    resolved, which must match what the topology test starts."""
    client = _compose_client()
    if client is None:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed")
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy)
    shutil.copy(ENV_EXAMPLE, deploy / ".env")
    done = subprocess.run([*client, "-f", str(deploy / "compose.yaml"), "--profile", "flower", "config"],
                          cwd=deploy, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout.replace("$$", "$"))  # its output escapes "$" for re-use as input
    ours = services()
    assert set(resolved["services"]) == set(ours)
    for name, spec in resolved["services"].items():
        assert tuple(spec.get("command") or ()) == ours[name].command, name
        theirs = {k: str(v) for k, v in (spec.get("environment") or {}).items()}
        assert theirs == ours[name].environment, name
        check = spec.get("healthcheck")
        assert (check["test"] if check else None) == ours[name].healthcheck, name
