"""The prefix scans the RDB shards and CEP stores read their records with (streams.rawdb)."""

from rocksdict import Options, Rdict

from streams.rawdb import scan, scan_keys


def test_scan_stays_under_its_prefix_from_its_start(tmp_path):
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    db = Rdict(str(tmp_path / "db"), opts)
    try:
        for key in (b"A1", b"B", b"B\x00", b"B1", b"B2", b"B3", b"C", b"Mx"):
            db.put(key, key + b"!")
        assert list(scan(db, b"B")) == [(k, k + b"!") for k in (b"B", b"B\x00", b"B1", b"B2", b"B3")]
        assert [k for k, _ in scan(db, b"B", b"B2")] == [b"B2", b"B3"]
        assert list(scan_keys(db, b"M")) == [b"Mx"]
        assert list(scan(db, b"Z")) == [] and list(scan_keys(db, b"0")) == []
    finally:
        db.close()
