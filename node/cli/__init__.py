"""``ainode``: the node's command line. Each sub-command group is one module of this package, named for it.

Errors the node raises on purpose (:class:`node.errors.NodeError`) are printed as one readable line and give
exit status 2; anything unexpected gives status 70 with the traceback available under ``-v``. A reader that
closes the pipe early (``ainode status | head``) ends the command quietly with status 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from node import __version__, log
from node.errors import NodeError

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INVALID = 2
EXIT_INTERNAL = 70


def build_parser() -> argparse.ArgumentParser:
    from node.cli import (
        analyse,
        dataset,
        demo,
        features,
        model,
        primary,
        purge,
        research,
        serve,
        status,
        synth,
        train_dl,
        web,
        worker,
    )

    parser = argparse.ArgumentParser(
        prog="ainode",
        description="BCBM AI node: molecular subtype of breast-cancer brain metastases from MRI "
        "(research use only, not for diagnosis).",
    )
    parser.add_argument("--version", action="version", version=f"ainode {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (synth, features, model, dataset, analyse, status, primary, purge, worker, serve, demo, web,
                    train_dl, research):
        command.register(sub)
    return parser


def verbosity(command: str, cli_verbose: int) -> int:
    """``-v`` wins; else ``AINODE_LOG_VERBOSITY`` (``ainode web`` ignored it and wrote no line at all); else
    warnings (the worker, started by its own ``main``, defaults to info)."""
    return cli_verbose or log.env_verbosity(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.configure(verbosity(args.command, args.verbose), default=log.default_format(args.command))
    try:
        code = int(args.handler(args) or EXIT_OK)
        sys.stdout.flush()  # here, not at interpreter exit: a closed pipe is handled below
        return code
    except BrokenPipeError:
        return _reader_went_away()
    except NodeError as exc:
        print(f"ainode {args.command}: error: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print(f"ainode {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # last resort: one readable line, not a bare traceback
        logger.debug("unexpected error", exc_info=True)
        print(
            f"ainode {args.command}: internal error ({type(exc).__name__}: {log.redact(str(exc))}); "
            "run with -vv for the traceback and report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _reader_went_away() -> int:
    """``ainode status | head``: the reader closed the pipe. Stop quietly, as ``cat`` would (the Python docs'
    recipe: point stdout at /dev/null so the interpreter's own flush at exit does not fail again)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
