"""Settings: defaults < YAML file < AINODE_* environment < CLI overrides, typed parsers raising ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import DuplicatePolicy, ForceCompleteAction, LateInstancePolicy, Settings
from node.errors import ConfigError
from node.values import Destination


def test_defaults() -> None:
    settings = Settings.load(env={})
    assert settings.ae_title == "AINODE" and settings.port == 11112
    assert settings.accepted_calling_aets == ()
    assert settings.duplicate_policy is DuplicatePolicy.KEEP
    assert settings.late_instance_policy is LateInstancePolicy.RERUN
    assert settings.effective_database_url.startswith("sqlite:///")
    assert settings.effective_database_url.endswith("spool/ledger.sqlite3")


def test_precedence_file_env_cli(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        "ae_title: FROMFILE\nport: 4242\nquiet_period_s: 30\n"
        "destinations: ['PACS@pacs.example.org:104', 'ARCH@[::1]:11112']\n"
        "accepted_calling_aets: [PACS, MODALITY]\nmin_free_disk_bytes: 5G\n"
    )
    env = {"AINODE_CONFIG": str(config), "AINODE_PORT": "5000", "AINODE_FORCE_COMPLETE_ACTION": "process"}
    settings = Settings.load(env=env, overrides={"ae_title": "FROMCLI", "port": None})
    assert settings.ae_title == "FROMCLI"  # CLI beats file
    assert settings.port == 5000  # env beats file; a None override is "not given"
    assert settings.quiet_period_s == 30.0
    assert settings.force_complete_action is ForceCompleteAction.PROCESS
    assert settings.accepted_calling_aets == ("PACS", "MODALITY")
    assert settings.min_free_disk_bytes == 5 << 30
    assert settings.destinations == (Destination("PACS", "pacs.example.org", 104), Destination("ARCH", "::1", 11112))
    assert str(settings.destinations[0]) == "PACS@pacs.example.org:104"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("AINODE_PORT", "70000", "outside"),
        ("AINODE_PORT", "eleven", "not an integer"),
        ("AINODE_AE_TITLE", "A" * 17, "not an AE title"),
        ("AINODE_AE_TITLE", "BAD\\AE", "not an AE title"),
        ("AINODE_MAX_PDU", "100", "too small"),
        ("AINODE_MIN_FREE_DISK_BYTES", "lots", "not a size"),
        ("AINODE_DUPLICATE_POLICY", "merge", "not one of keep, replace"),
        ("AINODE_LATE_INSTANCE_POLICY", "later", "not one of rerun, ignore"),
        ("AINODE_QUIET_PERIOD_S", "-1", "outside"),
        ("AINODE_DESTINATIONS", "PACS@host", "AET@HOST:PORT"),
        ("AINODE_TLS_CERT", "/nonexistent/cert.pem", "TLS"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(env={variable: value})
    assert message in info.value.message
    if variable != "AINODE_TLS_CERT":
        assert variable in info.value.message


def test_cross_field_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="force_complete_s"):
        Settings.load(env={"AINODE_QUIET_PERIOD_S": "100", "AINODE_FORCE_COMPLETE_S": "50"})
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="both tls_cert and tls_key"):
        Settings.load(env={"AINODE_TLS_CERT": str(cert)})


def test_bad_config_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("ae_title: NODE\nnot_a_setting: 1\n")
    with pytest.raises(ConfigError, match="not_a_setting"):
        Settings.load(config, env={})
    config.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        Settings.load(config, env={})
    with pytest.raises(ConfigError, match="cannot be read"):
        Settings.load(tmp_path / "missing.yaml", env={})


def test_listener_limits(tmp_path: Path) -> None:
    settings = Settings.load(env={"AINODE_MAX_INSTANCE_BYTES": "512M", "AINODE_MAX_INFLATED_BYTES": "64MiB",
                                  "AINODE_MAX_ELEMENT_BYTES": "1048576", "AINODE_HANDSHAKE_TIMEOUT_S": "2.5",
                                  "AINODE_MAX_ASSOCIATIONS_PER_PEER": "3"})
    assert (settings.max_instance_bytes, settings.max_inflated_bytes, settings.max_element_bytes) == (
        512 << 20, 64 << 20, 1 << 20)
    assert settings.handshake_timeout_s == 2.5 and settings.max_associations_per_peer == 3
    defaults = Settings.load(env={})
    assert defaults.max_instance_bytes == 1 << 30 and defaults.max_inflated_bytes == 256 << 20
    assert defaults.max_element_bytes == 16 << 20 and defaults.handshake_timeout_s == 10.0
    for name, bad in (("AINODE_MAX_INSTANCE_BYTES", "10"), ("AINODE_MAX_ELEMENT_BYTES", "2T"),
                      ("AINODE_HANDSHAKE_TIMEOUT_S", "0"), ("AINODE_MAX_ASSOCIATIONS_PER_PEER", "0")):
        with pytest.raises(ConfigError, match=name):
            Settings.load(env={name: bad})
