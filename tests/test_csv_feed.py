"""The CSV feed: every good row published, every bad row reported, dead-lettered and counted."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from ingest.deadletter import DeadLetters, read_deadletters
from ingest.feeds.csvfeed import CsvFeedError, CsvRows, feed_csv, parse_time
from ingest.publisher import Tickerplant
from ingest.replay import replay_rows

HEADER = "time,sym,price,size,exchange\n"


def _write(tmp_path: Path, text: str | bytes, name: str = "trades.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_parse_time_forms():
    assert parse_time("1795313670723979425") == 1795313670723979425
    assert parse_time("2026-11-22T10:00:00Z") == 1795341600 * 10**9
    assert parse_time("2026-11-22T10:00:00.123456789Z") == 1795341600 * 10**9 + 123456789
    assert parse_time("2026-11-22 11:00:00.5+01:00") == 1795341600 * 10**9 + 500_000_000
    assert parse_time("2026-11-22T10:00:00") == 1795341600 * 10**9  # no zone: UTC


def test_bad_rows_are_reported_with_line_and_reason_and_nothing_is_lost(settings, catalog, tmp_path):
    huge = "A" * (2 << 20)
    text = (
        HEADER
        + "2026-11-22T10:00:00Z,AAPL,10.5,100,N\n"        # 2 good
        + "2026-11-22T10:00:01Z,MSFT,abc,100,N\n"         # 3 malformed number
        + "2026-11-22T10:00:02Z,IBM,10.5,1.5,N\n"         # 4 wrong type (size is a long)
        + "2026-11-22T10:00:03Z,IBM,10.5\n"               # 5 missing fields
        + "yesterday,IBM,10.5,100,N\n"                    # 6 bad time
        + f"2026-11-22T10:00:04Z,{huge},1,1,N\n"          # 7 huge line
        + "\n"                                            # 8 blank: skipped, not a row
        + "2026-11-22T10:00:05Z,,10.5,100,N\n"            # 9 empty sym
        + "2026-11-22T10:00:06Z,IBM,10.5,99999999999999999999,N\n"  # 10 out of range
        + "1795313670723979425,IBM,2.5,10,Q\n"            # 11 good
    )
    path = _write(tmp_path, text)
    with Tickerplant(settings, catalog, source="csv-test") as tp:
        report = feed_csv(tp.publish_rows, tp.deadletters, catalog["trade"], path)
        tp.flush()
    assert report.published == 2
    assert report.rejected == 7
    lines = dict(report.errors)
    assert sorted(lines) == [3, 4, 5, 6, 7, 9, 10]
    assert "price: 'abc' is not a valid double" in lines[3]
    assert "size: '1.5' is not a valid long" in lines[4]
    assert "expected 5 fields, found 3" in lines[5]
    assert "neither integer nanoseconds nor an ISO 8601" in lines[6]
    assert "over the 1048576-byte limit" in lines[7]
    assert "sym is empty" in lines[9]
    assert "out of range for long" in lines[10]

    letters = read_deadletters(settings)
    assert [d["where"] for d in letters] == [f"{path}:{n}" for n in (3, 4, 5, 6, 7, 9, 10)]
    assert letters[0]["payload"] == "2026-11-22T10:00:01Z,MSFT,abc,100,N"
    assert all(d["source"] == "csv-test" and d["table"] == "trade" for d in letters)

    got = sorted(replay_rows(settings, "trade", catalog=catalog), key=lambda r: r["time"])
    assert got == [
        {"time": 1795313670723979425, "sym": "IBM", "price": 2.5, "size": 10, "exchange": "Q", "cond": ""},
        {"time": 1795341600 * 10**9, "sym": "AAPL", "price": 10.5, "size": 100, "exchange": "N", "cond": ""},
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "file is empty"),
        ("\n\n", "file is empty"),
        ("time,sym,price\n1,A,1.0\n", "header lacks column(s) size, exchange"),
        ("time,sym,price,size,exchange,colour\n", "colour are not in table trade"),
        ("time,sym,sym,price,size,exchange\n", "duplicate column(s) sym"),
    ],
)
def test_file_level_errors(catalog, tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(CsvFeedError, match=message.replace("(", r"\(").replace(")", r"\)")):
        list(CsvRows(path, catalog["trade"]))


def test_missing_file(catalog, tmp_path):
    with pytest.raises(CsvFeedError, match="no such file"):
        CsvRows(tmp_path / "nope.csv", catalog["trade"])


def test_columns_in_any_order_and_defaults_filled(catalog, tmp_path):
    path = _write(tmp_path, "sym,exchange,size,price,time\nAAPL,N,5,1.25,7\n")
    rows = [row for _, row, _, _ in CsvRows(path, catalog["trade"])]
    assert rows == [{"time": 7, "sym": "AAPL", "price": 1.25, "size": 5, "exchange": "N", "cond": ""}]


def test_not_utf8_and_unbalanced_quotes(catalog, tmp_path):
    path = _write(tmp_path, HEADER.encode() + b"1,AAPL,1.0,1,\xff\xfe\n" + b'2,"AAPL,1.0,1,N\n3,IBM,1.0,1,N\n')
    out = [(n, row, reason) for n, row, reason, _ in CsvRows(path, catalog["trade"])]
    assert out[0][0] == 2 and out[0][1] is None and "not UTF-8" in out[0][2]
    assert out[1][0] == 3 and out[1][1] is None
    assert out[2] == (4, {"time": 3, "sym": "IBM", "price": 1.0, "size": 1, "exchange": "N", "cond": ""}, "")


class _Collect:
    """A DeadLetters stand-in for the fuzz test: the fuzzed parser's bookkeeping, not Kafka's."""

    def __init__(self) -> None:
        self.letters: list[str] = []

    def send(self, table: str, reason: str, payload: object, where: str = "") -> None:
        self.letters.append(where)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=60), max_size=30))
def test_fuzz_every_line_is_a_row_or_a_rejection(catalog, tmp_path, lines):
    """Whatever the bytes, each non-blank data line is published or rejected: never both, never neither."""
    text = HEADER + "\n".join(line.replace("\r", "").replace("\n", "") for line in lines) + "\n"
    path = _write(tmp_path, text, "fuzz.csv")
    published: list[dict] = []
    dead = _Collect()
    report = feed_csv(lambda _t, rows: published.extend(rows), dead, catalog["trade"], path)  # type: ignore[arg-type]
    data_lines = [ln for ln in text.split("\n")[1:] if ln.strip()]
    assert report.published == len(published)
    assert report.published + report.rejected == len(data_lines)
    assert len(dead.letters) == report.rejected
    assert all(isinstance(r["price"], float) and isinstance(r["size"], int) and r["sym"] for r in published)


def test_deadletters_class_is_what_the_feed_uses():
    # the fuzz stand-in must keep DeadLetters' signature, or the fuzz test proves nothing
    import inspect

    assert list(inspect.signature(DeadLetters.send).parameters) == ["self", "table", "reason", "payload", "where"]
