"""The side-by-side benchmark with QuestDB (``python -m bench peer``), end to end on a small day:
both sides fed, asked every question today and as history, and their answers agree."""

from __future__ import annotations

import argparse

import pytest

from bench.peer import AnswerMismatch, Question, compare, generate_day, questions


def test_peer_bench_quick_answers_agree(settings):
    from bench.peer import collect

    report = collect(settings, argparse.Namespace(rows=10_000, quick=True, repeat=1))
    labels = [r.metric for r in report.results]
    assert labels[0].startswith("DataFrame -> queryable")
    asked = questions("AAPL")
    assert len(labels) == 1 + len(asked) + sum(q.history for q in asked)  # every question, today and history
    assert all(r.value > 0 and r.baseline and r.baseline > 0 for r in report.results)


def test_the_day_has_ties_and_every_trade_a_quote_before_it():
    trades, quotes = generate_day(5000)
    assert len(trades) == 5000 and len(quotes) == 10_000
    assert trades["time"].duplicated().sum() > 500 and quotes["time"].duplicated().sum() > 1000
    first = quotes.groupby("sym")["time"].min()
    assert (trades["time"].to_numpy() >= first[trades["sym"]].to_numpy()).all()
    again, _ = generate_day(5000)
    assert again.equals(trades)  # deterministic


def test_compare_fails_loudly_on_a_disagreement():
    q = Question("count by sym", "", "", key=("sym",), exact=("n",), approx=("vwap",), tolerance=1e-6)
    plant = [{"sym": "A", "n": 2, "vwap": 10.0}, {"sym": "B", "n": 1, "vwap": 20.0}]
    compare(q, plant, list(reversed(plant)), "today")  # row order does not matter with a key
    with pytest.raises(AnswerMismatch, match="column n differs"):
        compare(q, plant, [{**plant[0], "n": 3}, plant[1]], "today")
    with pytest.raises(AnswerMismatch, match="sum of vwap"):
        compare(q, plant, [{**plant[0], "vwap": 10.1}, plant[1]], "today")
    with pytest.raises(AnswerMismatch, match="2 rows, QuestDB 1"):
        compare(q, plant, plant[:1], "today")
    times = Question("last", "", "", key=("sym",), exact=("ts",))
    compare(times, [{"sym": "A", "ts": "2026-11-22T09:30:00.000000001"}],
            [{"sym": "A", "ts": "2026-11-22T09:30:00.000000001Z"}], "today")
