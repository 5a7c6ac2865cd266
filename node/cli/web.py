"""``ainode web``: serve the dashboard, JSON API, ``/health`` and ``/metrics`` with uvicorn.

It reads the node's settings (``--config``, ``AINODE_*``) to find the ledger, spool, broker and destinations,
and refuses to start without an access token (``AINODE_WEB_TOKEN`` / ``AINODE_WEB_TOKEN_FILE``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from node import log
from node.config import Settings, redact_url
from node.errors import NodeError
from node.values import parse_port, parse_text

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "web",
        help="serve the dashboard, JSON API, /health and /metrics",
        description="Serve the node's dashboard (studies, jobs, predictions, deliveries, failures; resend and "
        "re-run), its JSON API, /health and /metrics. Needs AINODE_WEB_TOKEN or AINODE_WEB_TOKEN_FILE.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", default="8080", help="TCP port (default 8080)")
    parser.add_argument("--config", type=Path, help="node settings file (YAML); default $AINODE_CONFIG")
    parser.add_argument("--database", help="ledger URL (default: the settings' database_url or the spool's SQLite)")
    parser.add_argument("--spool-dir", type=Path, help="the node's spool folder")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from node.web.app import create_app
    from node.web.auth import load_token

    host = parse_text(args.host, "option --host")
    port = parse_port(args.port, "option --port")
    settings = Settings.load(args.config, overrides={"database_url": args.database, "spool_dir": args.spool_dir})
    token = load_token(settings)  # before anything else: no token, no server
    app = create_app(settings, token)
    logger.info("dashboard on http://%s:%d (ledger %s)", host, port, redact_url(str(app.state.ctx.ledger.url)))
    # proxy_headers=False: uvicorn would believe X-Forwarded-For from 127.0.0.1 whatever the settings say; the app
    # reads the forwarded headers itself, from web_trusted_proxies only (node.web.context.client_address)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, server_header=False,
                proxy_headers=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m node.cli.web``: the same as ``ainode web`` without loading the other sub-commands."""
    parser = argparse.ArgumentParser(prog="ainode web")
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-vv for debug); default $AINODE_LOG_VERBOSITY or 1 (info)")
    args = parser.parse_args(argv)
    try:
        log.configure(args.verbose or log.env_verbosity(1), default=log.LogFormat.JSON)
        return run(args)
    except NodeError as exc:
        print(f"ainode web: error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
