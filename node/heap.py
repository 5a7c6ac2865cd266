"""The long-lived heap of a node process, kept out of the cyclic garbage collector's way.

A node process imports a lot before it does its work (the listener: pynetdicom, pydicom, SQLAlchemy; a worker after
its preload: SimpleITK, PyRadiomics, xgboost, the model set, the atlas): 0.3-0.6 million objects the collector
tracks and that live as long as the process. Every full collection walks all of them: ~0.15 s of CPU in a listener
process, ~0.2 s in a preloaded worker (measured on the 2-core development machine), with the GIL held. pynetdicom's
association server forces one every 30 s (``service_actions``: every 60th turn of its 0.5 s accept loop), which
stalls every association of that listener process for that long; a job's own allocations trigger about one.

:func:`freeze_startup_heap` collects once, then moves every object that survived into the collector's permanent
generation (:func:`gc.freeze`), which no later collection walks: those collections then examine only what was
allocated since. Called by each listener process and ``ainode serve`` once the listener's dispatcher thread has
loaded the job layer (``on_loaded`` of :func:`node.jobs.dispatcher.dispatcher_factory`: ~230,000 of those objects),
and by the worker at the end of its preload (:func:`node.jobs.warm.preload`), before its pool forks. Objects frozen
stay until the process ends even if they become garbage in a cycle; this is for what a process sets up once
(imports, caches, loaded models), called at the end of its start-up. An association already open at that moment (a
sender that connects within a listener's first seconds) is frozen with it and stays in memory after it ends: at
most ~0.3 MB each (its receive buffer), once per process start. Before a fork it also keeps the children from
touching (and so copying) the parent's pages when they collect (the CPython docs' advice for pre-fork servers).
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def freeze_startup_heap(what: str) -> int:
    """Collect, then freeze what survives (see the module docstring); returns how many objects are frozen in all.
    ``what`` names the process in the log line."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("%s: start-up heap frozen (%d objects kept out of the garbage collector's walks)", what, frozen)
    return frozen
