"""A worker process's lifetime tied to its parent's: the Linux parent-death signal, through ctypes.

``ainode serve`` starts its worker with ``--exit-with-parent <pid>``; the worker arms the signal before anything
else, so a SIGKILL of ``serve`` takes the worker down at once (never a second worker beside a restarted node on
the same spool). The worker's pool processes are armed by Celery itself, its embedded beat process by
``node.jobs.tasks``. Importing this module costs nothing (no Celery, no database).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def exit_with_parent(expected_parent: int | None = None) -> bool:
    """Linux: this process gets SIGKILL when the thread that started it ends (``prctl(PR_SET_PDEATHSIG)``).

    With ``expected_parent``, a parent that died before the call (this process already re-parented) makes the
    process exit at once with status 1. Returns whether the signal is armed (False on other systems).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
            return False
    except (OSError, AttributeError) as exc:
        logger.warning("prctl(PR_SET_PDEATHSIG) is not available: %s", exc)
        return False
    if expected_parent is not None and os.getppid() != expected_parent:
        logger.error("the parent process %d is gone: exiting", expected_parent)
        os._exit(1)
    return True
