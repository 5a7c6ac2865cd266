"""When is a received study complete? Required series present *and* a quiet period without new instances.

Studies arrive over several associations in any order (a PACS may send the SEG before the T2), and DICOM has
no "study finished" signal, so the rule is the peers' inactivity timer combined with the node's own series
rules (``config/series_rules.yaml`` through :func:`node.imaging.study.identify_series`, run on the spooled
files of the ledger's series):

* required series identified and ``quiet_period_s`` since the last instance   -> ready
* ``force_complete_s`` since the version's first instance, series identified  -> ready (forced)
* ``force_complete_s`` passed, series still missing: action ``process``       -> ready (forced, with reason)
* ``force_complete_s`` passed, series still missing: action ``fail``          -> failed (with reason)
* quiet, but a required series missing or ambiguous                           -> keep waiting, the reason
  recorded on the study at once (``ainode status``, dashboard; audit ``study-waiting``)
* otherwise                                                                   -> keep waiting

:meth:`CompletenessChecker.find_ready_studies` is what the job layer calls periodically; it is idempotent: a
study stays ``ready`` (and is returned again, with the same idempotency key) until the job layer calls
:meth:`node.ledger.repository.Repository.enqueue`.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from pathlib import Path

from node.config import ForceCompleteAction, Settings
from node.errors import InvalidStudyError
from node.imaging.series_rules import SeriesRules
from node.imaging.study import IdentifiedSeries, identify_series
from node.imaging.types import SeriesRef
from node.ledger.repository import Repository, StudySnapshot, idempotency_key
from node.ledger.states import StudyState
from node.spool import uid_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletenessPolicy:
    quiet_period_s: float
    force_complete_s: float
    force_action: ForceCompleteAction

    def __post_init__(self) -> None:
        if self.quiet_period_s < 0 or self.force_complete_s < self.quiet_period_s:
            raise ValueError(
                f"need 0 <= quiet_period_s ({self.quiet_period_s}) <= force_complete_s ({self.force_complete_s})"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> CompletenessPolicy:
        return cls(settings.quiet_period_s, settings.force_complete_s, settings.force_complete_action)


class Verdict(enum.StrEnum):
    WAIT = "wait"
    READY = "ready"
    FAIL = "fail"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    forced: bool = False
    identified: IdentifiedSeries | None = None
    stalled: bool = False  # quiet, yet the required series cannot be identified: the reason is shown at once


@dataclass(frozen=True)
class ReadyStudy:
    """A study version the job layer may process; ``idempotency_key`` is the same for identical content."""

    study_instance_uid: str
    version: int
    content_digest: str
    idempotency_key: str
    study_dir: Path  # the spool folder holding all its instances (hashed names; scan it with scan_study)
    forced: bool
    reason: str | None
    series: tuple[SeriesRef, ...]
    identified: IdentifiedSeries | None  # None when forced through with required series missing


def series_refs(snapshot: StudySnapshot, spool_root: Path) -> list[SeriesRef]:
    """The ledger's series of a study as :class:`SeriesRef` pointing at the spooled files."""
    return [
        SeriesRef(
            series_instance_uid=s.series_instance_uid,
            study_instance_uid=snapshot.study_instance_uid,
            modality=s.modality,
            sop_class_uid=s.sop_class_uid,
            series_description=s.series_description,
            series_number=s.series_number,
            frame_of_reference_uid=s.frame_of_reference_uid,
            files=tuple(spool_root / f for f in s.files),
        )
        for s in snapshot.series
    ]


def _identify(refs: list[SeriesRef], rules: SeriesRules) -> tuple[IdentifiedSeries | None, str]:
    try:
        return identify_series(refs, rules), ""
    except InvalidStudyError as exc:
        return None, exc.message


def evaluate(
    snapshot: StudySnapshot, rules: SeriesRules, policy: CompletenessPolicy, now: float, spool_root: Path
) -> Decision:
    """Decide what a ``receiving`` study should become at time ``now`` (pure apart from reading headers)."""
    identified, problem = _identify(series_refs(snapshot, spool_root), rules)
    quiet_for = now - snapshot.last_received_at
    open_for = now - snapshot.opened_at
    if identified is not None and quiet_for >= policy.quiet_period_s:
        return Decision(Verdict.READY, f"required series present; quiet for {quiet_for:.0f} s", identified=identified)
    if open_for < policy.force_complete_s:
        if identified is not None:
            return Decision(Verdict.WAIT, "quiet period not over", identified=identified)
        if quiet_for >= policy.quiet_period_s:  # nothing arrives any more: say why it cannot start, now
            return Decision(Verdict.WAIT, f"waiting, cannot be processed yet: {problem}", stalled=True)
        return Decision(Verdict.WAIT, problem)
    deadline = f"force-complete deadline ({policy.force_complete_s:.0f} s) passed"
    if identified is not None:
        return Decision(Verdict.READY, f"{deadline} while instances were still arriving", True, identified)
    if policy.force_action is ForceCompleteAction.PROCESS:
        return Decision(Verdict.READY, f"{deadline}; processing what was received: {problem}", True)
    return Decision(Verdict.FAIL, f"{deadline}; {problem}", True)


class CompletenessChecker:
    """Moves ``receiving`` studies to ``ready`` / ``failed`` and lists the ready ones."""

    def __init__(
        self, repository: Repository, rules: SeriesRules, policy: CompletenessPolicy, spool_root: Path
    ) -> None:
        self.repository = repository
        self.rules = rules
        self.policy = policy
        self.spool_root = spool_root.resolve()

    def check(self, now: float) -> None:
        """Apply :func:`evaluate` to every ``receiving`` study and record the transitions."""
        for snapshot in self.repository.studies([StudyState.RECEIVING]):
            decision = evaluate(snapshot, self.rules, self.policy, now, self.spool_root)
            if decision.verdict is Verdict.READY:
                changed = self.repository.mark_ready(
                    snapshot, now, forced=decision.forced, reason=decision.reason if decision.forced else None
                )
            elif decision.verdict is Verdict.FAIL:
                changed = self.repository.mark_failed(snapshot, now, decision.reason)
            elif decision.stalled:
                changed = self.repository.note_waiting(snapshot, now, decision.reason)
            else:
                continue
            if changed:
                logger.info("study %s -> %s: %s", snapshot.study_instance_uid, decision.verdict, decision.reason)

    def find_ready_studies(self, now: float) -> list[ReadyStudy]:
        """Check every receiving study at ``now``, then return all studies in state ``ready``."""
        self.check(now)
        ready = []
        for snapshot in self.repository.studies([StudyState.READY]):
            refs = series_refs(snapshot, self.spool_root)
            identified, _ = _identify(refs, self.rules)
            ready.append(
                ReadyStudy(
                    study_instance_uid=snapshot.study_instance_uid,
                    version=snapshot.version,
                    content_digest=snapshot.content_digest,
                    idempotency_key=idempotency_key(snapshot.study_instance_uid, snapshot.content_digest),
                    study_dir=self.spool_root / uid_key(snapshot.study_instance_uid),
                    forced=snapshot.forced,
                    reason=snapshot.reason,
                    series=tuple(refs),
                    identified=identified,
                )
            )
        return ready
