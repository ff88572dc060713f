"""The batch loader: CSV and Parquet objects into the log exactly once, bad rows dead-lettered with their place.

One broker and one topic prefix for the module; each test its own files and syms.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import signal
import subprocess
import sys
import threading
import uuid
import zoneinfo
from collections import Counter
from pathlib import Path
from urllib.parse import quote_plus

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from procs import Worker, plant_env, wait_until
from s3server import s3  # noqa: F401 - the SeaweedFS fixture

from ingest.batchload import BatchLoader
from ingest.deadletter import read_deadletters
from ingest.eod import open_first_day
from ingest.framing import control_of
from ingest.loadlog import LoadIndex, read_loads
from ingest.logread import make_consumer, read_ranges, watermarks
from ingest.objects import Store
from ingest.publisher import Tickerplant
from ingest.replay import replay_arrow
from ingest.schema_topic import make_decoder
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames

TODAY = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
BASE_NS = int(TODAY.timestamp()) * 10**9
# the killed loader and the restarted watcher: a transaction per CHUNK rows, many of them, so that
# the kill lands mid-file
KILL_ROWS, WATCH_ROWS, CHUNK = 24_000, 16_000, 150
VENDOR = {"ts": "time", "ticker": "sym", "px": "price", "qty": "size", "venue": "exchange"}


@pytest.fixture(scope="module")
def plant(broker, catalog, tmp_path_factory):
    settings = broker.settings.replace(
        topic_prefix=f"b{uuid.uuid4().hex[:8]}.", data_dir=tmp_path_factory.mktemp("batch"),
        ingest={"chunk_rows": 1000, "transaction_timeout_ms": 10_000, "poll_seconds": 0.2, "sources": {
            "vendor": {"match": "vendor_*.csv", "table": "trade", "columns": VENDOR, "drop": ["trade_id"],
                       "time_format": "%Y-%m-%d %H:%M:%S", "timezone": "America/New_York"},
            "vendor_pq": {"match": "vendor_*.parquet", "table": "trade", "columns": VENDOR},
            "eod": {"match": "*eod*.csv", "table": "trade"},
        }},
    )
    open_first_day(settings, catalog)  # today: the RDB's day
    return settings


def _rows(settings, sym_prefix: str) -> list[dict]:
    table = replay_arrow(settings, "trade")
    got = table.set_column(0, "time", table["time"].cast(pa.int64())).to_pylist()
    return [r for r in got if r["sym"].startswith(sym_prefix)]


def _committed_and_all(settings, sym_prefix: str) -> tuple[int, int]:
    """Rows of these syms in the trade topic read committed, and read uncommitted (aborted too)."""
    decoder = make_decoder(settings, SchemaCatalog.load(settings.schemas_dir))
    topic = TopicNames(settings.topic_prefix).table("trade")
    out = []
    for level in ("read_committed", "read_uncommitted"):
        consumer = make_consumer(settings, **{"isolation.level": level})
        n = 0
        try:
            for p in range(settings.partitions):
                _, high = watermarks(consumer, topic, p)
                for msg in read_ranges(consumer, topic, {p: (0, high)}):
                    if not control_of(msg.headers()):
                        n += sum(r["sym"].startswith(sym_prefix) for r in decoder.decode(msg.value())[1])
        finally:
            consumer.close()
        out.append(n)
    return out[0], out[1]


def _write_csv(path: Path, n: int, sym_prefix: str) -> Path:
    with open(path, "w") as f:
        f.write("time,sym,price,size,exchange\n")
        for i in range(n):
            f.write(f"{BASE_NS + i},{sym_prefix}{i % 7},{100 + i % 50}.25,{i},N\n")
    return path


def test_bad_rows_are_dead_lettered_with_their_place_and_every_good_row_published(plant, tmp_path):
    path = tmp_path / "vendor_trades_1.csv"
    day = TODAY.strftime("%Y-%m-%d")
    lines = [
        "trade_id,ts,ticker,px,qty,venue",               # 1 header: vendor names, one column dropped
        f"1,{day} 09:30:00,VNDA,10.5,100,N",             # 2 good (New York time)
        f"2,{day} 09:30:01,VNDB,abc,100,N",              # 3 bad price
        f"3,{day} 09:30:02,VNDA,10.5,1.5,N",             # 4 size is not a whole number
        f"4,{day} 09:30:03,VNDA,10.5",                   # 5 too few fields
        "5,yesterday,VNDA,10.5,100,N",                  # 6 time does not match time_format
        "",                                              # 7 blank: not a row
        f"6,{day} 09:30:05,,10.5,100,N",                 # 8 empty sym
        f"7,{day} 09:30:06,VNDC,nan,100,N",              # 9 NaN refused
        f"8,{day} 09:30:07,VNDC,11.25,200,Q,extra",      # 10 too many fields
        f"9,{day} 09:30:08,VNDB,12,300,",                # 11 good: empty exchange is ""
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode())
    result = BatchLoader(plant).load(str(path))
    record = result.record
    assert (record.rows, record.rejected, record.state) == (2, 7, "done")
    assert [r.where for r in result.rejected] == [f"{path}:{n}" for n in (3, 4, 5, 6, 8, 9, 10)]
    assert record.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    rows = sorted(_rows(plant, "VND"), key=lambda r: r["time"])
    ny = zoneinfo.ZoneInfo("America/New_York")
    open_ns = int(dt.datetime.fromisoformat(f"{day}T09:30:00").replace(tzinfo=ny).timestamp()) * 10**9
    assert [(r["time"], r["sym"], r["price"], r["size"], r["exchange"]) for r in rows] == [
        (open_ns, "VNDA", 10.5, 100, "N"), (open_ns + 8 * 10**9, "VNDB", 12.0, 300, "")]
    letters = {d["where"]: d["reason"] for d in read_deadletters(plant) if d["where"].startswith(str(path))}
    assert sorted(int(w.rsplit(":", 1)[1]) for w in letters) == [3, 4, 5, 6, 8, 9, 10]
    assert "price: 'abc' is not a valid double" in letters[f"{path}:3"]
    assert "size: '1.5' is not a valid long" in letters[f"{path}:4"]
    assert "expected 6 fields, found 4" in letters[f"{path}:5"]
    assert "does not match time_format" in letters[f"{path}:6"]
    assert "sym is empty" in letters[f"{path}:8"]
    assert "NaN" in letters[f"{path}:9"]
    assert "expected 6 fields, found 7" in letters[f"{path}:10"]
    listed = {r.url: r for r in read_loads(plant)}
    assert listed[str(path)].rows == 2 and listed[str(path)].checksum == record.checksum


def test_parquet_loads_once_whatever_the_deliveries(plant, tmp_path):
    n = 2500
    path = tmp_path / "vendor_book_1.parquet"
    times = pa.array([BASE_NS + i for i in range(n)], pa.timestamp("ns", "UTC"))
    prices = [float("nan") if i == 1234 else 50.0 + i % 10 for i in range(n)]
    pq.write_table(pa.table({"ts": times, "ticker": [f"PQ{i % 5}" for i in range(n)], "px": prices,
                             "qty": pa.array(range(n), pa.int64()), "venue": ["P"] * n}), path, row_group_size=700)
    loader = BatchLoader(plant)
    first = loader.load(str(path))
    again = BatchLoader(plant).load(str(path))  # a second loader: the record on the topic, not memory
    assert (first.record.rows, first.record.rejected, first.record.chunks) == (n - 1, 1, 3)
    assert again.already and again.published == 0
    rows = _rows(plant, "PQ")
    assert sorted(r["size"] for r in rows) == [i for i in range(n) if i != 1234]
    assert {r["time"] - BASE_NS for r in rows} == {i for i in range(n) if i != 1234}
    letters = [d for d in read_deadletters(plant) if d["where"].startswith(str(path))]
    assert [d["where"] for d in letters] == [f"{path}#row=1235"]


def _loader_env(settings, **ingest) -> dict[str, str]:
    env = plant_env(settings)
    env["TICKPLANT_INGEST"] = json.dumps({**settings.ingest, **ingest})
    return env


def _once(settings, sym_prefix: str, n: int) -> None:
    """Every row of the file (size = its row number) in the log exactly once, read committed."""
    sizes = Counter(r["size"] for r in _rows(settings, sym_prefix))
    assert len(sizes) == n and set(sizes.values()) == {1}, f"{len(sizes)} distinct of {n}, most {sizes.most_common(2)}"
    assert _committed_and_all(settings, sym_prefix)[0] == n


def _wait_chunks(settings, identity: str, chunks: int, proc: subprocess.Popen, log: Path) -> None:
    index = LoadIndex(settings)

    def far_enough() -> bool:
        assert proc.poll() is None, f"the loader exited early:\n{log.read_text()[-2000:]}"
        record = index.catch_up().get(identity)
        return record is not None and record.chunks >= chunks

    wait_until(far_enough, 60, f"{chunks} chunks committed", lambda: log.read_text()[-2000:])


def test_kill9_mid_load_then_rerun_publishes_every_row_once(plant, tmp_path):
    n = KILL_ROWS
    path = _write_csv(tmp_path / "big_1.csv", n, "KIL")
    identity = Store(plant).resolve(str(path)).identity
    log = tmp_path / "loader.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tickplant", "ingest", "load", str(path), "--table", "trade"],
                                env=_loader_env(plant, chunk_rows=CHUNK), stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_chunks(plant, identity, 3, proc, log)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    # the rerun fences the dead loader, aborts its open transaction, resumes after its last commit
    result = BatchLoader(plant).load(str(path), table="trade")
    assert result.resumed_at >= 3 and not result.already
    assert result.record.done and result.record.rows == n and result.record.rejected == 0
    assert result.published == n - result.resumed_at * CHUNK > 0
    assert result.record.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    _once(plant, "KIL", n)


def test_watcher_restarted_mid_file_loads_it_once(plant, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    n = WATCH_ROWS
    path = _write_csv(drop / "eod_trades_1.csv", n, "WAT")
    identity = Store(plant).resolve(str(path)).identity
    log = tmp_path / "watch.log"
    argv = [sys.executable, "-m", "tickplant", "ingest", "watch", str(drop)]
    with open(log, "ab") as out:
        first = subprocess.Popen(argv, env=_loader_env(plant, chunk_rows=CHUNK), stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_chunks(plant, identity, 2, first, log)
    finally:
        first.send_signal(signal.SIGTERM)  # a restart: the open chunk's transaction is aborted on the way out
        first.wait(30)
    stopped = LoadIndex(plant).catch_up()[identity]
    assert not stopped.done
    _write_csv(drop / "eod_trades_2.csv", 100, "WAU")  # and a file dropped while it was down
    with open(log, "ab") as out:
        second = subprocess.Popen(argv, env=_loader_env(plant, chunk_rows=CHUNK), stdout=out, stderr=subprocess.STDOUT)
    try:
        index = LoadIndex(plant)
        wait_until(lambda: sum(r.done for r in index.catch_up().values() if r.url.startswith(str(drop))) == 2,
                   60, "both files loaded", lambda: log.read_text()[-2000:])
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) in (0, 130), log.read_text()[-2000:]
    assert "resumed after chunk" in log.read_text()
    _once(plant, "WAT", n)
    _once(plant, "WAU", 100)


def test_readers_never_see_an_aborted_chunk(plant, catalog, tmp_path):
    """The RDB, replay and every reader of the log are read_committed: rows of an aborted
    transaction are in the log's bytes, never in anyone's answer."""
    rows = [{"time": BASE_NS + i, "sym": f"ABT{i % 3}", "price": 1.0, "size": i, "exchange": "N", "cond": ""}
            for i in range(500)]
    tp = Tickerplant(plant, catalog, mode="batch", transactional_id=f"{plant.topic_prefix}test-abort")
    tp.producer.init_transactions(30)
    tp.producer.begin_transaction()
    tp.publish_rows("trade", rows[:300])
    tp.send_waiting()
    tp.producer.flush(30)  # in the log, not committed
    tp.producer.abort_transaction(30)
    tp.producer.begin_transaction()
    tp.publish_rows("trade", rows[300:])
    tp.send_waiting()
    tp.producer.commit_transaction(30)
    assert _committed_and_all(plant, "ABT") == (200, 500)
    assert sorted(r["size"] for r in _rows(plant, "ABT")) == list(range(300, 500))
    rdb = Worker(plant, "rdb-batch", tmp_path).start()
    try:
        rdb.wait_serving()

        def rdb_rows(prefix: str) -> int:
            return sum(c for sym, c in rdb.client.count("trade").items() if sym.startswith(prefix))

        wait_until(lambda: rdb_rows("KIL") == KILL_ROWS and rdb_rows("ABT") == 200, 60,
                   "the RDB to hold the committed rows", rdb.log_tail)
        got = rdb.client.rows("trade", ["ABT0", "ABT1", "ABT2"]).column("size").to_pylist()
        assert sorted(got) == list(range(300, 500))
        assert rdb_rows("VND") == 2 and rdb_rows("WAT") == WATCH_ROWS
    finally:
        rdb.stop()


EVENT = """{"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
  "eventTime": "1970-01-01T00:00:00.000Z", "eventName": "ObjectCreated:Put",
  "userIdentity": {"principalId": "AIDAJDPLRKLG7UEXAMPLE"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
  "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810",
                       "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"},
  "s3": {"s3SchemaVersion": "1.0", "configurationId": "testConfigRule",
         "bucket": {"name": "BUCKET", "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                    "arn": "arn:aws:s3:::BUCKET"},
         "object": {"key": "KEY", "size": 1024, "eTag": "ETAG", "sequencer": "0055AED6DCD90281E5"}}}]}"""


def test_s3_event_loads_through_the_lambda_function_once(plant, s3, tmp_path, monkeypatch):  # noqa: F811
    """AWS's documented ObjectCreated:Put example (an unversioned bucket's: no versionId), with our
    bucket, a URL-encoded key and the object's ETag; delivered twice, as S3 may."""
    from tickplant.aws.lambda_files import s3_object_created

    settings = plant.replace(s3_endpoint=s3.endpoint)
    for name, value in _loader_env(settings).items():
        if name.startswith("TICKPLANT_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("TICKPLANT_S3_ENDPOINT", s3.endpoint)
    client = s3.client()
    n = 3000
    csv_key = "incoming/2026 drops/eod trades+1.csv"
    client.upload_file(str(_write_csv(tmp_path / "x.csv", n, "LAM")), s3.bucket, csv_key)
    pq_key = "incoming/vendor_book_2.parquet"
    pq.write_table(pa.table({"ts": pa.array([BASE_NS + i for i in range(500)], pa.int64()),
                             "ticker": ["LAQ"] * 500, "px": [1.5] * 500, "qty": list(range(500)),
                             "venue": ["S"] * 500}), tmp_path / "x.parquet", row_group_size=128)
    client.upload_file(str(tmp_path / "x.parquet"), s3.bucket, pq_key)
    records = []
    for key in (csv_key, pq_key):
        record = json.loads(EVENT)["Records"][0]
        record["s3"]["bucket"].update(name=s3.bucket, arn=f"arn:aws:s3:::{s3.bucket}")
        record["s3"]["object"].update(key=quote_plus(key, safe="/"),
                                      eTag=client.head_object(Bucket=s3.bucket, Key=key)["ETag"].strip('"'))
        records.append(record)
    event = {"Records": records}
    first = s3_object_created(json.loads(json.dumps(event)), None)
    assert [(o["object"], o["status"], o["rows"]) for o in first["objects"]] == [
        (f"s3://{s3.bucket}/{csv_key}", "loaded", n), (f"s3://{s3.bucket}/{pq_key}", "loaded", 500)]
    again = s3_object_created(event, None)
    assert [o["status"] for o in again["objects"]] == ["already loaded"] * 2 and again["rows"] == 0
    _once(plant, "LAM", n)
    _once(plant, "LAQ", 500)
    listed = {r.url: r for r in read_loads(plant)}
    assert listed[f"s3://{s3.bucket}/{csv_key}"].etag == records[0]["s3"]["object"]["eTag"]


def test_sqs_notifications_duplicated_load_once(plant, s3, tmp_path):  # noqa: F811
    """S3 event notifications through SQS (moto's server on loopback), each delivered twice."""
    import boto3
    from moto.server import ThreadedMotoServer

    from ingest.batchwatch import watch
    from tickplant.kafka.broker import free_port

    settings = plant.replace(s3_endpoint=s3.endpoint)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    stop = threading.Event()
    try:
        endpoint = f"http://127.0.0.1:{server._port}"
        sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
        queue = sqs.create_queue(QueueName="tickplant-drops", Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
        client = s3.client()
        key = "sqs/eod trades 3.csv"
        client.upload_file(str(_write_csv(tmp_path / "q.csv", 700, "SQS")), s3.bucket, key)
        record = json.loads(EVENT)["Records"][0]
        record["s3"]["bucket"]["name"] = s3.bucket
        record["s3"]["object"].update(key=quote_plus(key, safe="/"),
                                      eTag=client.head_object(Bucket=s3.bucket, Key=key)["ETag"].strip('"'))
        for _ in range(2):  # S3 delivers at least once
            sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"Records": [record]}))
        results: list = []
        loader = BatchLoader(settings)
        thread = threading.Thread(target=watch, args=(loader, f"s3://{s3.bucket}/sqs/", stop,
                                                      lambda ref, r: results.append(r)),
                                  kwargs={"sqs_url": queue, "sqs_endpoint": endpoint, "sqs_wait_seconds": 1})
        thread.start()

        def drained() -> bool:
            attrs = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
            return len(results) == 2 and attrs["ApproximateNumberOfMessages"] == "0" and \
                attrs["ApproximateNumberOfMessagesNotVisible"] == "0"

        wait_until(drained, 60, "both deliveries handled and deleted", lambda: repr(results))
        stop.set()
        thread.join(30)
        assert [r.already for r in results] == [False, True], results
        _once(plant, "SQS", 700)
    finally:
        stop.set()
        server.stop()


def test_sources_come_from_the_toml_and_bad_ones_are_named(tmp_path):
    from ingest.sources import ingest_options
    from tickplant.config import ConfigError, load_settings

    path = tmp_path / "tickplant.toml"
    path.write_text('[ingest]\nchunk_rows = 5000\n[ingest.sources.acme]\nmatch = "acme/*.csv"\ntable = "quote"\n'
                    'columns = { bidpx = "bid", askpx = "ask" }\ntime_format = "epoch"\ntime_unit = "ms"\n')
    options = ingest_options(load_settings(path), {"trade", "quote"})
    assert options.chunk_rows == 5000
    acme = options.source_for("acme/q_1.csv")
    assert (acme.table, acme.columns["bidpx"], acme.time_scale) == ("quote", "bid", 1_000_000)
    with pytest.raises(ConfigError, match="no \\[ingest.sources\\] entry matches it"):
        options.source_for("other/x.csv")
    for bad, said in (('table = "trades"', "table 'trades' is not a table"), ('table = "quote"\ntime_unit = "min"',
                      "time_unit 'min'"), ('table = "quote"\ntimezone = "Mars/Olympus"', "timezone 'Mars/Olympus'")):
        path.write_text(f"[ingest.sources.bad]\n{bad}\n")
        with pytest.raises(ConfigError, match=r"\[ingest.sources.bad\]: " + said):
            ingest_options(load_settings(path), {"trade", "quote"})


def test_cli_load_and_ls(plant, tmp_path, monkeypatch, capsys):
    from tickplant.cli import main

    for name, value in _loader_env(plant).items():
        if name.startswith("TICKPLANT_"):
            monkeypatch.setenv(name, value)
    path = _write_csv(tmp_path / "cli_1.csv", 50, "CLI")
    with path.open("a") as f:
        f.write(f"{BASE_NS},CLI9,oops,1,N\n")
    assert main(["ingest", "load", str(path), "--table", "trade"]) == 3  # a rejected row: exit 3, as feed csv
    out = capsys.readouterr().out
    assert f"{path}:52: price: 'oops' is not a valid double" in out and "50 rows into trade, 1 rejected" in out
    assert main(["ingest", "load", str(path), "--table", "trade"]) == 0
    assert "already loaded (50 rows into trade, 1 rejected" in capsys.readouterr().out
    assert main(["ingest", "ls", "--table", "trade"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:4] == ["object", "version", "table", "state"]
    row = next(line for line in listing if str(path) in line).split()
    assert row[1:6] == ["file", "trade", "done", "50", "1"] and row[6] == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert main(["ingest", "load", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv: No such file or directory" in capsys.readouterr().err
    _once(plant, "CLI", 50)
