"""kombu's filesystem transport with each message written whole before it can be seen.

kombu 5's ``filesystem`` channel creates a message file (``open(name, "wb")``), then locks and writes it; a
consumer listing the folder in between (the embedded broker polls every 50 ms) moves and reads the empty file,
gets ``JSONDecodeError`` and Celery stops the worker ("Unrecoverable error"). Here a message is written under a
name the consumers skip (``.<name>.part``: not ``<...>.<queue>.msg``) and renamed into place, which is atomic.
:func:`install` makes ``filesystem://`` URLs use this transport in the calling process.
"""

from __future__ import annotations

import contextlib
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


class AtomicTransport(filesystem.Transport):
    Channel = AtomicChannel


def install() -> None:
    """``filesystem://`` means :class:`AtomicTransport` from now on, in this process."""
    TRANSPORT_ALIASES["filesystem"] = f"{__name__}:AtomicTransport"
