"""The DUL loop's wake-up: a put on the send queue makes the wait end at once; a closed one fails quietly."""

from __future__ import annotations

import select

from node.scp.wake import Wakeup, WakingQueue


def _readable(wakeup: Wakeup) -> bool:
    return bool(select.select([wakeup.reader], [], [], 0)[0])


def test_a_put_wakes_the_reader_until_drained() -> None:
    wakeup = Wakeup()
    sending = WakingQueue(wakeup)
    assert not _readable(wakeup)
    sending.put("P-DATA")
    sending.put("A-RELEASE")
    assert _readable(wakeup)
    wakeup.drain()
    assert not _readable(wakeup)
    assert [sending.get_nowait(), sending.get_nowait()] == ["P-DATA", "A-RELEASE"]
    wakeup.close()
    sending.put("A-ABORT")  # after the association's socket closed: queued, no error
    assert sending.get_nowait() == "A-ABORT"
