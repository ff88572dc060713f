"""The two small buffers every live path goes through, against plain-Python models.

The subscription outbox merges waiting updates of one subscription into one message (its last position);
the RDB's latency sample is a ring buffer read as percentiles. Both are exercised
end to end elsewhere, where a mistake (a row merged into another source's update,
a percentile over stale slots) would show only as a rare wrong number.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from gateway.outbox import MERGE_ROWS, Outbox, dumps
from streams.latency import LatencySample

# a message: an update of a subscription with some rows, or a control message (no rows);
# a subscription is a source and its syms; one read from the log stamps its updates with
# the position they bring the subscriber to (an engine's live feed, bars here, has none)
SUBSCRIPTIONS = [("trade", ()), ("trade", ("AAPL",)), ("quote", ()), ("bars", ())]
messages = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(SUBSCRIPTIONS), st.integers(1, 2 * MERGE_ROWS // 3)),
        st.tuples(st.just(("", ())), st.just(0)),
    ),
    max_size=30,
)


def drain(outbox: Outbox) -> list[str]:
    async def run() -> list[str]:
        outbox.close()
        out = []
        while (text := await outbox.get()) is not None:
            out.append(text)
        return out

    return asyncio.run(run())


@hsettings(max_examples=60, deadline=None)
@given(messages)
def test_the_outbox_merges_only_adjacent_updates_of_one_subscription_and_keeps_every_row(sent):
    outbox = Outbox(limit=10**9)
    expected: list[tuple[Any, list[int]]] = []  # what the client must see, message by message, unmerged
    counter = 0
    for (source, syms), n in sent:
        if n:
            rows = list(range(counter, counter + n))
            counter += n
            message: dict[str, Any] = {"type": "update", "source": source, "syms": list(syms)}
            if source != "bars":
                message["position"] = {"0": counter, "3": 7}  # where its last row leaves the reader
            outbox.put(dumps({**message, "rows": rows}), n)
            expected.append(((source, syms), rows))
        else:
            outbox.put(dumps({"type": "heartbeat"}))
            expected.append(("", []))
    assert outbox.queued_rows == counter

    got = [json.loads(text) for text in drain(outbox)]
    assert outbox.queued_rows == 0
    flat = [("", []) if m["type"] == "heartbeat" else ((m["source"], tuple(m["syms"])), m["rows"]) for m in got]
    for m in got:  # a merged update's position is its last row's
        if m["type"] == "update" and m["source"] != "bars":
            assert m["position"] == {"0": m["rows"][-1] + 1, "3": 7}
    # the rule, as a model: an update takes in the updates of its source right behind it
    # while the rows stay within MERGE_ROWS; anything else goes alone, in order
    model: list[tuple[str, list[int]]] = []
    i = 0
    while i < len(expected):
        source, rows = expected[i]
        i += 1
        while source and i < len(expected) and expected[i][0] == source \
                and len(rows) + len(expected[i][1]) <= MERGE_ROWS:
            rows = rows + expected[i][1]
            i += 1
        model.append((source, rows))
    assert flat == model
    assert [r for _, rows in flat for r in rows] == list(range(counter))  # every row once, in order
    # and nothing that could have been merged was left apart
    for a, b in zip(flat, flat[1:], strict=False):
        if a[0] and a[0] == b[0]:
            assert len(a[1]) + len(b[1]) > MERGE_ROWS, (a[0], len(a[1]), len(b[1]))


@hsettings(max_examples=100, deadline=None)
@given(st.integers(1, 64), st.lists(st.lists(st.integers(0, 10**12), max_size=100), max_size=20),
       st.integers(1, 80))
def test_the_latency_sample_holds_the_last_values_and_reports_their_percentiles(size, adds, recent):
    sample = LatencySample(size=size)
    everything: list[int] = []
    for values in adds:
        sample.add(np.array(values, np.int64))
        everything.extend(values)
    held = everything[-size:]
    report = sample.percentiles()
    if not held:
        assert report is None
        return
    assert report is not None and report["n"] == len(held)
    assert report["max"] == round(max(held) / 1e6, 3)
    assert report["p50"] == round(float(np.percentile(held, 50)) / 1e6, 3)
    last = held[-recent:]
    recent_report = sample.percentiles(recent)
    assert recent_report is not None and recent_report["n"] == len(last)
    assert recent_report["p99"] == round(float(np.percentile(last, 99)) / 1e6, 3)
