"""When is a received study complete? As soon as it is whole; a quiet period only where the headers cannot tell.

Studies arrive over several associations in any order (a PACS may send the SEG before the T2), and DICOM has
no "study finished" signal. The node's own series rules (``config/series_rules.yaml`` through
:func:`node.imaging.study.identify_series`, run on the spooled files of the ledger's series) say which series are
required; :mod:`node.jobs.geometry` says whether each of them is whole (contiguous slices, counts, the SEG's
references); the ledger knows which associations are still storing into the study
(:mod:`node.ledger.associations`):

* required series identified, geometrically whole, no association open for the study, and ``settle_s`` since
  the last instance                                                            -> ready ("complete")
* required series identified, an instance certainly missing (a slice gap, a count not reached, a referenced
  instance not received)                                                       -> keep waiting, even after the
  quiet period (the reason is recorded once the quiet period has passed), until force-complete
* required series identified and ``quiet_period_s`` since the last instance   -> ready (the fallback: the headers
  cannot decide, or an association stays open)
* ``force_complete_s`` since the version's first instance, series identified  -> ready (forced)
* ``force_complete_s`` passed, series still missing: action ``process``       -> ready (forced, with reason)
* ``force_complete_s`` passed, series still missing: action ``fail``          -> failed (with reason)
* quiet, but a required series missing or ambiguous                           -> keep waiting, the reason
  recorded on the study at once (``ainode status``, dashboard; audit ``study-waiting``)
* otherwise                                                                   -> keep waiting

The ``study-ready`` audit event says which rule fired. A policy without ``settle_s`` (``None``) is the quiet
period alone (the rule before issue 12).

:meth:`CompletenessChecker.find_ready_studies` is what the job layer calls periodically (and the listener when an
association ends, for the studies it stored into); it is idempotent: a study stays ``ready`` (and is returned
again, with the same idempotency key) until the job layer calls
:meth:`node.ledger.repository.Repository.enqueue`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from node.config import ForceCompleteAction, Settings
from node.errors import InvalidStudyError
from node.imaging.series_rules import SeriesRules
from node.imaging.study import IdentifiedSeries, identify_series
from node.imaging.types import SeriesRef
from node.jobs.geometry import CACHE, GeometryCache, Judgement, Wholeness, judge_study
from node.ledger.repository import Repository, StudySnapshot, idempotency_key
from node.ledger.states import StudyState
from node.spool import uid_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletenessPolicy:
    quiet_period_s: float
    force_complete_s: float
    force_action: ForceCompleteAction
    #: a whole study with no association open is ready this long after its last instance; None = quiet period only
    settle_s: float | None = None

    def __post_init__(self) -> None:
        if self.quiet_period_s < 0 or self.force_complete_s < self.quiet_period_s:
            raise ValueError(
                f"need 0 <= quiet_period_s ({self.quiet_period_s}) <= force_complete_s ({self.force_complete_s})"
            )
        if self.settle_s is not None and self.settle_s < 0:
            raise ValueError(f"settle_s ({self.settle_s}) must not be negative")

    @classmethod
    def from_settings(cls, settings: Settings) -> CompletenessPolicy:
        return cls(settings.quiet_period_s, settings.force_complete_s, settings.force_complete_action,
                   settings.settle_s if settings.geometric_completeness else None)

    @property
    def settle(self) -> float:
        """The settle time in force (never longer than the quiet period)."""
        return self.quiet_period_s if self.settle_s is None else min(self.settle_s, self.quiet_period_s)


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
    rule: str = ""  # READY: which rule fired ("complete", "quiet period", "forced"), for the audit trail


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


def judge_identified(identified: IdentifiedSeries, cache: GeometryCache = CACHE) -> Judgement:
    """Whether the identified T1CE and T2 are geometrically whole, with the SEG's references."""
    images = [(role, ref.series_instance_uid, ref.files) for role, ref in (("T1CE", identified.t1ce),
                                                                            ("T2", identified.t2))]
    return judge_study(images, identified.seg.files, cache)


def evaluate(
    snapshot: StudySnapshot, rules: SeriesRules, policy: CompletenessPolicy, now: float, spool_root: Path,
    open_studies: Collection[str] = (),
) -> Decision:
    """Decide what a ``receiving`` study should become at time ``now`` (pure apart from reading headers);
    ``open_studies``: the studies an association still stores into."""
    identified, problem = _identify(series_refs(snapshot, spool_root), rules)
    quiet_for = now - snapshot.last_received_at
    open_for = now - snapshot.opened_at
    fallback = ""
    if identified is not None and policy.settle_s is not None and open_for < policy.force_complete_s:
        judged = judge_identified(identified)
        if judged.wholeness is Wholeness.INCOMPLETE:
            waiting = f"waiting for missing instances: {judged.reason}"
            return Decision(Verdict.WAIT, waiting, identified=identified, stalled=quiet_for >= policy.quiet_period_s)
        if snapshot.study_instance_uid in open_studies:
            fallback = "; an association storing into the study is still open"
        elif judged.wholeness is Wholeness.WHOLE:
            if quiet_for >= policy.settle:
                return Decision(Verdict.READY, f"{judged.reason}; no association open; settled {quiet_for:.1f} s",
                                identified=identified, rule="complete")
            return Decision(Verdict.WAIT, "complete, settling", identified=identified)
        else:
            fallback = f"; the headers cannot tell whether it is whole ({judged.reason})"
    if identified is not None and quiet_for >= policy.quiet_period_s:
        return Decision(Verdict.READY, f"required series present; quiet for {quiet_for:.0f} s{fallback}",
                        identified=identified, rule="quiet period")
    if open_for < policy.force_complete_s:
        if identified is not None:
            return Decision(Verdict.WAIT, "quiet period not over", identified=identified)
        if quiet_for >= policy.quiet_period_s:  # nothing arrives any more: say why it cannot start, now
            return Decision(Verdict.WAIT, f"waiting, cannot be processed yet: {problem}", stalled=True)
        return Decision(Verdict.WAIT, problem)
    deadline = f"force-complete deadline ({policy.force_complete_s:.0f} s) passed"
    if identified is not None:
        return Decision(Verdict.READY, f"{deadline} while instances were still arriving", True, identified,
                        rule="forced")
    if policy.force_action is ForceCompleteAction.PROCESS:
        return Decision(Verdict.READY, f"{deadline}; processing what was received: {problem}", True, rule="forced")
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

    def check(self, now: float, only: Collection[str] | None = None) -> None:
        """Apply :func:`evaluate` to every ``receiving`` study (those of ``only``) and record the transitions."""
        snapshots = self.repository.studies([StudyState.RECEIVING], only)
        if not snapshots:
            return
        open_studies: set[str] = set()
        if self.policy.settle_s is not None:
            open_studies = self.repository.studies_with_open_associations(now, self.policy.force_complete_s)
        for snapshot in snapshots:
            decision = evaluate(snapshot, self.rules, self.policy, now, self.spool_root, open_studies)
            if decision.verdict is Verdict.READY:
                changed = self.repository.mark_ready(
                    snapshot, now, forced=decision.forced, reason=decision.reason if decision.forced else None,
                    detail=f"{decision.rule}: {decision.reason}",
                )
            elif decision.verdict is Verdict.FAIL:
                changed = self.repository.mark_failed(snapshot, now, decision.reason)
            elif decision.stalled:
                changed = self.repository.note_waiting(snapshot, now, decision.reason)
            else:
                continue
            if changed:
                logger.info("study %s -> %s: %s", snapshot.study_instance_uid, decision.verdict, decision.reason)

    def find_ready_studies(self, now: float, only: Collection[str] | None = None) -> list[ReadyStudy]:
        """Check every receiving study (those of ``only``) at ``now``, then return the studies in state ``ready``
        (those of ``only``)."""
        self.check(now, only)
        ready = []
        for snapshot in self.repository.studies([StudyState.READY], only):
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
