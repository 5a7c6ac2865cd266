"""Warm workers: what a worker loads once, before its pool forks, and what each pool process gets after the fork.

A pool process serves many jobs (``worker_max_tasks_per_child``, default 50) instead of one, so the cost of a
process start is paid once per worker, not once per study (docs/jobs.md "Warm workers"):

* :func:`preload` runs in the worker's **main process** (Celery's ``worker_init`` signal, before the prefork pool
  starts its processes; ``ainode worker`` says ``ready`` only after it): it imports the heavy modules the jobs use
  (SimpleITK, ANTs, PyRadiomics, xgboost, highdicom, matplotlib, the imaging pipeline, the SR writers), has
  highdicom read its tables of the standard (the first SR of each pool process no longer pays ~0.2 s), loads the
  pipeline's configuration, the MNI template and AAL3 atlas caches of :mod:`node.imaging.pons` and
  :mod:`node.imaging.sites`, and the model set (:func:`node.jobs.model_set.load_model_set`), and explains one row
  with each bundle. The forked pool processes share those pages (copy on write). It opens **no ledger connection
  and starts no thread**: the main process's lease heartbeat (:mod:`node.jobs.recovery`) is the only thread a
  fork may meet, and its fork guard covers it. A model set that cannot be loaded is only logged: its job fails
  with the clear error then, and the worker stays up for the deliveries.
* :func:`on_pool_process_start` runs in each pool process (``worker_process_init``): it sets the process's thread
  budget (:func:`thread_budget`: the cores divided by the worker's concurrency, at least 1) for ITK (and ANTs,
  through ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``), the BLAS/OpenMP libraries already loaded (threadpoolctl) and
  torch when loaded, so ``concurrency`` processes do not each start a thread per core and fight over the cores.
  A ``threads`` value in ``config/pipeline.yaml`` still sets ITK's thread count for the pipeline itself.

The memory bound is kept by Celery: a pool process whose peak resident size passed ``worker_max_memory_mb``
is replaced after the task it ran (``worker_max_memory_per_child``); one killed mid-job (SIGKILL, OOM killer) has
its job run again by a new process (``acks_late`` + ``reject_on_worker_lost``, the leases of
:mod:`node.jobs.recovery`). Each job's own state lives in its arguments and its output folder; the module-level
caches hold only read-only data keyed by what they were read from (the model set by every bundle file's
identity, so a changed bundle is loaded again and verified, never served stale).
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery.signals import worker_init, worker_process_init

from node.config import Settings
from node.errors import NodeError
from node.heap import freeze_startup_heap

if TYPE_CHECKING:
    from node.imaging.pipeline import PipelineConfig

logger = logging.getLogger(__name__)

#: Imported before the pool forks: what the process, delivery and poll tasks import (lazily or not).
HEAVY_MODULES: tuple[str, ...] = (
    "SimpleITK",
    "ants",
    "radiomics.featureextractor",
    "xgboost",
    "highdicom",
    "matplotlib.pyplot",
    "node.imaging.pipeline",
    "node.jobs.process",
    "node.sr.validate",
    "node.delivery.outbox",
    "node.jobs.completeness",
)

#: Environment variables read by BLAS / OpenMP libraries a job may load later (those loaded already are limited
#: through threadpoolctl).
THREAD_VARIABLES: tuple[str, ...] = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                     "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")


@dataclass
class Preloaded:
    """What :func:`preload` did, for the log line and the tests."""

    seconds: float = 0.0
    modules: int = 0  # modules in sys.modules afterwards
    model_bundles: int = 0
    steps: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


#: (pid, what the preload did) of the process that preloaded; pool processes inherit it.
_preloaded: list[tuple[int, Preloaded]] = []
#: threads per pool process, set in the main process (worker_init) and inherited by the pool processes
_threads: list[int] = []
#: the jobs this process has run, for the per-job log line (node.jobs.tasks)
_jobs_run: list[int] = [0]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def thread_budget(concurrency: int, cores: int | None = None) -> int:
    """Threads per pool process: the cores divided among the ``concurrency`` processes, at least 1."""
    return max(1, (available_cores() if cores is None else cores) // max(1, concurrency))


def limit_threads(threads: int) -> dict[str, int]:
    """Limit this process's compute threads to ``threads`` (ITK, ANTs, BLAS/OpenMP, torch); what was set."""
    import SimpleITK as sitk
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    applied = {"itk": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}
    threadpool_limits(limits=threads)  # every BLAS / OpenMP runtime loaded in this process
    if "torch" in sys.modules:
        torch: Any = sys.modules["torch"]
        torch.set_num_threads(threads)
        applied["torch"] = int(torch.get_num_threads())
    return applied


def _timed_step(done: Preloaded, name: str, step: Any) -> None:
    start = time.perf_counter()
    try:
        step()
    except (NodeError, ImportError, OSError, ValueError) as exc:  # the job will say it clearly; keep the worker up
        done.problems.append(f"{name}: {getattr(exc, 'message', None) or exc}")
    done.steps[name] = time.perf_counter() - start


def _warm_matplotlib() -> None:
    """Draw one text into a PNG: matplotlib loads its font cache and the font file once, here."""
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(1, 1), dpi=20)
    figure.text(0.1, 0.5, "warm")
    figure.savefig(io.BytesIO(), format="png")
    plt.close(figure)


def _warm_highdicom() -> None:
    """Construct one empty highdicom SOP instance: highdicom reads its tables of the standard (IODs and modules,
    ~0.2 s of JSON) on the first object a process builds; here once, before the fork, not in each first job."""
    import highdicom as hd
    from pydicom.uid import Comprehensive3DSRStorage

    hd.SOPClass(study_instance_uid=hd.UID(), series_instance_uid=hd.UID(), series_number=1,
                sop_instance_uid=hd.UID(), sop_class_uid=Comprehensive3DSRStorage, instance_number=1, modality="SR")


def _load_atlas_caches(config: PipelineConfig) -> None:
    """The process-wide caches of the template registration and the lesion sites (read-only images)."""
    from node.imaging import pons, sites

    pons.mni_template()
    pons._template_roi()
    pons.template_brain_mask(config.preprocess.pons.template_mask_margin_mm)
    sites.region_atlas()
    sites._labelled_tree()


def _load_models(settings: Settings, config: PipelineConfig, done: Preloaded) -> None:
    from node.jobs.model_set import load_model_set

    model_set = load_model_set(settings.models_dir, config.radiomics.sha256 or None)
    for bundle in model_set.bundles.values():
        bundle.warm_up()
    done.model_bundles = len(model_set.bundles)


def preload(settings: Settings) -> Preloaded:
    """Import the heavy modules and load the template, atlas and model set into this process (see the module
    docstring); never raises for a missing model or atlas (the job that needs it fails with the reason)."""
    start = time.perf_counter()
    done = Preloaded()
    for name in HEAVY_MODULES:
        _timed_step(done, f"import {name}", lambda name=name: importlib.import_module(name))
    _timed_step(done, "matplotlib fonts", _warm_matplotlib)
    _timed_step(done, "highdicom tables", _warm_highdicom)
    configs: list[PipelineConfig] = []
    _timed_step(done, "pipeline configuration", lambda: configs.append(_pipeline_config()))
    if configs:
        config = configs[0]
        _timed_step(done, "template and atlas", lambda: _load_atlas_caches(config))
        _timed_step(done, "model set", lambda: _load_models(settings, config, done))
    # what the preload set up lives as long as the worker: no collection walks it again (about one full collection
    # per job otherwise, 0.2 s), and the pool processes forked after it do not copy its pages when they collect
    freeze_startup_heap("worker preload")
    done.seconds = time.perf_counter() - start
    done.modules = len(sys.modules)
    _preloaded[:] = [(os.getpid(), done)]
    return done


def _pipeline_config() -> PipelineConfig:
    from node.imaging.pipeline import PipelineConfig

    return PipelineConfig.load()


def preloaded() -> Preloaded | None:
    """What the preload of this worker did (inherited by its pool processes); ``None`` without one."""
    return _preloaded[0][1] if _preloaded else None


@contextmanager
def job_in_this_process(job_id: int) -> Iterator[None]:
    """Around one run of a job: afterwards, log how many jobs this process ran, how long this one took and which
    packages it imported (none in a warm process; a cold one imports the pipeline on its first job)."""
    _jobs_run[0] += 1
    count = _jobs_run[0]
    before = set(sys.modules)
    start = time.perf_counter()
    try:
        yield
    finally:
        new = sorted({name.split(".")[0] for name in set(sys.modules) - before} - {""})
        logger.info("job %d ran in %.1f s as job %d of this pool process; %d package(s) imported during it%s",
                    job_id, time.perf_counter() - start, count, len(new), f": {', '.join(new[:12])}" if new else "")


@worker_init.connect
def on_worker_init(sender: Any = None, **_kwargs: Any) -> None:
    """The worker's main process, before the pool forks: the thread budget, then the preload (if enabled)."""
    from node.jobs.context import bound_settings

    settings = bound_settings()
    concurrency = int(getattr(sender, "concurrency", None) or 1)
    _threads[:] = [thread_budget(concurrency)]
    if not settings.worker_preload:
        logger.info("worker preload off (worker_preload): each pool process imports on its first job")
        return
    done = preload(settings)
    slowest = sorted(done.steps.items(), key=lambda item: -item[1])[:3]
    logger.info("worker preloaded in %.1f s: %d modules, %d model bundle(s); slowest: %s; %d thread(s) per pool "
                "process (%d cores, concurrency %d)", done.seconds, done.modules, done.model_bundles,
                ", ".join(f"{name} {s:.1f} s" for name, s in slowest), _threads[0], available_cores(), concurrency)
    for problem in done.problems:
        logger.warning("preload: %s (the jobs that need it will fail with the reason)", problem)


@worker_process_init.connect
def on_pool_process_start(**_kwargs: Any) -> None:
    """In each pool process, after the fork: its thread budget; one log line per process."""
    _jobs_run[0] = 0
    threads = _threads[0] if _threads else thread_budget(1)
    applied = limit_threads(threads)
    done = preloaded()
    logger.info("pool process started: %s, threads %s", "warm (preloaded before the fork)" if done else "cold",
                ", ".join(f"{name} {n}" for name, n in applied.items()))
