"""Users' own tools on a real plant: ``Client.subscribe`` (resuming across a killed gateway and a
dropped connection), the ``%%tp`` IPython magic, and the ``tickplant sql`` console.

Two ``tickplant gateway run`` processes, each on its own loopback address, on the session's
broker with a users file: alice may read every table whole, bob only some of trade's columns
(so he may query trade but not subscribe to it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from procs import plant_env, stop_group, wait_until

from gateway.client import Client, GatewayError
from gateway.subscribe_client import Batch
from ingest.eod import open_first_day
from ingest.publisher import Tickerplant
from ingest.schemas import SchemaCatalog
from ingest.topics import partition_for
from tickplant.config import Settings
from tickplant.kafka.broker import EmbeddedKafka, free_port

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef0"
USERS = f"""
[users.alice]
keys = ["{ALICE}"]
tables = {{ "*" = {{}} }}

[users.bob]
keys = ["{BOB}"]
[users.bob.tables.trade]
columns = ["time", "sym", "price"]
"""


@dataclass
class Plant:
    settings: Settings
    catalog: SchemaCatalog
    urls: list[str]
    procs: dict[str, subprocess.Popen]
    env: dict[str, str]

    def kill(self, url: str) -> None:
        proc = self.procs[url]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _answers(url: str) -> bool:
    try:
        with Client(url, api_key=ALICE, timeout=5) as client:
            return client.sql("SELECT 1 AS x").to_pylist() == [{"x": 1}]
    except GatewayError:
        time.sleep(0.2)
        return False


@pytest.fixture(scope="module")
def plant(broker: EmbeddedKafka, catalog: SchemaCatalog, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plant]:
    root = tmp_path_factory.mktemp("pyconsole")
    settings = broker.settings.replace(topic_prefix=f"pc{uuid.uuid4().hex[:8]}.", data_dir=root / "shared")
    open_first_day(settings, catalog)
    users = root / "users.toml"
    users.write_text(USERS)
    port = free_port()
    procs: dict[str, subprocess.Popen] = {}
    urls = [f"http://{host}:{port}" for host in ("127.0.0.2", "127.0.0.3")]
    env = {**plant_env(settings), "TICKPLANT_GATEWAY_USERS_FILE": str(users)}
    try:
        for n, url in enumerate(urls):
            host_env = {**env, "TICKPLANT_DATA_DIR": str(root / f"host{n}"),
                        "TICKPLANT_GATEWAY_HOST": url.split("//")[1].split(":")[0], "TICKPLANT_GATEWAY_PORT": str(port),
                        "TICKPLANT_INTERNAL_SECRET": "one-secret-for-the-plant"}
            log = open(root / f"gateway-{n}.log", "wb")
            procs[url] = subprocess.Popen([sys.executable, "-m", "tickplant", "gateway", "run", "--id", f"gw-{n}"],
                                          env=host_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for url in urls:
            wait_until(lambda u=url: _answers(u), 90, f"the gateway at {url}",
                       lambda: (root / "gateway-0.log").read_text()[-2000:])
        yield Plant(settings, catalog, urls, procs, env)
    finally:
        for proc in procs.values():
            stop_group(proc)


def trade(i: int, sym: str) -> dict[str, Any]:
    return {"time": time.time_ns(), "sym": sym, "price": 100.0 + i / 100, "size": i, "exchange": "N", "cond": ""}


class Collector(threading.Thread):
    """Iterates a subscription in the background, keeping every batch."""

    def __init__(self, sub: Any):
        super().__init__(daemon=True)
        self.sub = sub
        self.batches: list[Batch] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for batch in self.sub:
                self.batches.append(batch)
        except BaseException as exc:  # the test reads it
            self.error = exc

    def sizes(self) -> list[int]:
        return [r["size"] for b in self.batches if b.kind == "update" for r in b.rows]


def test_subscribe_resumes_across_a_killed_gateway_and_a_dropped_connection_each_row_once(plant: Plant) -> None:
    syms = ["AAPL", "MSFT", "IBM"]
    with Client(plant.urls, api_key=ALICE) as client, client.subscribe("trade", ["AAPL", "MSFT"]) as sub:
        first = sub.next(timeout=0)
        assert first is not None and first.kind == "snapshot" and first.source == "trade"
        collector = Collector(sub)
        collector.start()
        rows = [trade(i, syms[i % 3]) for i in range(600)]
        want = [r["size"] for r in rows if r["sym"] != "IBM"]
        with Tickerplant(plant.settings, plant.catalog, mode="zero") as tp:
            def publish(part: list[dict[str, Any]]) -> None:
                for k in range(0, len(part), 20):
                    tp.publish_rows("trade", part[k:k + 20])
                    tp.flush()
                    time.sleep(0.01)

            publish(rows[:200])
            wait_until(lambda: len(collector.sizes()) >= 60, 30, "rows through the first gateway",
                       lambda: str(collector.error))
            serving = sub.url
            feeder = threading.Thread(target=publish, args=(rows[200:400],))
            feeder.start()
            plant.kill(serving)  # mid-stream: rows keep coming while the client finds the other gateway
            feeder.join()
            wait_until(lambda: sub.reconnects >= 1, 30, "the subscription to resume", lambda: str(collector.error))
            assert sub.url != serving
            # now the connection itself drops (a proxy cut it): the same gateway takes the resume
            publish(rows[400:500])
            sub._ws.socket.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            publish(rows[500:])
            wait_until(lambda: len(collector.sizes()) >= len(want), 30, "every row",
                       lambda: f"{len(collector.sizes())} of {len(want)}; {collector.error}")
    collector.join(10)
    assert collector.error is None, collector.error
    assert sub.reconnects == 2
    got = collector.sizes()
    assert sorted(got) == want  # each row once
    for sym in ("AAPL", "MSFT"):  # a sym's rows in publish order (a sym lives in one partition)
        mine = [r["size"] for b in collector.batches if b.kind == "update" for r in b.rows if r["sym"] == sym]
        assert mine == [r["size"] for r in rows if r["sym"] == sym]
    assert not [b for b in collector.batches if b.kind == "snapshot"]  # resumed: no second snapshot
    frame = collector.batches[-1].to_pandas()
    assert str(frame["time"].dtype) == "datetime64[ns, UTC]" and set(frame["sym"]) <= {"AAPL", "MSFT"}


def test_a_gateway_dropping_the_handshake_is_passed_over(plant: Plant) -> None:
    """A dying gateway's listener can still take the TCP connection and reset it while the
    WebSocket handshake is sent; the subscription goes to the next gateway, not up to the user."""
    dropper = socket.socket()
    dropper.bind(("127.0.0.1", 0))
    dropper.listen(16)
    taken: list[int] = []

    def reset_every_connection() -> None:
        while True:
            try:
                conn, _ = dropper.accept()
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            taken.append(1)

    threading.Thread(target=reset_every_connection, daemon=True).start()
    dropping = f"http://127.0.0.1:{dropper.getsockname()[1]}"
    live = [u for u in plant.urls if plant.procs[u].poll() is None]
    try:
        for _ in range(5):  # the reset lands before or during the handshake's send: both are met
            with Client([dropping, *live], api_key=ALICE) as client, client.subscribe("trade", ["AAPL"]) as sub:
                assert sub.url in live
                first = sub.next(timeout=0)
                assert first is not None and first.kind == "snapshot"
        assert len(taken) >= 5
        with Client([dropping], api_key=ALICE) as client, pytest.raises(GatewayError) as nowhere:
            client.subscribe("trade", ["AAPL"], reconnect_timeout=1)
        assert nowhere.value.status == 503 and dropping in nowhere.value.reason
    finally:
        dropper.close()


def test_subscribe_refusals_raise_gateway_error(plant: Plant) -> None:
    live = [u for u in plant.urls if plant.procs[u].poll() is None]
    with Client(live, api_key=BOB) as bob, pytest.raises(GatewayError) as refused:
        bob.subscribe("trade", ["AAPL"])
    assert refused.value.status == 403 and "not authorized for 'trade'" in refused.value.reason
    with Client(live, api_key=ALICE) as alice:
        with pytest.raises(GatewayError) as unknown:
            alice.subscribe("trades")
        assert unknown.value.status == 404 and "unknown source 'trades'" in unknown.value.reason
        with pytest.raises(GatewayError) as beyond:
            alice.subscribe("trade", ["AAPL"], resume={partition_for("AAPL", plant.settings.partitions): 10**12})
        assert beyond.value.status == 400 and "is outside the log" in beyond.value.reason
    with Client(live) as nobody, pytest.raises(GatewayError) as anonymous:
        nobody.subscribe("trade")
    assert anonymous.value.status == 401


def test_tp_cell_magic_in_a_real_ipython_shell(plant: Plant, monkeypatch: pytest.MonkeyPatch) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    live = [u for u in plant.urls if plant.procs[u].poll() is None]
    monkeypatch.setenv("TICKPLANT_GATEWAY_URL", ",".join(live))
    monkeypatch.setenv("TICKPLANT_API_KEY", ALICE)
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "gateway.magic")
        # the gateway from the environment
        answer = shell.run_cell("%%tp squares --limit 10\nSELECT arrayJoin([1, 2, 3]) AS n, n * n AS sq\n;\n")
        assert answer.success, answer.error_in_exec
        assert answer.result.to_dict("list") == {"n": [1, 2, 3], "sq": [1, 4, 9]}
        assert shell.user_ns["squares"] is answer.result
        tables = shell.run_cell("%%tp\nSELECT name FROM (SELECT 'trade' AS name UNION ALL SELECT 'quote') ORDER BY name")
        assert list(tables.result["name"]) == ["quote", "trade"]
        # %tp_connect switches user: bob may not read quote; one line, and the cell fails
        shell.run_line_magic("tp_connect", f"{live[0]} --key {BOB}")
        refused = shell.run_cell("%%tp\nSELECT bid FROM quote WHERE date = today()")
        assert not refused.success
        error = str(refused.error_in_exec)
        assert error.startswith("403 ") and "quote" in error and "\n" not in error
        assert refused.error_in_exec._render_traceback_() == [f"tickplant: {error}"]
        bad = shell.run_cell("%%tp --rows 3\nSELECT 1")
        assert not bad.success and "unknown option --rows" in str(bad.error_in_exec)
    finally:
        shell.run_line_magic("unload_ext", "gateway.magic")
        InteractiveShell.clear_instance()


def test_sql_console_through_prompt_toolkit_pipes(plant: Plant, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from gateway.sqlconsole import Console, interact, make_session

    live = [u for u in plant.urls if plant.procs[u].poll() is None]
    history = tmp_path / "history"
    with Client(live, api_key=ALICE) as client, create_pipe_input() as keys:
        console = Console(client)
        session = make_session(console, str(history), input=keys, output=DummyOutput())
        complete = session.completer

        def words(text: str) -> list[str]:
            return [c.text for c in complete.get_completions(Document(text), CompleteEvent())]

        assert "price" in words("SELECT pri") and "trade" in words("SELECT * FROM tra")
        assert words("SELECT trade.si") == ["size"]
        assert "toStartOfMinute" in words("SELECT toStartOfMin")
        assert "file" not in words("SELECT fil")  # a denied function is not offered
        def type_keys() -> None:
            keys.send_text("SELECT arrayJoin([1, 2, 3]) AS n,\r"   # Enter without ';': the statement goes on
                           "  n * 10 AS tens;\r"
                           "SELECT nosuchfunction(1);\r"
                           "\\tables\r"
                           "\\form\t")                              # Tab completes the command
            wait_until(lambda: session.default_buffer.text == "\\format", 10, "Tab to complete \\form")
            keys.send_text(" csv\r"
                           "SELECT 'a,b' AS s;\r"
                           "\\format yaml\r"
                           "\\q\r"
                           "SELECT 'never run' AS x;\r")

        typist = threading.Thread(target=type_keys, daemon=True)
        typist.start()
        interact(console, session)
        typist.join(10)
    out, err = capsys.readouterr()
    assert [line.split() for line in out.splitlines()[:6]] == [
        ["n", "tens"], ["-", "----"], ["1", "10"], ["2", "20"], ["3", "30"], ["3", "row(s)"]]
    assert out.count("Time: ") == 2 and "never run" not in out
    assert 'format: csv\n"s"\n"a,b"\n' in out
    assert any(line.startswith("trade ") for line in out.splitlines()) and "quote" in out
    errors = err.splitlines()
    assert len(errors) == 2 and errors[0].startswith("error: 400 ") and "nosuchfunction" in errors[0]
    assert errors[1] == "error: \\format takes one of table, csv, json, not 'yaml'"
    assert console.failed == 2
    kept = list(FileHistory(str(history)).load_history_strings())  # newest first, as Up recalls them
    assert kept[-1] == "SELECT arrayJoin([1, 2, 3]) AS n,\n  n * 10 AS tens;" and kept[0] == "\\q"


def test_sql_console_reads_a_pipe_without_prompting(plant: Plant) -> None:
    live = [u for u in plant.urls if plant.procs[u].poll() is None]
    script = "\\format json\nSELECT 1 AS one;\nSELECT bid FROM quote WHERE date = today();\nSELECT 2\n  AS two"
    done = subprocess.run([sys.executable, "-m", "tickplant", "sql", "--url", ",".join(live), "--key", BOB],
                          input=script, env=plant.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr  # one statement was refused
    assert done.stdout.splitlines() == ['{"one": 1}', '{"two": 2}']  # answers only: the times are on stderr
    errors = [line for line in done.stderr.splitlines() if not line.startswith(("Time: ", "format: json"))]
    assert len(errors) == 1 and errors[0].startswith("error: 403 ") and "quote" in errors[0]
    assert done.stderr.count("Time: ") == 2


def test_a_kept_position_resumes_over_sse_and_in_a_new_client(plant: Plant) -> None:
    live = [u for u in plant.urls if plant.procs[u].poll() is None]
    rows = [trade(10_000 + i, "AAPL") for i in range(30)]
    with Client(live, api_key=ALICE) as client:
        with client.subscribe("trade", ["AAPL"]) as sub:
            snapshot = sub.next(timeout=0)
            assert snapshot is not None and snapshot.kind == "snapshot" and snapshot.position
            kept = dict(snapshot.position)
        with Tickerplant(plant.settings, plant.catalog, mode="zero") as tp:
            tp.publish_rows("trade", rows)
            tp.flush()
        sizes = [r["size"] for r in rows]
        # a new subscription given the kept position: those rows, no snapshot
        with client.subscribe("trade", ["AAPL"], resume=kept) as again:
            got: list[int] = []
            while len(got) < len(sizes):
                batch = again.next(timeout=20)
                assert batch is not None and batch.kind == "update", got
                got += [r["size"] for r in batch.rows]
            assert got == sizes
        # the same over Server-Sent Events: ?resume=partition:offset,...
        resume = ",".join(f"{p}:{o}" for p, o in kept.items())
        with httpx.stream("GET", f"{live[0]}/v1/subscribe/trade", params={"syms": "AAPL", "resume": resume},
                          headers={"Authorization": f"Bearer {ALICE}"}, timeout=20) as resp:
            assert resp.status_code == 200
            events: list[tuple[str, str, dict[str, Any]]] = []
            event = event_id = ""
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    events.append((event, event_id, json.loads(line[6:])))
                    if sum(len(m.get("rows", [])) for _, _, m in events) >= len(sizes):
                        break
        assert events[0] == ("resumed", resume, {"type": "resumed", "source": "trade", "syms": ["AAPL"],
                                                 "position": {str(p): o for p, o in kept.items()}})
        assert [r["size"] for kind, _, m in events[1:] if kind == "update" for r in m["rows"]] == sizes
        # each event's id is its position: EventSource's Last-Event-ID resumes after it
        last_id = events[-1][1]
        assert last_id == ",".join(f"{p}:{o}" for p, o in events[-1][2]["position"].items()) != resume
        with Tickerplant(plant.settings, plant.catalog, mode="zero") as tp:
            tp.publish_rows("trade", [trade(20_000, "AAPL")])
            tp.flush()
        with httpx.stream("GET", f"{live[0]}/v1/subscribe/trade", params={"syms": "AAPL"}, timeout=20,
                          headers={"Authorization": f"Bearer {ALICE}", "Last-Event-ID": last_id}) as resp:
            data = [json.loads(line[6:]) for line in _first_lines(resp, 2) if line.startswith("data: ")]
        assert data[0]["type"] == "resumed" and [r["size"] for r in data[1]["rows"]] == [20_000]


def _first_lines(resp: httpx.Response, events: int) -> list[str]:
    lines: list[str] = []
    for line in resp.iter_lines():
        lines.append(line)
        if sum(x.startswith("data: ") for x in lines) == events:
            break
    return lines


def test_watch_takes_a_key_and_a_list_of_gateways(plant: Plant) -> None:
    """``tickplant watch`` is a ``Client.subscribe`` in the terminal: the key from the
    environment, the first gateway of the list that answers, a refusal in one line."""
    live = [u for u in plant.urls if plant.procs[u].poll() is None]
    dead = f"http://127.0.0.4:{free_port()}"
    argv = [sys.executable, "-m", "tickplant", "watch", "trade", "AAPL", "--url", ",".join([dead, *live]),
            "--count", "3"]
    proc = subprocess.Popen(argv, env={**plant.env, "TICKPLANT_API_KEY": ALICE}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("trade AAPL: snapshot"), (first, proc.communicate())
    with Tickerplant(plant.settings, plant.catalog, mode="zero") as tp:
        tp.publish_rows("trade", [trade(7000 + i, s) for i, s in enumerate(["IBM", "AAPL", "AAPL", "MSFT", "AAPL"])])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert [line.split()[3] for line in out.splitlines() if " AAPL " in line][-3:] == ["7,001", "7,002", "7,004"]
    assert "3 updates" in err
    refused = subprocess.run([*argv[:-2], "--key", BOB], env=plant.env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("tickplant watch: not authorized for 'trade'"), line
