"""A CSV file that starts with UTF-8's byte order mark (Excel's export) is read like any other
(issue 20: it was refused whole, its first column name carrying the mark)."""

from __future__ import annotations

from ingest.feeds.csvfeed import CsvRows


def test_a_bom_before_the_header_is_not_part_of_it(catalog, tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbftime,sym,price,size,exchange\r\n7,AAPL,1.25,5,N\r\n")
    rows = [(n, row, reason) for n, row, reason, _ in CsvRows(path, catalog["trade"])]
    assert rows == [(2, {"time": 7, "sym": "AAPL", "price": 1.25, "size": 5, "exchange": "N", "cond": ""}, "")]


def test_a_bom_later_in_the_file_is_still_data(catalog, tmp_path):
    path = tmp_path / "odd.csv"
    path.write_bytes(b"time,sym,price,size,exchange\n7,\xef\xbb\xbfAAPL,1.25,5,N\n")
    (row,) = [row for _, row, _, _ in CsvRows(path, catalog["trade"])]
    assert row["sym"] == "\ufeffAAPL"  # kept as sent; the log's readers refuse it (not printable)
