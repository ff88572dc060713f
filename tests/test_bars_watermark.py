"""The bars' watermark against one bad clock (issue 20): a trade far ahead of the partition's
watermark does not close its bars until another sym confirms it, and the end of day folds
what is held and starts the next day without a watermark."""

from __future__ import annotations

from streams.cep.bars import LEAD_NS, NO_WATERMARK, BarBook

S = 10**9
W = 60 * S
T0 = 1_795_300_000 * S - (1_795_300_000 * S) % W  # a bar boundary


def trade(sym: str, t: int, price: float = 1.0) -> dict:
    return {"sym": sym, "time": t, "price": price, "size": 1}


def test_one_trade_far_ahead_is_held_and_bars_go_on():
    book = BarBook(W, S)
    assert book.add([trade("A", T0 + 1), trade("B", T0 + 2)], "d") == []
    assert book.add([trade("A", T0 + 5 * LEAD_NS, 99.0)], "d") == []  # a bad clock: held
    assert book.wm == T0 + 2 and len(book.held) == 1
    closed = book.add([trade("B", T0 + W + 2 * S)], "d")  # the market goes on: bars close as before
    assert [(b["sym"], b["closed_by"]) for b in closed] == [("A", "watermark"), ("B", "watermark")]
    assert not book.late
    # the state round trip keeps what is held
    book = BarBook(W, S, book.state())
    assert len(book.held) == 1
    eod = book.close_all("eod", "d")
    assert [(b["sym"], b["time"], b["close"], b["closed_by"]) for b in eod] == [
        ("B", T0 + W, 1.0, "eod"), ("A", T0 + 5 * LEAD_NS - (T0 + 5 * LEAD_NS) % W, 99.0, "eod")]
    assert book.wm == NO_WATERMARK and not book.held and not book.open


def test_two_syms_far_ahead_confirm_a_jump():
    book = BarBook(W, S)
    book.add([trade("A", T0 + 1)], "d")
    later = T0 + 2 * LEAD_NS
    assert book.add([trade("B", later)], "d") == []
    closed = book.add([trade("C", later + 1)], "d")  # a second sym: the market really moved
    assert [(b["sym"], b["closed_by"]) for b in closed] == [("A", "watermark")]
    assert book.wm == later + 1 and not book.held and set(book.open) == {"B", "C"}


def test_the_first_trade_of_a_day_is_never_held():
    book = BarBook(W, S)
    book.add([trade("A", T0 + 1)], "d")
    book.close_all("eod", "d")
    book.add([trade("A", T0 + 10 * LEAD_NS)], "d2")  # the next day: no watermark to be ahead of
    assert not book.held and book.wm == T0 + 10 * LEAD_NS
