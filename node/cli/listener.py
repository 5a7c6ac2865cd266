"""``python -m node.cli.listener``: one listener process of ``ainode serve``'s pool (:mod:`node.scp.pool`).

It arms the parent-death signal first (``--exit-with-parent PID``: a SIGKILL of ``serve`` takes it down), then
runs :func:`node.scp.server.main` with the rest of the command line (``--settings-file``, ``--slot``...).
Not a sub-command: ``serve`` starts it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from node.config import Settings
from node.heap import freeze_startup_heap
from node.jobs.dispatcher import dispatcher_factory
from node.jobs.lifetime import exit_with_parent
from node.jobs.sender import process_sender
from node.scp import server
from node.scp.arrivals import DispatcherFactory


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.cli.listener", add_help=False)
    parser.add_argument("--exit-with-parent", type=int, metavar="PID")
    args, rest = parser.parse_known_args(argv)
    if args.exit_with_parent is not None:
        exit_with_parent(args.exit_with_parent)
    return server.main(rest, make_dispatcher=_dispatcher)


def _dispatcher(settings: Settings) -> DispatcherFactory:
    """The job layer this listener process dispatches to (the listener itself does not import it). Once its thread
    has loaded the job layer, the process's start-up heap is frozen: pynetdicom's full collection every 30 s then
    walks only what came since (node/heap.py)."""
    return dispatcher_factory(settings, process_sender(settings),
                              on_loaded=lambda: freeze_startup_heap("listener process"))


if __name__ == "__main__":
    sys.exit(main())
