"""The shared listening socket's load table (node/scp/balance.py): a busier listener process leaves a waiting
connection to a less busy sibling, never longer than the yield time."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.scp.balance import GONE, LoadTable, take_turn


@pytest.fixture
def listening() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A non-blocking listening socket with one connection waiting in its queue, and that client socket."""
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    client = socket.create_connection(server.getsockname())
    yield server, client
    client.close()
    server.close()


def test_counts_are_shared_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "load"
    first = LoadTable(path, 3, 0, create=True)
    second = LoadTable(path, 3, 2)
    second.opened()
    second.opened()
    first.opened()
    assert first.counts() == second.counts() == [1, 0, 2]
    second.closed()
    second.closed()
    second.closed()  # never below zero
    assert first.counts() == [1, 0, 0]
    assert first.busier_than_a_sibling()  # slot 1 holds nothing
    first.mark_gone(1)
    assert first.counts() == [1, GONE, 0] and first.busier_than_a_sibling()  # slot 2 holds nothing either
    second.opened()
    assert not first.busier_than_a_sibling()
    first.close()
    second.close()


def test_a_table_of_fewer_slots_is_refused(tmp_path: Path) -> None:
    LoadTable(tmp_path / "load", 2, 0, create=True).close()
    with pytest.raises(ValueError, match="fewer than 3 slots"):
        LoadTable(tmp_path / "load", 3, 2)
    with pytest.raises(ValueError, match="outside"):
        LoadTable(tmp_path / "load", 2, 2)


def test_the_least_busy_process_accepts_at_once(tmp_path: Path,
                                                listening: tuple[socket.socket, socket.socket]) -> None:
    server, _ = listening
    table = LoadTable(tmp_path / "load", 2, 0, create=True)
    sibling = LoadTable(tmp_path / "load", 2, 1)
    sibling.opened()
    started = time.monotonic()
    assert take_turn(table, server, yield_s=5.0)
    assert time.monotonic() - started < 1.0
    table.opened()  # equal loads: no one waits
    assert take_turn(table, server, yield_s=5.0)
    assert time.monotonic() - started < 1.0


def test_a_busier_process_leaves_the_connection_to_an_idle_sibling(
    tmp_path: Path, listening: tuple[socket.socket, socket.socket],
) -> None:
    server, _ = listening
    table = LoadTable(tmp_path / "load", 2, 0, create=True)
    table.opened()

    def sibling_accepts() -> None:
        time.sleep(0.1)
        conn, _ = server.accept()
        conn.close()

    thread = threading.Thread(target=sibling_accepts)
    thread.start()
    started = time.monotonic()
    assert not take_turn(table, server, yield_s=5.0)  # the sibling took it: nothing to accept here
    assert 0.05 < time.monotonic() - started < 2.0
    thread.join()


def test_a_busier_process_accepts_when_no_sibling_does(tmp_path: Path,
                                                      listening: tuple[socket.socket, socket.socket]) -> None:
    server, _ = listening
    table = LoadTable(tmp_path / "load", 2, 0, create=True)
    table.opened()
    started = time.monotonic()
    assert take_turn(table, server, yield_s=0.2)  # the idle sibling is stuck: the connection is not left waiting
    assert 0.2 <= time.monotonic() - started < 2.0
    table.mark_gone(1)  # a sibling that exited is not waited for
    started = time.monotonic()
    assert take_turn(table, server, yield_s=5.0)
    assert time.monotonic() - started < 1.0


def test_a_closed_table_ignores_late_updates(tmp_path: Path) -> None:
    """A connection thread still winding down after the listener stopped must not fail on the unmapped table."""
    table = LoadTable(tmp_path / "load", 2, 0, create=True)
    table.opened()
    table.close()
    table.closed()
    table.opened()
    table.mark_gone(1)
    table.close()
