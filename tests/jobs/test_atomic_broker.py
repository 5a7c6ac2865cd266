"""The embedded broker's messages appear whole: a consumer never sees a file that is still being written."""

from __future__ import annotations

import os
from pathlib import Path

from kombu import Connection

from node.jobs.broker import embedded_broker


def test_a_message_file_appears_only_whole(tmp_path: Path, monkeypatch) -> None:
    """Old code: kombu created ``<...>.<queue>.msg`` empty and wrote into it; a consumer polling then read an empty
    file (JSONDecodeError) and Celery stopped the worker."""
    config = embedded_broker(tmp_path / "broker")
    queue_folder = Path(config.transport_options["data_folder_in"])
    seen: list[tuple[str, int]] = []
    replace = os.replace

    def watched(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        seen.append((Path(target).name, Path(source).stat().st_size))
        assert not any(p.name.endswith(".msg") for p in queue_folder.iterdir())  # nothing visible before
        replace(source, target)

    monkeypatch.setattr(os, "replace", watched)
    with Connection(config.url, transport_options=config.transport_options) as connection:
        queue = connection.SimpleQueue("jobs")
        queue.put({"study": "1.2.3"})
        assert len(seen) == 1 and seen[0][0].endswith(".jobs.msg") and seen[0][1] > 0
        message = queue.get(timeout=5)
        assert message.payload == {"study": "1.2.3"}
        message.ack()
        queue.close()
    assert [p.name for p in queue_folder.iterdir() if p.name.endswith(".part")] == []
