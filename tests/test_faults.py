"""The fault suite: a whole plant (``tickplant up``) under a steady feed, every part killed
with SIGKILL in turn, and afterwards every published row in the RDB or the HDB exactly once.

The feed is its own process (``tickplant feed synthetic``) so it outlives each fault
and says at the end how many rows Kafka acknowledged; the log (replayed per day) is
the truth the gateway's answers are checked against. Queries run throughout: each
is answered, or refused with a status a client may retry (503, 408) or finds the
gateway momentarily unreachable while it restarts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from procs import wait_until

from gateway.client import Client, GatewayError
from ingest.eod import read_day_state
from ingest.replay import replay_arrow
from tickplant import internal
from tickplant.config import Settings
from tickplant.kafka.broker import free_port, free_port_pair

pytestmark = pytest.mark.faults


class PlantProcess:
    """``tickplant up`` as a user runs it, in the foreground of its own process."""

    def __init__(self, tmp: Path, catalog):
        self.settings = Settings(data_dir=tmp / "plant", kafka_port=free_port_pair(), rdb_port=free_port() + 10,
                                 cep_port=free_port() + 20, gateway_port=free_port(), partitions=4)
        self.catalog = catalog
        self.env = {**os.environ, **self.settings.child_env()}
        self.log = tmp / "plant.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tickplant", "up", "--no-feed", "--rdb-workers", "2"],
                                     env=self.env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        wait_until(lambda: self.state().get("ready", False), 180, "the plant to be ready", self.tail)

    def state(self) -> dict:
        assert self.proc and self.proc.poll() is None, f"the plant died:\n{self.tail()}"
        try:
            return json.loads((self.settings.data_dir / "plant.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def child_pid(self, name: str) -> int:
        return self.state()["children"][name]["pid"]

    def restarts(self, name: str) -> int:
        return self.state()["children"][name]["restarts"]

    def kill_child(self, name: str) -> None:
        before = self.restarts(name)
        os.kill(self.child_pid(name), signal.SIGKILL)
        wait_until(lambda: self.restarts(name) > before, 60, f"{name} restarted", self.tail)

    def broker_pid(self) -> int:
        return int((self.settings.data_dir / "kafka" / "broker.pid").read_text())

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tickplant", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        logs = self.settings.data_dir / "logs"
        for child in sorted(logs.glob("*.log")) if logs.exists() else []:
            text += f"\n--- {child.name}\n" + "\n".join(child.read_text(errors="replace").splitlines()[-15:])
        return "\n".join(text.splitlines()[-lines * 4:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Queries(threading.Thread):
    """Asks the gateway every 100 ms; keeps every outcome."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.client = Client(url, timeout=60)
        self.answered = 0
        self.retryable: list[str] = []
        self.wrong: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.client.sql("SELECT date, count() AS n FROM trade GROUP BY date")
                self.answered += 1
            except GatewayError as exc:
                (self.retryable if exc.retryable else self.wrong).append(str(exc)[:300])
            self.halt.wait(0.1)


def test_every_part_killed_in_turn_loses_and_duplicates_nothing(tmp_path, catalog):
    plant = PlantProcess(tmp_path, catalog)
    queries: Queries | None = None
    try:
        plant.start()
        feed = subprocess.Popen(
            [sys.executable, "-m", "tickplant", "feed", "synthetic", "--rate", "300", "--seconds", "75",
             "--syms", "12"], env=plant.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        queries = Queries(f"http://127.0.0.1:{plant.settings.gateway_port}")
        queries.start()
        time.sleep(5)
        plant.kill_child("rdb-1")
        time.sleep(4)
        plant.kill_child("pdb-1")
        time.sleep(4)
        eod = plant.run("eod")
        assert eod.returncode == 0, eod.stderr
        time.sleep(0.3)
        plant.kill_child("pdb-1")  # during the write-down of the day just closed
        time.sleep(4)
        plant.kill_child("gateway-1")
        time.sleep(4)
        os.kill(plant.broker_pid(), signal.SIGKILL)
        wait_until(lambda: "broker exited" in plant.log.read_text(errors="replace"), 60, "the broker restarted",
                   plant.tail)
        time.sleep(4)
        plant.kill_child("rdb-2")
        time.sleep(3)
        plant.kill_child("cep-1")
        out, _ = feed.communicate(timeout=240)
        assert feed.returncode == 0, out

        # The truth: what the log holds for each day (every acknowledged row, once).
        state = read_day_state(plant.settings)
        closed = sorted(state.closed)
        assert len(closed) == 1 and state.open_date == closed[0] + dt.timedelta(days=1)
        truth = {}
        for table in ("trade", "quote"):
            for day in [*closed, state.open_date]:
                truth[(table, day)] = replay_arrow(plant.settings, table, day if day in closed else None,
                                                   catalog=catalog).num_rows
        published = {line.split()[0]: int(line.split()[-1].replace(",", "")) for line in out.splitlines()
                     if line.split() and line.split()[0] in ("trade", "quote")}
        for table in ("trade", "quote"):
            assert sum(n for (t, _), n in truth.items() if t == table) == published[table], (table, truth, out)

        client = Client(f"http://127.0.0.1:{plant.settings.gateway_port}", timeout=60)

        def answers(table: str) -> dict | str:
            try:
                rows = client.sql(f"SELECT date, count() AS n, uniqExact(sym, time) AS u FROM {table} "
                                  "GROUP BY date ORDER BY date").to_pylist()
            except GatewayError as exc:  # a worker still rejoining: ask again
                assert exc.retryable, exc
                return str(exc)
            return {r["date"]: (r["n"], r["u"]) for r in rows}

        def holdings() -> str:
            """Each RDB worker's partitions, offsets and rows per day (to say where a row went)."""
            from ingest.metadata import read_metadata

            lines = []
            for node, record in sorted(read_metadata(plant.settings, include_stale=True).items()):
                for table, held in sorted(getattr(record, "tables", {}).items()):
                    days = {d: v.rows for d, v in held.dates.items()}
                    lines.append(f"{node} stale={record.stale} serving={getattr(record, 'serving', None)} {table} "
                                 f"partitions={held.partitions} applied={held.applied} days={days}")
            return "\n".join(lines)

        for table in ("trade", "quote"):
            expected = {day: (truth[(table, day)], truth[(table, day)]) for day in [*closed, state.open_date]}
            wait_until(lambda t=table, e=expected: answers(t) == e, 120,
                       f"{table}: every row in the RDB or HDB exactly once",
                       lambda t=table, e=expected: f"got {answers(t)}, want {e}\n{holdings()}\n{plant.tail()}")
        assert client.tables()[0]["hdb_dates"] == [closed[0].isoformat()]

        # The engine's analytics for today equal a recomputation from the same rows.
        cep = f"http://127.0.0.1:{plant.settings.cep_port}"
        wait_until(lambda: not isinstance(answers("trade"), str), 60, "the RDB")
        sums = {r["sym"]: r for r in client.sql(
            "SELECT sym, count() AS trades, sum(size) AS volume, sum(price * size) AS notional "
            "FROM trade WHERE date = today() GROUP BY sym").to_pylist()}

        def analytics() -> dict:
            request = urllib.request.Request(f"{cep}/cep/v1/analytics", headers=internal.headers(plant.settings))
            with urllib.request.urlopen(request, timeout=30) as resp:
                return json.loads(resp.read())["analytics"]

        def agrees() -> bool:
            got = analytics()
            return set(got) == set(sums) and all(
                got[s]["trades"] == r["trades"] and got[s]["volume"] == r["volume"]
                and abs(got[s]["notional"] - r["notional"]) < 1e-6 * max(1.0, r["notional"])
                for s, r in sums.items())

        wait_until(agrees, 120, "the CEP's analytics to equal a recomputation",
                   lambda: f"cep {analytics()}\nsql {sums}\n{plant.tail()}")
        queries.halt.set()
        queries.join(30)
        assert queries.answered > 50
        assert not queries.wrong, queries.wrong[:3]
    finally:
        if queries is not None:
            queries.halt.set()
        plant.stop()


def test_bad_input_everywhere_is_refused_with_a_reason_and_disturbs_nothing(tmp_path, catalog):
    """Corrupt bytes, an unknown writer schema and a truncated block on the table topics, an
    oversized message, CSV garbage, malformed HTTP and SQL: each is refused or dead-lettered
    with its reason, and every good row around them is captured by the RDB, the engine and
    the HDB exactly once."""
    from confluent_kafka import KafkaException, Producer

    from ingest.deadletter import read_deadletters
    from ingest.feeds.synthetic import SyntheticMarket
    from ingest.publisher import Tickerplant
    from ingest.topics import TopicNames

    plant = PlantProcess(tmp_path, catalog)
    try:
        plant.start()
        market = SyntheticMarket(syms=8, seed=3)
        trades_a, quotes_a = market.events(2000)
        with Tickerplant(plant.settings, catalog) as tp:
            tp.publish_rows("trade", trades_a)
            tp.publish_rows("quote", quotes_a)
        names = TopicNames(plant.settings.topic_prefix)
        raw = Producer(plant.settings.kafka_config())
        garbage = [b"not avro at all", b"\xc3\x01" + b"\x00" * 8 + b"\x02\x04", b"\xc3\xb1" + b"\x01" * 3]
        garbage_at: list[tuple[str, int, int]] = []
        for topic in (names.table("trade"), names.table("quote")):
            for part, value in enumerate(garbage):
                raw.produce(topic, key=b"AAPL", value=value, partition=part,
                            on_delivery=lambda err, msg: garbage_at.append((msg.topic(), msg.partition(), msg.offset())))
        assert raw.flush(30) == 0 and len(garbage_at) == 2 * len(garbage)
        errors: list[str] = []
        try:  # refused by the client (message.max.bytes) or the broker, either way with the reason
            raw.produce(names.table("trade"), key=b"AAPL", value=b"x" * (9 << 20), partition=0,
                        on_delivery=lambda err, _msg: errors.append(str(err)) if err else None)
            raw.flush(30)
        except KafkaException as exc:
            errors.append(str(exc))
        assert errors and "MSG_SIZE_TOO_LARGE" in errors[0].upper().replace(" ", "_"), errors
        trades_b, quotes_b = market.events(2000)
        with Tickerplant(plant.settings, catalog) as tp:
            tp.publish_rows("trade", trades_b)
            tp.publish_rows("quote", quotes_b)

        bad_csv = tmp_path / "bad.csv"
        bad_csv.write_text("time,sym,price,size,exchange,cond\n1,AAPL,abc,100,N,\n\x00\x01,,,\n")
        csv = plant.run("feed", "csv", "trade", str(bad_csv))
        assert csv.returncode == 3 and "bad.csv:2" in csv.stdout + csv.stderr, csv.stdout + csv.stderr

        client = Client(f"http://127.0.0.1:{plant.settings.gateway_port}", timeout=60)
        http = httpx.Client(base_url=client.url, timeout=60)  # raw requests, malformed on purpose
        assert http.post("/v1/sql", content=b"{oops", headers={"Content-Type": "application/json"}).status_code == 400
        assert http.post("/v1/sql", json={"query": "SELEC 1 FROM"}).status_code in (400, 403)
        assert http.get("/v1/bars", params={"minutes": "x"}).status_code == 400
        assert http.get("/v1/trades", params={"start": "yesterday-ish"}).status_code == 400

        n_trades, n_quotes = len(trades_a) + len(trades_b), len(quotes_a) + len(quotes_b)

        def counted() -> tuple[int, int] | str:
            try:
                t = client.sql("SELECT count() AS n FROM trade WHERE date = today()").column("n")[0].as_py()
                q = client.sql("SELECT count() AS n FROM quote WHERE date = today()").column("n")[0].as_py()
            except GatewayError as exc:
                return str(exc)
            return t, q

        wait_until(lambda: counted() == (n_trades, n_quotes), 120, "every good row in the RDB",
                   lambda: f"{counted()} want {(n_trades, n_quotes)}\n{plant.tail()}")
        cep = f"http://127.0.0.1:{plant.settings.cep_port}"

        def engine_trades() -> int:
            request = urllib.request.Request(f"{cep}/cep/v1/analytics", headers=internal.headers(plant.settings))
            with urllib.request.urlopen(request, timeout=30) as resp:
                return sum(a["trades"] or 0 for a in json.loads(resp.read())["analytics"].values())

        wait_until(lambda: engine_trades() == n_trades, 120, "the engine to count every good trade",
                   lambda: f"{engine_trades()} want {n_trades}")
        eod = plant.run("eod")
        assert eod.returncode == 0, eod.stderr
        wait_until(lambda: client.sql("SELECT count() AS n FROM trade WHERE date = yesterday()")
                   .column("n")[0].as_py() == n_trades and client.tables()[0]["hdb_dates"], 120,
                   "the HDB to hold every good trade", plant.tail)

        letters = read_deadletters(plant.settings)
        for letter in letters:
            assert letter["reason"] and letter["table"] in ("trade", "quote")
        # each garbage message once, whichever consumer met it first (ingest.deadletter)
        logged = sorted(letter["where"] for letter in letters if "bad.csv" not in letter["where"])
        assert logged == sorted(f"{t}[{p}]@{o}" for t, p, o in garbage_at), logged
        assert any("bad.csv" in letter["where"] for letter in letters)
        listed = plant.run("deadletters", "--last", "200")
        assert listed.returncode == 0 and "{}[{}]@{}".format(*garbage_at[0]) in listed.stdout
    finally:
        plant.stop()
