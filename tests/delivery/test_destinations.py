"""Outbound DICOM per destination (issue 10 items 8 and 12): the calling AE title (default: the node's own), TLS
with a CA bundle and client certificate, a configurable retry schedule and dead-letter delay, and a destination
that accepts none of the offered SOP classes dead-lettered at once with the reason."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import MRImageStorage, SecondaryCaptureImageStorage

from node.config import Settings
from node.delivery.outbox import OutboxPolicy, deliver_pending
from node.errors import ConfigError
from node.ledger import deliveries as store
from node.ledger.repository import Repository
from node.ledger.states import DeliveryState
from node.values import Destination, parse_destination, parse_destinations
from tests.delivery.conftest import make_file, make_job, self_signed, sop_uid
from tests.support.net import free_port
from tests.support.scp import StoreSCP


def queue(repo: Repository, job_id: int, destination: Destination | str, path: Path, at: float = 100.0) -> None:
    repo.record_delivery(job_id, str(destination), sop_uid(path), DeliveryState.PENDING, at, path=str(path))


# -- the destination format -------------------------------------------------------------------------------------


def test_destination_text_options_and_mapping(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    plain = parse_destination("PACS@pacs.example.org:104", "test")
    assert plain == Destination("PACS", "pacs.example.org", 104) and plain.spec == "PACS@pacs.example.org:104"
    full = parse_destination(f"ARCH@10.0.0.5:2762?calling_ae=AINODE-SR&tls_ca={ca}&commitment=yes", "test")
    assert (full.calling_ae, full.tls, full.tls_ca, full.commitment) == ("AINODE-SR", True, ca, True)  # CA => TLS
    assert str(full) == "ARCH@10.0.0.5:2762"  # the ledger's key: the address alone
    assert parse_destination(full.spec, "again") == full
    mapping = parse_destination({"ae_title": "V6", "host": "::1", "port": 11112, "tls": "no",
                                 "calling_ae": "NODE6"}, "yaml")
    assert (str(mapping), mapping.calling_ae, mapping.tls) == ("V6@[::1]:11112", "NODE6", False)
    with pytest.raises(ConfigError, match="unknown option"):
        parse_destination("PACS@h:104?calling=X", "AINODE_DESTINATIONS")
    with pytest.raises(ConfigError, match="tls_cert and tls_key"):
        parse_destination(f"PACS@h:104?tls_cert={ca}", "test")
    with pytest.raises(ConfigError, match="listed twice"):
        parse_destinations("A@h:104,A@h:104?tls=yes", "test")


def test_settings_hand_over_the_options(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        "destinations:\n"
        "  - PACS@pacs.example.org:104\n"
        "  - {ae_title: ARCH, host: archive, port: 2762, calling_ae: AINODE-SR, commitment: true}\n"
        "delivery_retry_initial_s: 5\ndelivery_retry_max_s: 60\ndelivery_dead_letter_after_s: 3600\n",
        encoding="utf-8")
    settings = Settings.load(config, env={})
    assert [d.calling_ae for d in settings.destinations] == [None, "AINODE-SR"]
    again = Settings.read_handover(settings.write_handover(tmp_path / "handover"))  # serve -> worker
    assert again.destinations == settings.destinations
    policy = OutboxPolicy.from_settings(again)
    assert (policy.base_s, policy.cap_s, policy.dead_letter_after_s, policy.calling_ae) == (5, 60, 3600, "AINODE")
    assert policy.destination("ARCH@archive:2762").commitment
    assert policy.destination("OTHER@h:104") == Destination("OTHER", "h", 104)  # a row of a removed destination
    with pytest.raises(ConfigError, match="delivery_retry_initial_s"):
        Settings.load(env={"AINODE_DELIVERY_RETRY_INITIAL_S": "100", "AINODE_DELIVERY_RETRY_MAX_S": "10"})


# -- calling AE title ------------------------------------------------------------------------------------------


def test_results_go_out_with_the_nodes_ae_title_through_the_task(
    tmp_path: Path, repo: Repository, scp_factory: Callable[..., StoreSCP]
) -> None:
    """The PACS accepts only the node's configured AE title: ``ainode.deliver`` used to call as ``AINODE``."""
    from node.jobs.context import bind_settings
    from node.jobs.tasks import deliver_task

    pacs = scp_factory(calling_aets=["SITENODE"])
    filtering = scp_factory(calling_aets=["SR-SENDER"])
    job = make_job(repo)
    first, second = make_file(tmp_path / "r"), make_file(tmp_path / "r")
    queue(repo, job, pacs.destination, first)
    queue(repo, job, filtering.destination, second)
    settings = Settings.load(env={
        "AINODE_AE_TITLE": "SITENODE", "AINODE_DATABASE_URL": repo.ledger.url, "AINODE_SPOOL_DIR": str(tmp_path),
        "AINODE_DESTINATIONS": f"{pacs.destination},{filtering.destination}?calling_ae=SR-SENDER"})
    bind_settings(settings)
    try:
        assert deliver_task.run(job) == 2
    finally:
        bind_settings(Settings())
    assert pacs.received == [sop_uid(first)] and filtering.received == [sop_uid(second)]
    assert [d.state for d in store.deliveries(repo)] == [DeliveryState.SENT, DeliveryState.SENT]


# -- TLS ---------------------------------------------------------------------------------------------------------


def test_tls_with_ca_and_client_certificate(
    tmp_path: Path, repo: Repository, scp_factory: Callable[..., StoreSCP]
) -> None:
    cert, key = self_signed(tmp_path)  # self-signed: its own CA, for both sides
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(cert))
    server.load_cert_chain(str(cert), str(key))
    server.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the PACS wants our certificate
    scp = scp_factory(ssl_context=server)
    address = str(scp.destination)
    job = make_job(repo)
    files = [make_file(tmp_path / "r") for _ in range(3)]
    for path in files:
        queue(repo, job, address, path)

    def attempt(spec: str, now: float) -> DeliveryState:
        policy = OutboxPolicy(destinations=(parse_destination(spec, "test"),), timeout_s=5)
        (outcome,) = deliver_pending(repo, now, policy=policy)[:1]
        return outcome.state

    assert attempt(address, 1.0) is DeliveryState.PENDING  # plain DICOM to a TLS port: no association
    assert attempt(f"{address}?tls_ca={cert}", 1000.0) is DeliveryState.PENDING  # no client certificate
    first = store.deliveries(repo)[0]
    assert first.attempts == 2 and first.last_error and first.last_error.endswith("over TLS")
    assert attempt(f"{address}?tls_ca={cert}&tls_cert={cert}&tls_key={key}", 5000.0) is DeliveryState.SENT
    assert sorted(scp.received) == sorted(sop_uid(p) for p in files)
    assert {d.state for d in store.deliveries(repo)} == {DeliveryState.SENT}


# -- the retry schedule and the dead letter --------------------------------------------------------------------


def test_retry_schedule_and_dead_letter_delay_are_configurable(tmp_path: Path, repo: Repository) -> None:
    down = Destination("DOWN", "127.0.0.1", free_port())
    job = make_job(repo)
    queue(repo, job, down, make_file(tmp_path))
    settings = Settings.load(env={"AINODE_DELIVERY_RETRY_INITIAL_S": "2", "AINODE_DELIVERY_RETRY_MAX_S": "5",
                                  "AINODE_DELIVERY_DEAD_LETTER_AFTER_S": "12", "AINODE_DELIVERY_TIMEOUT_S": "3"})
    policy = OutboxPolicy.from_settings(settings)
    now, seen = 1000.0, []
    for _ in range(10):
        (outcome,) = deliver_pending(repo, now, policy=policy)
        seen.append((now - 1000.0, outcome.state.value))
        if outcome.next_attempt_at is None:
            break
        row = store.deliveries(repo)[0]
        assert row.next_attempt_at == outcome.next_attempt_at and row.last_error and "association" in row.last_error
        now = outcome.next_attempt_at
    # attempts at 0, +2, +4 (doubling), +5 (capped), and the last one exactly at the dead-letter delay (12 s)
    assert seen == [(0.0, "pending"), (2.0, "pending"), (6.0, "pending"), (11.0, "pending"), (12.0, "failed")]
    dead = store.deliveries(repo)[0]
    assert dead.state is DeliveryState.FAILED and dead.last_error and dead.next_attempt_at is None


# -- a destination that does not take the SOP class -------------------------------------------------------------


def test_destination_accepting_no_offered_sop_class_is_dead_at_once(
    tmp_path: Path, repo: Repository, scp_factory: Callable[..., StoreSCP]
) -> None:
    """pynetdicom aborts an association in which no context was accepted; that is a refusal, not a peer down."""
    scp = scp_factory(sop_classes=[MRImageStorage])  # no Secondary Capture, no SR
    job = make_job(repo)
    queue(repo, job, scp.destination, make_file(tmp_path, SecondaryCaptureImageStorage))
    (outcome,) = deliver_pending(repo, 10.0)
    assert (outcome.state, outcome.attempts, outcome.status) == (DeliveryState.FAILED, 1, 0x0122)
    assert outcome.error and "accepts none of the offered SOP classes" in outcome.error
    assert SecondaryCaptureImageStorage in outcome.error
    (row,) = store.deliveries(repo)
    assert row.state is DeliveryState.FAILED and row.last_error == outcome.error
