"""kombu's filesystem transport with each message written whole before it can be seen.

kombu 5's ``filesystem`` channel creates a message file (``open(name, "wb")``), then locks and writes it; a
consumer listing the folder in between (the embedded broker polls every 50 ms) moves and reads the empty file,
gets ``JSONDecodeError`` and Celery stops the worker ("Unrecoverable error"). Here a message is written under a
name the consumers skip (``.<name>.part``: not ``<...>.<queue>.msg``) and renamed into place, which is atomic.

The transport also lets a Celery worker stop in time. Its loop for a transport without an event loop (Celery's
``synloop``) waits up to 2 s for a message, then looks whether a stop was asked, and since Celery 5.5 waits once
more after it was: a warm shutdown spent up to 4 s there before it even began stopping the pool and beat, and
``ainode serve`` killed every worker at its 5 s stop timeout. :meth:`AtomicTransport.drain_events` waits in
steps of :data:`STOP_CHECK_S` and returns (no message) as soon as the worker is stopping.

:func:`install` makes ``filesystem://`` URLs use this transport in the calling process.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class AtomicChannel(filesystem.Channel):
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]
        """Put ``payload`` onto ``queue``: written to a temporary name, then renamed to kombu's message name."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = Path(self.data_folder_out) / name
        temporary = final.with_name(f".{name}.part")
        try:
            with temporary.open("wb", buffering=0) as handle:
                handle.write(str_to_bytes(dumps(payload)))
            temporary.replace(final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise ChannelError(f"Cannot add file {str(final)!r} to directory") from exc


#: how long the worker's wait for a message goes on before it looks again whether the worker is stopping
STOP_CHECK_S = 0.2


def _worker_stopping() -> bool:
    """Whether this process is a Celery worker asked to stop (warm or cold), as ``state.maybe_shutdown`` sees it."""
    state = sys.modules.get("celery.worker.state")
    if state is None:
        return False
    return any(flag is not None and flag is not False for flag in (state.should_stop, state.should_terminate))


class AtomicTransport(filesystem.Transport):
    Channel = AtomicChannel

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:  # type: ignore[override]
        """kombu's wait for one message, in steps: ``socket.timeout`` once ``timeout`` passed or the worker is
        stopping."""
        if timeout is None:
            return super().drain_events(connection, timeout)
        deadline = monotonic() + timeout
        while True:
            try:
                return super().drain_events(connection, max(min(STOP_CHECK_S, deadline - monotonic()), 0))
            except TimeoutError:  # kombu raises socket.timeout, the same class
                if monotonic() >= deadline or _worker_stopping():
                    raise


def install() -> None:
    """``filesystem://`` means :class:`AtomicTransport` from now on, in this process."""
    TRANSPORT_ALIASES["filesystem"] = f"{__name__}:AtomicTransport"
