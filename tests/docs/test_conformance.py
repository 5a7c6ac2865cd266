"""docs/conformance.md against the code and against a running listener.

The generated tables must equal what ``node.cli.conformance`` renders now; independently, the contexts the page
lists (read from the page itself) must be exactly those a real listener supports, and a real association must
be accepted for every listed (SOP class, transfer syntax) pair and rejected for what is not listed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import

from node.cli import conformance
from node.config import Settings
from node.docgen import read_blocks, stale_blocks
from node.scp.server import ListenerHandle, start_listener

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MPEG2_MAIN_PROFILE = "1.2.840.10008.1.2.4.100"
_UID = re.compile(r"`([0-9.]+)`")


def _rows(block: str) -> list[list[str]]:
    lines = [line for line in block.strip().splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def documented_contexts() -> dict[str, set[str]]:
    """{abstract syntax: transfer syntaxes} as the page's SCP tables state them."""
    blocks = read_blocks(DOC.read_text(encoding="utf-8"))
    header = [c.strip() for c in blocks["scp-transfer-syntaxes"].splitlines()[0].strip("|").split("|")]
    groups: dict[str, set[str]] = {name: set() for name in header[2:]}
    for row in _rows(blocks["scp-transfer-syntaxes"]):
        uid = _UID.fullmatch(row[1])
        assert uid, row
        for name, flag in zip(header[2:], row[2:], strict=True):
            if flag == "yes":
                groups[name].add(uid[1])
    contexts = {}
    for row in _rows(blocks["scp-contexts"]):
        uid = _UID.fullmatch(row[1])
        assert uid and row[2] in groups, row
        contexts[uid[1]] = groups[row[2]]
    return contexts


def documented_parameters() -> dict[str, str]:
    blocks = read_blocks(DOC.read_text(encoding="utf-8"))
    return {row[0]: row[1].strip("`") for row in _rows(blocks["ae-parameters"])}


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ListenerHandle]:
    spool = tmp_path_factory.mktemp("conformance-spool")
    settings = Settings(port=0, bind_address="127.0.0.1", spool_dir=spool, min_free_disk_bytes=0)
    handle = start_listener(settings)
    try:
        yield handle
    finally:
        handle.stop()


def test_generated_tables_are_current() -> None:
    assert stale_blocks(DOC, conformance.blocks()) == [], "run: python -m node.cli.conformance --write"
    assert conformance.main(["--check", "--doc", str(DOC)]) == 0


def test_check_detects_a_stale_page(tmp_path: Path) -> None:
    page = tmp_path / "conformance.md"
    page.write_text(DOC.read_text(encoding="utf-8").replace("| Verification |", "| Verifikation |"), encoding="utf-8")
    assert conformance.main(["--check", "--doc", str(page)]) == 1
    assert conformance.main(["--write", "--doc", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == DOC.read_text(encoding="utf-8")


def test_every_store_status_has_a_documented_meaning() -> None:
    from node.scp.status import StoreStatus

    statuses = {row[0] for row in _rows(read_blocks(DOC.read_text(encoding="utf-8"))["store-statuses"])}
    assert {f"`0x{int(s):04X}`" for s in StoreStatus} | {"`0xC211`"} <= statuses


def test_listener_supports_exactly_the_documented_contexts(listener: ListenerHandle) -> None:
    contexts = listener.ae.supported_contexts
    supported = {str(cx.abstract_syntax): {str(ts) for ts in cx.transfer_syntax} for cx in contexts}
    assert supported == documented_contexts()


def test_listener_parameters_match_the_page(listener: ListenerHandle) -> None:
    documented = documented_parameters()
    ae = listener.ae
    assert int(documented["Maximum concurrent associations"]) == ae.maximum_associations
    assert int(documented["Maximum PDU size received (bytes)"]) == ae.maximum_pdu_size
    assert documented["Called AE title must equal ours"] == ("yes" if ae.require_called_aet else "no")
    assert documented["Implementation Class UID"] == ae.implementation_class_uid
    assert documented["Implementation Version Name"] == ae.implementation_version_name
    assert float(documented["ACSE timeout (s)"]) == ae.acse_timeout
    assert float(documented["DIMSE timeout (s)"]) == ae.dimse_timeout
    assert float(documented["Network (idle) timeout (s)"]) == ae.network_timeout
    assert documented["AE title"] == Settings().ae_title


def test_a_real_association_accepts_each_documented_pair_and_nothing_else(listener: ListenerHandle) -> None:
    documented = documented_contexts()
    pairs = sorted((abstract, ts) for abstract, syntaxes in documented.items() for ts in syntaxes)
    assert len(pairs) + 2 <= 128, "more pairs than one association can propose"
    ae = AE(ae_title="CONFTEST")
    ae.requested_contexts = [build_context(abstract, ts) for abstract, ts in pairs]
    ae.add_requested_context(CT_IMAGE_STORAGE, "1.2.840.10008.1.2.1")  # not listed
    ae.add_requested_context(next(iter(documented)), MPEG2_MAIN_PROFILE)  # listed class, unlisted syntax
    assoc = ae.associate("127.0.0.1", listener.port, ae_title=Settings().ae_title)
    assert assoc.is_established
    try:
        accepted = sorted((str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts)
        rejected = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.rejected_contexts}
        assert accepted == pairs
        assert rejected == {(CT_IMAGE_STORAGE, "1.2.840.10008.1.2.1"), (next(iter(documented)), MPEG2_MAIN_PROFILE)}
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_documented_association_rejections(listener: ListenerHandle, tmp_path: Path) -> None:
    ae = AE(ae_title="CONFTEST")
    ae.add_requested_context(Verification)
    wrong_called = ae.associate("127.0.0.1", listener.port, ae_title="NOTUS")
    assert wrong_called.is_rejected  # called AE title not recognised
    settings = Settings(port=0, bind_address="127.0.0.1", spool_dir=tmp_path, min_free_disk_bytes=0,
                        accepted_calling_aets=("PACS",))
    with start_listener(settings) as restricted:
        assert ae.associate("127.0.0.1", restricted.port, ae_title=settings.ae_title).is_rejected
        allowed = AE(ae_title="PACS")
        allowed.add_requested_context(Verification)
        assoc = allowed.associate("127.0.0.1", restricted.port, ae_title=settings.ae_title)
        assert assoc.is_established
        assoc.release()


def test_the_node_proposes_the_documented_scu_syntaxes() -> None:
    rows = _rows(read_blocks(DOC.read_text(encoding="utf-8"))["scu-contexts"])
    documented = {_UID.fullmatch(row[1])[1]: _UID.findall(row[3]) for row in rows}  # type: ignore[index]
    assert set(documented) == set(conformance.SCU_SOP_CLASSES.values())
    for sop_class, syntaxes in documented.items():
        assert syntaxes == conformance.scu_transfer_syntaxes(sop_class)
