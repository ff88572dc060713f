"""``seq``: a row's place in the log, the column that gives kdb+'s order to equal time stamps.

Ticks often share a time stamp. kdb+ breaks such ties by publish order: ``aj``
takes the last quote at or before a trade's time in the order the quotes were
published, ``first``/``last`` (a bar's open and close) follow it too. The log
holds that order; SQL does not, unless it is a column. So every reader of the
log that keeps rows (the RDB, the PDB and its HDB files, a backfill) adds

    seq = offset << 20 | index

``offset`` the Kafka offset of the row's message in its partition, ``index``
the row's position in that message (0 for a zero-latency row; its place in
the block for a batch). It is the same number for every reader, replica,
restart and replay, with no state: it depends only on where the row sits in
the log. A sym lives in one partition, so ``seq`` orders each sym's rows as
they were published, across days too; between syms of different partitions
it means nothing (nor does kdb+'s order there matter to any query: joins and
bars are per sym).

Room: 20 bits of index (``ingest.validate`` refuses the rows of a message
past its 1,048,576th, the same for every reader; the publisher's blocks hold
``max_block_rows``, 5,000 by default, and a message is at most 8 MiB), 43 bits
of offset: 8.8 trillion messages in a partition, some 280 years at a thousand
messages a second in each, a year at 280,000 (zero-latency mode at that rate
for that long would need a new topic).

The column is not in the Avro records on the wire (the schema registry and
``schemas/*.avsc`` describe what publishers send); it is added by the readers,
like kdb+'s virtual column ``i``, and ``SELECT *`` does not show it unless the
statement names it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

SEQ = "seq"
INDEX_BITS = 20
MAX_MESSAGE_ROWS = 1 << INDEX_BITS  # rows of one message that can be numbered
MAX_OFFSET = (1 << (63 - INDEX_BITS)) - 1


def seq_of(offset: int, index: int) -> int:
    """The ``seq`` of row ``index`` of the message at ``offset``."""
    return (offset << INDEX_BITS) | index


def offset_of(seq: int) -> int:
    """The Kafka offset of the message a row came in (``tickplant replay --from-offset``)."""
    return seq >> INDEX_BITS


def number(rows: list[dict[str, Any]], offset: int, kept: list[int] | None = None) -> None:
    """Give each row of one message its ``seq``, in place; ``kept``: the rows' indices in the
    message when some were refused (the refused keep their numbers, so a row's ``seq`` does
    not depend on which of its neighbours a reader kept)."""
    if offset > MAX_OFFSET:  # never silently wrapped: rows out of order would answer wrongly
        raise OverflowError(f"offset {offset} is past what seq numbers ({MAX_OFFSET}): "
                            f"the partition needs a new topic")
    base = offset << INDEX_BITS  # its low bits are 0: base + i is base | i
    if kept is None:
        for row, seq in zip(rows, range(base, base + len(rows))):  # noqa: B905 - equal lengths
            row[SEQ] = seq
    else:
        for i, row in zip(kept, rows, strict=True):
            row[SEQ] = base + i


def seq_array(offset: int, kept: int | np.ndarray) -> np.ndarray:
    """``number`` for a decoder that makes Arrow columns, not row dicts: the ``seq`` of the
    first ``kept`` rows of the message at ``offset``, or of the rows at indices ``kept``."""
    if offset > MAX_OFFSET:
        raise OverflowError(f"offset {offset} is past what seq numbers ({MAX_OFFSET})")
    index = np.arange(kept, dtype=np.int64) if isinstance(kept, int) else np.asarray(kept, np.int64)
    return (np.int64(offset) << INDEX_BITS) | index


def seqs_of_offsets(offsets: ArrayLike) -> np.ndarray:
    """``seq`` for rows known only by their message's offset, in log order (a message's rows
    together): the index is the row's rank among its message's rows. Exact unless some rows
    of a message were refused; for data kept before ``seq`` existed (the PDB's spill)."""
    offsets = np.asarray(offsets, np.int64)
    n = len(offsets)
    if n == 0:
        return np.empty(0, np.int64)
    starts = np.flatnonzero(np.r_[True, offsets[1:] != offsets[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, n]))
    return (offsets << INDEX_BITS) | (np.arange(n, dtype=np.int64) - first)
