"""What every job-layer function gets: the ledger repository, the job options and the process's settings.

One :class:`JobContext` per worker process (:func:`job_context`), built from the settings given to
:func:`bind_settings` once before Celery's pool forks; ledger database errors count as transient.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import OperationalError

from node.config import Settings
from node.errors import TransientError
from node.ledger.db import Ledger
from node.ledger.repository import JobRecord, LedgerStateError, Repository
from node.values import Destination

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobOptions:
    """What the job layer needs beyond the ledger: the models, destinations and failure-SR switch."""

    destinations: tuple[Destination, ...] = ()
    models_dir: Path | None = None  # None = process_study's default (models/demo)
    failure_sr: bool = True
    spool_dir: Path = Path("spool")

    primary_attributes: tuple[str, ...] = Settings.primary_subtype_attributes
    her2_three_tier: bool = False  # the experimental HER2 three-tier head (setting her2_three_tier)
    dl_model_dir: Path | None = None  # the deep model's bundle (setting dl_model_dir); None = not run
    dl_heads: tuple[str, ...] = ("er", "pr", "her2")

    @classmethod
    def from_settings(cls, settings: Settings) -> JobOptions:
        return cls(settings.destinations, settings.models_dir, settings.failure_sr, settings.spool_dir,
                   settings.primary_subtype_attributes, her2_three_tier=settings.her2_three_tier,
                   dl_model_dir=settings.dl_model_dir, dl_heads=settings.dl_heads)


@dataclass(frozen=True)
class JobContext:
    repo: Repository
    options: JobOptions
    clock: Callable[[], float] = time.time
    settings: Settings = field(default_factory=Settings)


_bound: list[Settings] = []


def bind_settings(settings: Settings) -> None:
    """The worker's settings, given once by :func:`node.jobs.celery_app.configure` before the pool forks."""
    _bound[:] = [settings]
    job_context.cache_clear()


def bound_settings() -> Settings:
    """The settings given to :func:`bind_settings`; a worker started without them loads the environment's once."""
    if not _bound:
        _bound.append(Settings.load())
    return _bound[0]


@functools.cache
def job_context() -> JobContext:
    """One ledger connection pool per worker process, opened on first use (after the pool forked)."""
    settings = bound_settings()
    with ledger_errors_are_transient():
        ledger = Ledger.open(settings.effective_database_url)
    return JobContext(Repository(ledger, settings.late_instance_policy), JobOptions.from_settings(settings),
                      settings=settings)


@contextmanager
def ledger_errors_are_transient() -> Iterator[None]:
    """A database that cannot be reached (or is locked) is a temporary condition: retry the task."""
    try:
        yield
    except OperationalError as exc:
        raise TransientError(f"the ledger database cannot be reached: {exc.orig}") from exc


def find_job(repo: Repository, job_id: int, study_instance_uid: str) -> JobRecord:
    for job in repo.jobs(study_instance_uid):
        if job.id == job_id:
            return job
    raise LedgerStateError(f"job {job_id} of study {study_instance_uid} does not exist")


def fail_job(ctx: JobContext, job_id: int, reason: str) -> None:
    """processing -> failed, unless another delivery of the task finished the job meanwhile."""
    try:
        ctx.repo.finish_job(job_id, ctx.clock(), ok=False, reason=reason)
    except LedgerStateError as exc:
        logger.warning("job %d not marked failed: %s", job_id, exc.message)
