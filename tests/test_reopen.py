"""The retry book of partitions whose open failed (streams/reopen.py)."""

from __future__ import annotations

import time

from streams.reopen import Reopen


def test_failed_opens_are_due_at_once_then_after_a_doubling_wait_and_forgotten_when_revoked():
    book: Reopen[int] = Reopen(0.1, 0.25)
    assert book.due() == []  # nothing failed
    book.failed(3, "locked")
    book.failed(1, "broker away")
    assert book.due() == [1, 3] and book.why == {1: "broker away", 3: "locked"}
    book.opened(1)
    book.tried()  # 3 still unopened: next in 0.2 s (doubled)
    assert book.due() == []
    time.sleep(0.12)
    assert book.due() == []  # not after the first wait: it doubled
    time.sleep(0.12)
    assert book.due() == [3]
    book.tried()  # capped at 0.25 s
    time.sleep(0.27)
    assert book.due() == [3]
    book.keep({1, 2})  # 3 revoked: forgotten
    assert book.why == {} and book.due() == []
    book.tried()  # nothing left: back to the first wait
    book.failed(2, "locked")
    time.sleep(0.11)
    assert book.due() == [2]
