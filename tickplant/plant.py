"""The embedded plant: what ``tickplant up`` runs, and how ``down``/``status`` find it.

State lives in ``<data_dir>``: ``plant.pid`` (the ``up`` process), ``plant.json``
(its bootstrap servers, start time, readiness and live counters, rewritten
every second), ``plant.log`` (a detached plant's output) and ``kafka/``.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ingest.eod import EodScheduler, open_first_day
from ingest.feeds.synthetic import SyntheticMarket, run_feed
from ingest.publisher import Tickerplant
from ingest.schemas import SchemaCatalog
from ingest.topics import ensure_topics
from tickplant import httpclient
from tickplant.clock import Clock, SystemClock
from tickplant.config import Settings
from tickplant.kafka.broker import (
    EmbeddedCluster,
    EmbeddedKafka,
    embedded_broker,
    pid_alive,
    stop_pid,
)
from tickplant.supervisor import Supervisor, cep_child, gateway_child, pdb_child, rdb_worker_child

SUPERVISE_SECONDS = 0.5


class PlantError(RuntimeError):
    """The plant could not start or be found."""


def state_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / "plant.json"


def pid_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / "plant.pid"


def running_plant(settings: Settings) -> dict[str, Any] | None:
    """The live plant's state file, or None if no plant runs from this data dir."""
    try:
        pid = int(pid_path(settings).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    try:
        state = json.loads(state_path(settings).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        state = {}
    state["pid"] = pid
    return state


class Plant:
    """Broker (if embedded), topics, the open day, the EOD timer, the synthetic feed,
    and as child processes the RDB workers and the PDB."""

    def __init__(self, settings: Settings, feed: bool = True, clock: Clock | None = None):
        self.settings = settings
        self.feed = feed
        self.supervisor = Supervisor()
        self.clock = clock or SystemClock()
        self.catalog = SchemaCatalog.load(settings.schemas_dir)
        self.broker: EmbeddedKafka | EmbeddedCluster | None = embedded_broker(settings) if settings.embedded else None
        self.tp: Tickerplant | None = None
        self.scheduler: EodScheduler | None = None
        self._stop = threading.Event()
        self._feed_thread: threading.Thread | None = None
        self._supervision: threading.Thread | None = None
        self._events: queue.SimpleQueue[str] = queue.SimpleQueue()  # what supervision did, for display
        self._ready = False
        self.started = time.time()

    def start(self) -> None:
        Path(self.settings.data_dir).mkdir(parents=True, exist_ok=True)
        if running_plant(self.settings):
            raise PlantError(f"a plant is already running from {self.settings.data_dir}; 'tickplant down' stops it")
        pid_path(self.settings).write_text(str(os.getpid()))
        self.write_state(ready=False)
        try:
            if self.broker:
                self.broker.start()
            ensure_topics(self.settings, self.catalog)
            open_first_day(self.settings, self.catalog, self.clock)
            self.tp = Tickerplant(self.settings, self.catalog, source="synthetic-feed")
            self.scheduler = EodScheduler(self.settings, self.catalog, self.clock)
            self.scheduler.start()
            for replica in range(self.settings.rdb_replicas):
                for index in range(self.settings.rdb_workers):
                    self.supervisor.add(rdb_worker_child(self.settings, index, replica))
            for index in range(self.settings.cep_workers):
                self.supervisor.add(cep_child(self.settings, index))
            self.supervisor.add(pdb_child(self.settings))
            self.supervisor.add(gateway_child(self.settings))
            self._supervision = threading.Thread(target=self._supervise, name="plant-supervision", daemon=True)
            self._supervision.start()
            if self.feed:
                market = SyntheticMarket(self.settings.feed_syms, self.settings.feed_seed, self.clock)
                self._feed_thread = threading.Thread(
                    target=run_feed, name="tp-feed",
                    args=(market, self.tp.publish_rows, self.settings.feed_rate, self._stop),
                    kwargs={"publish_frame": self.tp.publish_frame}, daemon=True,
                )
                self._feed_thread.start()
            self._wait_for_gateway()
        except BaseException:
            self.stop()
            raise
        self.write_state(ready=True)
        self._ready = True  # from now on supervision rewrites the state file

    def _supervise(self) -> None:
        """Restarts what crashed and rewrites the state file, whatever the foreground does
        (a status line, a demo's queries, nothing at all under ``up --detach``)."""
        last_state = 0.0
        while not self._stop.wait(SUPERVISE_SECONDS):
            try:
                for line in self._restart_crashed():
                    self._events.put(line)
                if self._ready and time.monotonic() - last_state >= 1.0:
                    self.write_state(ready=True)
                    last_state = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - supervision must outlive one bad round
                self._events.put(f"supervision: {type(exc).__name__}: {exc}")

    def _wait_for_gateway(self, timeout: float = 120.0) -> None:
        """Ready means answering: the gateway replies and sees every RDB worker serving and
        every CEP worker, so a query sent the moment ``up --detach`` returns is answered."""
        url = f"http://{self.settings.gateway_host}:{self.settings.gateway_port}/v1/health"
        rdb_wanted = self.settings.rdb_workers * self.settings.rdb_replicas
        cep_wanted = self.settings.cep_workers
        deadline = time.monotonic() + timeout
        seen = "no answer"
        while time.monotonic() < deadline:
            try:
                # the plant's own call: the gateway tells it the nodes it sees (an anonymous
                # caller gets only up or down)
                health = httpclient.get_json(url, settings=self.settings, timeout=2)
                serving = sum(1 for n in health.get("rdb_nodes", []) if n.get("serving"))
                engines = len(health.get("cep_nodes", []))
                seen = f"{serving}/{rdb_wanted} RDB workers serving, {engines}/{cep_wanted} CEP workers"
                if serving >= rdb_wanted and engines >= cep_wanted:
                    return
            except (httpclient.HttpError, ValueError):
                pass
            for line in self.watch():
                print(f"tickplant: {line}", file=sys.stderr)
            time.sleep(0.3)
        raise PlantError(f"the plant was not ready within {timeout:.0f} s ({seen} at {url}); "
                         f"see {self.settings.data_dir}/logs/")

    def write_state(self, ready: bool) -> None:
        delivered = dict(self.tp.stats.delivered) if self.tp else {}
        state = {
            "pid": os.getpid(), "ready": ready, "started": self.started,
            "bootstrap": self.settings.bootstrap, "embedded": self.settings.embedded,
            "delivered": delivered, "rejected": self.tp.stats.rejected if self.tp else 0,
            "children": {c.name: {"pid": c.proc.pid if c.proc else None, "restarts": c.restarts,
                                  "log": str(c.log_path)} for c in self.supervisor.children},
            "eod_error": repr(self.scheduler.error) if self.scheduler and self.scheduler.error else None,
            "updated": time.time(),
        }
        tmp = state_path(self.settings).with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(state_path(self.settings))

    def _restart_crashed(self) -> list[str]:
        """Restart a dead embedded broker and crashed children; lines saying what happened."""
        events = []
        if self.broker and self.broker.died:
            code = self.broker.restart()
            events.append(f"the Kafka broker exited with code {code}; restarted on {self.settings.bootstrap}")
        return events + self.supervisor.watch()

    def watch(self) -> list[str]:
        """What supervision restarted since the last call (lines to show)."""
        lines = []
        while True:
            try:
                lines.append(self._events.get_nowait())
            except queue.Empty:
                return lines

    def stop(self) -> None:
        self._stop.set()
        if self._supervision is not None:
            self._supervision.join(timeout=60)  # never restarting a child while it is being stopped
        self.supervisor.stop()
        if self._feed_thread:
            self._feed_thread.join(timeout=10)
        if self.scheduler and self.scheduler.is_alive():
            self.scheduler.stop()
        if self.tp:
            try:
                self.tp.close(timeout=30)
            except Exception as exc:  # noqa: BLE001 - report, keep shutting down
                print(f"tickplant: while flushing the feed: {exc}", file=sys.stderr)
        if self.broker:
            self.broker.stop()
        state_path(self.settings).unlink(missing_ok=True)
        pid_path(self.settings).unlink(missing_ok=True)


def start_detached(argv: list[str], settings: Settings, timeout: float = 180.0) -> int:
    """Run ``tickplant up`` in its own session; return its pid once it is ready."""
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    log_path = Path(settings.data_dir) / "plant.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tickplant", *argv], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise PlantError(f"the plant exited with code {proc.returncode}; {log_path} ends:\n{tail}")
        try:
            if json.loads(state_path(settings).read_text()).get("ready"):
                return proc.pid
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.2)
    proc.terminate()
    raise PlantError(f"the plant was not ready after {timeout:.0f}s; see {log_path}")


def stop_plant(settings: Settings, timeout: float = 60.0) -> list[str]:
    """Stop the plant and any broker it left behind; return what was stopped."""
    stopped = []
    try:
        pid = int(pid_path(settings).read_text())
    except (FileNotFoundError, ValueError):
        pid = None
    if pid and pid_alive(pid):
        stop_pid(pid, timeout)
        stopped.append(f"plant (pid {pid})")
    broker = embedded_broker(settings)
    for node in broker.nodes if isinstance(broker, EmbeddedCluster) else [broker]:
        leftover = node.running_pid()
        if leftover:
            stop_pid(leftover, timeout)
            stopped.append(f"Kafka broker (pid {leftover})")
        node.pid_file.unlink(missing_ok=True)
    pid_path(settings).unlink(missing_ok=True)
    state_path(settings).unlink(missing_ok=True)
    return stopped


def install_signal_handlers() -> None:
    """SIGTERM (from 'tickplant down') unwinds like Ctrl-C, so every part stops cleanly."""
    def _term(_signo: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
