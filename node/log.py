"""Logging set-up shared by every entry point.

A ``ContextVar`` carries the correlation id (study UID / job id) so call sites never pass it by hand; the
formatter prefixes it. Log messages must never contain patient names or IDs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

correlation_id: ContextVar[str] = ContextVar("correlation_id", default="-")


class _CorrelationFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = correlation_id.get()
        return True


def configure(verbosity: int = 0) -> None:
    """Configure the root logger once, from a ``main()``: 0 = warnings, 1 = info, 2+ = debug."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_CorrelationFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [%(correlation_id)s] %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@contextmanager
def correlated(value: str) -> Iterator[None]:
    """Tag every log record emitted inside the block with ``value`` (a study UID or job id)."""
    token = correlation_id.set(value)
    try:
        yield
    finally:
        correlation_id.reset(token)
