"""The embedded broker's messages appear whole (a consumer never sees a file that is still being written), and its
wait for a message ends when the worker is asked to stop."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
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


def _drain(connection: Connection, timeout: float) -> float:
    """Seconds one ``drain_events`` waited before it raised its timeout."""
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        connection.drain_events(timeout=timeout)
    return time.monotonic() - started


def test_the_wait_for_a_message_ends_when_the_worker_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Old code: Celery's loop for this transport waited 2 s for a message before it looked for a stop, and once
    more after it; an idle ``ainode serve`` worker spent up to 4 s there and was killed at its stop timeout."""
    from celery.worker import state

    config = embedded_broker(tmp_path / "broker")
    with Connection(config.url, transport_options=config.transport_options) as connection:
        queue = connection.SimpleQueue("stopping")  # kombu keeps bindings per process: not the first test's queue
        assert _drain(connection, 0.6) >= 0.6  # no stop asked: the whole timeout, as kombu waits
        monkeypatch.setattr(state, "should_stop", 0)  # a warm shutdown (exit status 0) was asked
        assert _drain(connection, 5.0) < 1.0
        monkeypatch.setattr(state, "should_stop", None)
        monkeypatch.setattr(state, "should_terminate", 1)  # a cold one
        assert _drain(connection, 5.0) < 1.0
        monkeypatch.setattr(state, "should_terminate", None)
        queue.put({"study": "1.2.3"})  # a message still comes as soon as it is there
        started = time.monotonic()
        message = queue.get(timeout=5)
        assert message.payload == {"study": "1.2.3"} and time.monotonic() - started < 1.0
        message.ack()
        queue.close()
