"""Plant processes for tests: RDB and CEP workers run as real subprocesses, so they can be kill -9'd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams.client import RdbClient, RdbClientError
from tickplant import internal
from tickplant.config import Settings
from tickplant.kafka.broker import free_port


def plant_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "TICKPLANT_KAFKA_PORT": str(settings.kafka_port),
        "TICKPLANT_TOPIC_PREFIX": settings.topic_prefix,
        "TICKPLANT_DATA_DIR": str(settings.data_dir),
        "TICKPLANT_PARTITIONS": str(settings.partitions),
    })
    if settings.kafka_brokers > 1:  # the embedded cluster: every broker, topics replicated
        env["TICKPLANT_KAFKA_BROKERS"] = str(settings.kafka_brokers)
        env["TICKPLANT_REPLICATION_FACTOR"] = str(settings.replication_factor)
    if settings.internal_secret:  # hosts of one plant, each with its own data directory
        env["TICKPLANT_INTERNAL_SECRET"] = settings.internal_secret
    if settings.kafka_client_config:  # a secured cluster: the child connects as this process does
        env["TICKPLANT_KAFKA_CLIENT_CONFIG"] = settings.child_env()["TICKPLANT_KAFKA_CLIENT_CONFIG"]
    return env


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a child started with ``start_new_session=True`` and everything it started:
    SIGTERM to its process group, SIGKILL if it outlives ``timeout``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class PlantChild:
    """One plant process (``python -m tickplant <argv>``) on a free port: kill -9 able.
    ``host``: a simulated host of its own, a loopback address its views listen on."""

    def __init__(self, settings: Settings, node_id: str, log_dir: Path, host: str = "127.0.0.1"):
        self.settings = settings
        self.node_id = node_id
        self.host = host
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        self.log_path = log_dir / f"{node_id}.log"
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> PlantChild:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tickplant", *self.argv()],
                env=plant_env(self.settings), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        return self

    def kill9(self) -> None:
        assert self.proc
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class Worker(PlantChild):
    """One ``tickplant rdb worker`` subprocess."""

    def __init__(self, settings: Settings, node_id: str, log_dir: Path, replica: str = "a", host: str = "127.0.0.1"):
        super().__init__(settings, node_id, log_dir, host)
        self.replica = replica

    def argv(self) -> list[str]:
        return ["rdb", "worker", "--id", self.node_id, "--port", str(self.port), "--replica", self.replica,
                "--host", self.host]

    @property
    def client(self) -> RdbClient:
        return RdbClient(self.url, timeout=30, settings=self.settings)

    def wait_serving(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc and self.proc.poll() is None, f"{self.node_id} died:\n{self.log_tail()}"
            try:
                self.client.status()
                return
            except RdbClientError:
                time.sleep(0.2)
        raise AssertionError(f"{self.node_id} not serving after {timeout}s:\n{self.log_tail()}")


class Cep(PlantChild):
    """One ``cep run`` worker subprocess (kill -9 able)."""

    def __init__(self, settings, node_id: str, log_dir: Path, *extra: str, host: str = "127.0.0.1"):
        super().__init__(settings, node_id, log_dir, host)
        self.extra = extra

    def argv(self) -> list[str]:
        return ["cep", "run", "--id", self.node_id, "--port", str(self.port), "--host", self.host, *self.extra]

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers=internal.headers(self.settings))
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())

    def status(self) -> dict[str, Any] | None:
        assert self.proc and self.proc.poll() is None, f"{self.node_id} died:\n{self.log_tail()}"
        try:
            status = self.get("/cep/v1/status")
        except OSError:
            return None
        return status if status["serving"] else None

    def rows(self) -> int:
        status = self.status()
        return status["rows"] if status else -1


def wait_until(condition: Callable[[], bool], timeout: float, what: str, detail: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except RdbClientError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {detail()}")


class BackgroundFeed:
    """The synthetic market publishing in a thread until the block ends: rows in flight.

    ``published[table]`` holds every row handed to the tickerplant, in order.
    """

    def __init__(self, tp: Any, market: Any, tables: tuple[str, ...] = ("trade",), events: int = 200,
                 pause: float = 0.01):
        self.tp, self.market, self.tables = tp, market, tables
        self.events, self.pause = events, pause
        self.published: dict[str, list[dict]] = {t: [] for t in tables}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-feed")

    def _run(self) -> None:
        while not self._stop.is_set():
            trades, quotes = self.market.events(self.events)
            for table, rows in (("trade", trades), ("quote", quotes)):
                if table in self.tables:
                    self.tp.publish_rows(table, rows)
                    self.published[table].extend(rows)
            time.sleep(self.pause)

    def __enter__(self) -> BackgroundFeed:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class SymCounts(threading.Thread):
    """A client asking the gateway each sym's count of today's trades, again and again, while the
    RDB changes under it (a host killed, a node joining or leaving). Every answer must be whole
    or a 503: ``wrong`` holds any other status, ``partial()`` any count that went back."""

    QUERY = "SELECT sym, count() AS n FROM trade WHERE date = today() GROUP BY sym"

    def __init__(self, http: Any, pause: float = 0.1):
        super().__init__(name="sym-counts", daemon=True)
        self.http, self.pause = http, pause
        self.answers: list[dict[str, int]] = []
        self.refused: list[str] = []
        self.wrong: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            resp = self.http.post("/v1/sql", json={"query": self.QUERY})
            if resp.status_code == 200:
                self.answers.append({r["sym"]: r["n"] for r in resp.json()["rows"]})
            elif resp.status_code == 503:
                self.refused.append(resp.json()["error"])
            else:
                self.wrong.append(f"{resp.status_code} {resp.text[:200]}")
            self.halt.wait(self.pause)

    def last_is(self, want: dict[str, int]) -> bool:
        return bool(self.answers) and self.answers[-1] == want

    def partial(self) -> list[str]:
        """Answers in which a sym's count went back or vanished: a partial answer."""
        pairs = zip(self.answers, self.answers[1:], strict=False)
        return [f"{sym}: {n} then {after.get(sym)}" for before, after in pairs
                for sym, n in before.items() if after.get(sym, 0) < n]

    def stop(self) -> None:
        self.halt.set()
        if self.is_alive():
            self.join(30)
