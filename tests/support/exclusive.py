"""One heavy end-to-end deployment test at a time across pytest-xdist workers.

The compose topology test (services as processes) and the Docker test (the same services in containers) each run
a whole node with several workers; on a 2-core machine, running both at once starves one of them (its
"each worker takes one study" timing no longer holds). :func:`heavy_deployment` is an inter-process lock (an
``flock`` on a file in the system temporary folder): the second test waits for the first instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import tempfile
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = Path(tempfile.gettempdir()) / "ainode-tests-heavy-deployment.lock"


@contextlib.contextmanager
def heavy_deployment() -> Iterator[None]:
    """Hold the heavy-deployment lock for the block (blocks while another test process holds it)."""
    with LOCK_FILE.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
