"""``tickplant demo``: a compressed trading day, its end of day, and the questions a desk asks.

A whole plant (embedded Kafka, RDB, PDB, gateway) runs in ``<data_dir>/demo`` on
free ports, so it never disturbs a running plant. The market clock runs a few
hundred times faster than the wall clock: yesterday's session (09:30 to 16:00
UTC) passes in ``day_seconds``, the plant's own end-of-day timer fires at 16:30,
the PDB writes the day to the HDB, the night is skipped, and today's session
starts. Then a few queries go through the gateway, exactly as a user would send
them, and their answers are printed: today from the RDB, history from the HDB,
the two together, an as-of join, bars.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from gateway.cli import print_answer
from gateway.client import Client
from ingest.feeds.synthetic import SyntheticMarket, run_feed
from sinks.store import HdbStore
from tickplant.clock import ScaledClock
from tickplant.config import Settings
from tickplant.kafka.broker import free_port, free_port_pair
from tickplant.plant import Plant

OPEN, CLOSE, EOD = dt.time(9, 30), dt.time(16, 0), dt.time(16, 30)


def scratch_settings(settings: Settings, name: str, **overrides: Any) -> Settings:
    """A throwaway embedded plant in ``<data_dir>/<name>`` (emptied) on free ports: it never
    disturbs a plant already running (the demo, the soak)."""
    root = settings.data_dir / name
    shutil.rmtree(root, ignore_errors=True)
    return settings.replace(
        data_dir=root, bootstrap_servers="", kafka_port=free_port_pair(), rdb_port=free_port(),
        gateway_port=free_port(), topic_prefix="", rdb_replicas=1, hdb_root="", **overrides,
    )


def _ns(day: dt.date, at: dt.time) -> int:
    return int(dt.datetime.combine(day, at, dt.UTC).timestamp()) * 1_000_000_000


def _wait(what: str, done: Callable[[], bool], timeout: float, plant: Plant) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        for line in plant.watch():
            print(f"  {line}", flush=True)
        if plant.scheduler and plant.scheduler.error:
            raise RuntimeError(f"end of day failed: {plant.scheduler.error}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:.0f} s; logs in the demo's data_dir/logs")
        time.sleep(0.2)


def _session(plant: Plant, market: SyntheticMarket, clock: ScaledClock, rate: float, seconds: float,
             label: str) -> None:
    """Feed ``rate`` events/s for ``seconds``, printing simulated time and rows/s."""
    stop = threading.Event()
    assert plant.tp is not None
    feeder = threading.Thread(target=run_feed, args=(market, plant.tp.publish_rows, rate, stop, seconds),
                              kwargs={"publish_frame": plant.tp.publish_frame},
                              daemon=True)
    feeder.start()
    start = time.monotonic()
    before = sum(plant.tp.stats.delivered.values())
    tty = sys.stdout.isatty()
    while feeder.is_alive():
        feeder.join(1.0 if tty else 5.0)
        delivered = sum(plant.tp.stats.delivered.values())
        elapsed = time.monotonic() - start
        now = dt.datetime.fromtimestamp(clock.now_ns() / 1e9, dt.UTC)
        left = max(0.0, seconds - elapsed)
        line = (f"  {label}: market time {now:%H:%M:%S}, {delivered - before:,} rows published "
                f"({(delivered - before) / max(elapsed, 1e-9):,.0f} rows/s), {left:.0f} s left")
        print(f"\r{line}   " if tty else line, end="" if tty else "\n", flush=True)
    plant.tp.flush()
    if tty:
        print()


EXAMPLES: list[tuple[str, Callable[[Client, str, str], Any]]] = [
    ("Today (the RDB): the busiest syms so far",
     lambda c, y, t: c.sql("SELECT sym, count() AS trades, sum(size) AS volume, "
                           "round(sum(price * size) / sum(size), 4) AS vwap FROM trade WHERE date = today() "
                           "GROUP BY sym ORDER BY trades DESC LIMIT 5")),
    ("History and today in one table (HDB + RDB)",
     lambda c, y, t: c.sql("SELECT date, count() AS trades, min(time) AS first, max(time) AS last "
                           "FROM trade GROUP BY date ORDER BY date")),
    ("aj: AAPL's trades with the quote prevailing at each (yesterday and today)",
     lambda c, y, t: c.aj(["AAPL"], start=y, end=t).select(["date", "time", "sym", "price", "size", "bid", "ask"])),
    ("30-minute bars for AAPL over both days",
     lambda c, y, t: c.bars(["AAPL"], start=y, end=t, minutes=30)),
]


def run_demo(settings: Settings, day_seconds: float = 30.0, rate: float = 2000.0, syms: int = 20,
             keep: bool = False) -> int:
    demo = scratch_settings(settings, "demo", eod_time=EOD.strftime("%H:%M"), eod_timezone="UTC")
    root = demo.data_dir
    today = dt.datetime.now(dt.UTC).date()
    yesterday = today - dt.timedelta(days=1)
    session = (dt.datetime.combine(today, CLOSE) - dt.datetime.combine(today, OPEN)).total_seconds()
    speed = session / day_seconds
    clock = ScaledClock(_ns(yesterday, OPEN), speed, paused=True)  # the market opens once the plant is up
    plant = Plant(demo, feed=False, clock=clock)
    print(f"tickplant demo: a plant in {root}, market clock x{speed:,.0f} "
          f"({session / 3600:.1f} h of trading in {day_seconds:.0f} s)", flush=True)
    try:
        started = time.monotonic()
        plant.start()
        gateway = f"http://{demo.gateway_host}:{demo.gateway_port}"
        print(f"  plant up in {time.monotonic() - started:.0f} s: Kafka {demo.bootstrap}, gateway {gateway}")
        market = SyntheticMarket(syms, seed=7, clock=clock)
        clock.resume()
        _session(plant, market, clock, rate, day_seconds, f"{yesterday} session")
        print(f"  {yesterday} closes; the plant's end-of-day timer fires at {EOD:%H:%M} UTC", flush=True)
        clock.jump_to(_ns(yesterday, EOD) - 1_000_000_000)
        scheduler = plant.scheduler
        assert scheduler is not None  # the demo's plant runs the end-of-day timer
        _wait("end of day", lambda: bool(scheduler.rolled), 60, plant)
        store = HdbStore.from_settings(demo)
        t0 = time.monotonic()
        _wait("the write-down", lambda: {yesterday} <= set(store.dates("trade")) and {yesterday} <= set(
            store.dates("quote")), 180, plant)
        print(f"  {yesterday} written to the HDB ({store.display_root}) in {time.monotonic() - t0:.1f} s; "
              f"the night is skipped", flush=True)
        clock.jump_to(_ns(today, OPEN))
        _session(plant, market, clock, rate, day_seconds * 0.6, f"{today} session")
        with Client(gateway) as client:
            _wait("the gateway to see today", lambda: client.health()["open_date"] == today.isoformat(), 30, plant)
            for title, ask in EXAMPLES:
                print(f"\n== {title}")
                t0 = time.monotonic()
                answer = ask(client, yesterday.isoformat(), today.isoformat())
                print_answer(answer, "table", max_rows=8)
                print(f"({(time.monotonic() - t0) * 1e3:.0f} ms through the gateway)")
        print(f"\nTry your own while it runs: tickplant query --url {gateway} \"SELECT ...\"" if keep else
              "\nThe same queries work on your own plant: `tickplant up`, then `tickplant query \"SELECT ...\"`.")
        if keep:
            print("Ctrl-C stops the demo plant.", flush=True)
            while True:
                time.sleep(1)
                for line in plant.watch():
                    print(line, flush=True)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping the demo plant...", file=sys.stderr, flush=True)
        plant.stop()
