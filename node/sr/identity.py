"""Which result document this is: deterministic UIDs for the SR and its companions, and the document it replaces.

Exactly one result per study version: every run that analyses the same study version with the same models and
the same program derives the same Series and SOP Instance UIDs (``pydicom.uid.generate_uid`` with
``entropy_srcs``: a SHA-512 of the inputs below under the pydicom root), so a redelivered or overlapping run writes
the *same* document again instead of a second one, and a PACS that receives it twice keeps one instance.

The inputs of a UID (:meth:`ResultIdentity.uid`):

* the Study Instance UID;
* ``version_key``: what identifies the study version analysed: the ledger's content digest of the job (SHA-256
  over every received instance's SOP Instance UID and file SHA-256, :func:`node.ledger.records.content_digest`);
  without a ledger (``ainode analyse``), a digest of the evidence instances' SOP Instance UIDs;
* ``fingerprint``: what else decides the content: the SHA-256 of every model manifest used, the node's software
  version and the primary-tumour subtype given to the model (:func:`fingerprint`);
* the document's role (``sr``, ``sc``, ``pdf``, ``failure``), ``series`` or ``instance``, and the instance's
  number within its series.

``predecessor`` names the SR a superseding result replaces (a late series reopened the study as a new version,
or an operator re-ran it): the SR carries it in ``PredecessorDocumentsSequence`` and says so in words.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

#: Bumped only if the derivation changes (then every UID changes with it).
SCHEME = "ainode-result-uid/1"


@dataclass(frozen=True)
class PriorDocument:
    """The SR a new result supersedes: its UIDs (Hierarchical SOP Instance Reference) and the job that made it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    job_id: int | None = None
    study_version: int | None = None

    def reference(self) -> Dataset:
        """The minimal header highdicom's ``previous_versions`` reads."""
        ds = Dataset()
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        return ds

    def describe(self, study_version: int | None = None) -> str:
        """In words, for the SR's text and the companions; ``study_version`` is the version analysed now."""
        made_by = f" (job {self.job_id})" if self.job_id is not None else ""
        if study_version is not None and self.study_version is not None and study_version > self.study_version:
            why = (f"the study received further instances after it was analysed (study version {self.study_version}"
                   f" -> {study_version})")
        else:
            why = "the same study was analysed again"
        return (f"This result supersedes the earlier AI result of this study{made_by}, SR SOP Instance UID "
                f"{self.sop_instance_uid} in series {self.series_instance_uid}: {why}. Use this result, not the "
                "earlier one.")


@dataclass(frozen=True)
class ResultIdentity:
    """What makes a result one and the same document (see the module docstring)."""

    study_instance_uid: str
    version_key: str
    predecessor: PriorDocument | None = None
    study_version: int | None = None  # the ledger's version of the study analysed (for the words only)

    def __post_init__(self) -> None:
        if not self.study_instance_uid or not self.version_key:
            raise ValueError("a result identity needs the Study Instance UID and a version key")

    @classmethod
    def of_evidence(cls, study_instance_uid: str, sop_instance_uids: Iterable[str],
                    predecessor: PriorDocument | None = None) -> ResultIdentity:
        """Without a ledger: the version is the set of evidence instances."""
        digest = hashlib.sha256("\n".join(sorted(sop_instance_uids)).encode("ascii")).hexdigest()
        return cls(study_instance_uid, f"evidence:{digest}", predecessor)

    def uid(self, fingerprint: Sequence[str], role: str, level: str, number: int = 1) -> str:
        """The UID of ``level`` (``series`` or ``instance``) ``number`` of the document ``role``."""
        sources = [SCHEME, self.study_instance_uid, self.version_key, *fingerprint, role, level, str(number)]
        return str(generate_uid(entropy_srcs=sources))

    def supersession_text(self, sop_instance_uid: str) -> str | None:
        """The words saying which result this one replaces, or ``None`` (see :meth:`supersedes`)."""
        prior = self.supersedes(sop_instance_uid)
        return None if prior is None else prior.describe(self.study_version)

    def supersedes(self, sop_instance_uid: str) -> PriorDocument | None:
        """The predecessor to reference from a document with ``sop_instance_uid``: none when it is that very
        document (the same inputs made the same document again)."""
        if self.predecessor is None or self.predecessor.sop_instance_uid == sop_instance_uid:
            return None
        return self.predecessor


# -- the SR of a report's content ---------------------------------------------------------------------------
# Structural types of node.sr.content's value objects (content.py imports this module, not the reverse).


class _Model(Protocol):
    @property
    def task(self) -> str: ...
    @property
    def sha256(self) -> str: ...


class _Algorithm(Protocol):
    @property
    def models(self) -> Sequence[_Model]: ...
    @property
    def version(self) -> str: ...


class _Source(Protocol):
    @property
    def study_instance_uid(self) -> str: ...
    @property
    def evidence(self) -> list[Dataset]: ...


class _Content(Protocol):
    @property
    def source(self) -> _Source: ...
    @property
    def algorithm(self) -> _Algorithm: ...
    @property
    def primary_subtype(self) -> str | None: ...
    @property
    def identity(self) -> ResultIdentity | None: ...


def fingerprint(algorithm: _Algorithm, primary_subtype: str | None = None) -> tuple[str, ...]:
    """What decides a result's content besides the study version: every model's manifest SHA-256, the node's
    software version and the primary-tumour subtype given to the model (part of every result UID)."""
    models = sorted(f"{m.task}={m.sha256}" for m in algorithm.models)
    return (*models, f"software={algorithm.version}", f"primary={primary_subtype or ''}")


def result_identity(content: _Content) -> ResultIdentity:
    """The content's identity, or (no ledger, e.g. ``ainode analyse``) one derived from its evidence instances."""
    source = content.source
    if content.identity is not None:
        if content.identity.study_instance_uid != source.study_instance_uid:
            raise ValueError("the result identity names another study than the report's evidence")
        return content.identity
    return ResultIdentity.of_evidence(source.study_instance_uid, (str(d.SOPInstanceUID) for d in source.evidence))


def report_uids(content: _Content) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID) of the content's SR: the same for the same study version, models,
    software and primary subtype (:mod:`node.sr.identity`)."""
    identity, fp = result_identity(content), fingerprint(content.algorithm, content.primary_subtype)
    return identity.uid(fp, "sr", "series"), identity.uid(fp, "sr", "instance")


def superseded(content: _Content) -> PriorDocument | None:
    """The earlier SR the content's SR replaces (``None`` when there is none, or it is this very document)."""
    return result_identity(content).supersedes(report_uids(content)[1])


def supersession_text(content: _Content) -> str | None:
    """The sentence saying which earlier result this one replaces (SR text, PDF and SC pages)."""
    return result_identity(content).supersession_text(report_uids(content)[1])
