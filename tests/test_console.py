"""The web console in a real browser: Debian's Chromium, headless, driven by selenium, with
every address but loopback unresolvable; after each step the browser's own record of its
requests must show nothing but the gateway. A small plant: one RDB worker holding today,
the gateway on uvicorn with a users file.

``TICKPLANT_CONSOLE_SCREENSHOT=docs/console.png`` saves the README's picture on the way."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from procs import Cep, Worker, wait_until
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from gateway import console_assets
from gateway.app import create_app
from gateway.auth import Users, hash_key
from ingest.eod import open_first_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.publisher import Tickerplant
from tickplant.clock import ManualClock
from tickplant.kafka.broker import free_port

T0 = int(dt.datetime(2026, 11, 23, 9, 30, tzinfo=dt.UTC).timestamp() * 1e9)
KEY = "ops-console-key-0123"
USERS = {"users": {"ops": {"keys": [hash_key(KEY)], "admin": True},
                   "alice": {"keys": [hash_key("alice-console-key-01")], "tables": {"trade": {"columns": ["time", "sym", "price"]}}}}}
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


class Plant:
    def __init__(self, url: str, market: SyntheticMarket, clock: ManualClock, tp_settings: Any, catalog: Any):
        self.url = url
        self.market = market
        self.clock = clock
        self.settings = tp_settings
        self.catalog = catalog
        self.http = httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=30)

    def sql(self, query: str) -> dict[str, Any]:
        resp = self.http.post("/v1/sql", json={"query": query})
        assert resp.status_code == 200, resp.text
        return resp.json()

    def count_today(self) -> int:
        """Today's trades, or -1 while the gateway sees no RDB node yet (503)."""
        resp = self.http.post("/v1/sql", json={"query": "SELECT count() AS n FROM trade WHERE date = today()"})
        return resp.json()["rows"][0]["n"] if resp.status_code == 200 else -1

    def publish(self, trades: list[dict[str, Any]]) -> None:
        with Tickerplant(self.settings, self.catalog, mode="batch") as tp:
            tp.publish_rows("trade", trades)


@pytest.fixture(scope="module")
def plant(broker, catalog, tmp_path_factory) -> Iterator[Plant]:
    """Today's trades in one RDB worker (a few minutes of them, for bars), the engine (one CEP
    worker, one-minute bars), the gateway in a thread."""
    tmp = tmp_path_factory.mktemp("console")
    settings = broker.settings.replace(topic_prefix=f"c{uuid.uuid4().hex[:8]}.", data_dir=tmp / "plant",
                                       batch_interval_ms=20)
    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    worker = Worker(settings, "rdb-console", tmp).start()  # starts while the rows are published
    cep = Cep(settings, "cep-console", tmp).start()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, users=Users.from_dict(USERS)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    try:
        thread.start()
        market = SyntheticMarket(syms=4, seed=11, clock=clock)
        trades: list[dict[str, Any]] = []
        with Tickerplant(settings, catalog, mode="batch") as tp:
            for _ in range(12):  # four minutes: several bars per sym
                t, q = market.events(80)
                tp.publish_rows("quote", q)
                tp.publish_rows("trade", t)
                trades += t
                clock.advance(20)
        worker.wait_serving()
        wait_until(lambda: server.started, 30, "the gateway to start")
        p = Plant(f"http://127.0.0.1:{port}", market, clock, settings, catalog)
        wait_until(lambda: p.count_today() == len(trades), 60, "today's trades in the RDB", worker.log_tail)
        wait_until(lambda: cep.status() is not None and p.http.get("/v1/health").json()["cep_nodes"], 60,
                   "the engine serving, seen by the gateway", cep.log_tail)
        yield p
        p.http.close()
    finally:
        for child in (worker, cep):
            if child.proc and child.proc.poll() is None:
                child.proc.terminate()  # their shutdown overlaps the gateway's
        server.should_exit = True
        thread.join(15)
        worker.stop()
        cep.stop()


@pytest.fixture(scope="module")
def browser(plant: Plant) -> Iterator[WebDriver]:
    assert CHROMIUM and CHROMEDRIVER, "chromium and chromedriver are not installed: make setup installs them (as root)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                # no name resolves but loopback's: a page asking the internet for anything fails
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(20)
    try:
        driver.get(plant.url + "/console")
        yield driver
    finally:
        driver.quit()


def errors_logged(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def requests_elsewhere(driver: WebDriver, origin: str) -> list[str]:
    """Every URL the browser asked for, by its network log and the page's resource timing,
    that is not the gateway's (data: and blob: URLs are the page's own)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    urls += driver.execute_script("return performance.getEntries().map(e => e.name)"
                                  ".filter(n => /^[a-z]+:/.test(n))")
    return [u for u in urls if not (u.startswith(origin + "/") or u == origin or u.startswith(("data:", "blob:")))]


def wait_text(driver: WebDriver, element_id: str, want: str, timeout: float = 20) -> str:
    box: list[str] = []

    def found() -> bool:
        box[:] = [driver.find_element(By.ID, element_id).text]
        return want in box[0]

    wait_until(found, timeout, f"{want!r} in #{element_id}", lambda: repr(box))
    return box[0]


def grid(driver: WebDriver, element_id: str) -> tuple[list[str], list[list[str]]]:
    return driver.execute_script("""
        const t = document.querySelector('#' + arguments[0] + ' table');
        if (!t) return [[], []];
        return [[...t.tHead.rows[0].cells].map(c => c.textContent),
                [...t.tBodies[0].rows].map(r => [...r.cells].map(c => c.textContent))];""", element_id)


def run_query(driver: WebDriver, query: str) -> str:
    driver.execute_script("document.querySelector('.CodeMirror').CodeMirror.setValue(arguments[0])", query)
    driver.find_element(By.CSS_SELECTOR, ".CodeMirror textarea").send_keys("\ue009\ue007")  # Ctrl+Enter
    return wait_text(driver, "query-status", " rows in ")


def painted(driver: WebDriver) -> int:
    """Pixels of the chart's canvases that are not background: what the chart drew."""
    return driver.execute_script("""
        let n = 0;
        for (const c of document.querySelectorAll('#chart canvas')) {
          if (!c.width || !c.height) continue;
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          for (let i = 0; i < d.length; i += 4) if (d[i + 3] && (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200)) n++;
        }
        return n;""")


def test_the_console_loads_offline_and_takes_the_key(plant: Plant, browser: WebDriver) -> None:
    assert console_assets.verify() == [], "the vendored assets are not what console/package-lock.json pins"
    wait_text(browser, "key-status", "enter your API key")  # a users file: nothing shown without a key
    browser.find_element(By.ID, "key").send_keys(KEY)
    browser.find_element(By.ID, "key-use").click()
    wait_text(browser, "key-status", "key accepted")
    sources = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "live-source")).options]
    assert {"trade", "quote", "bars", "analytics"} <= set(sources) and "query_log" not in sources
    assert Select(browser.find_element(By.ID, "live-source")).first_selected_option.get_attribute("value") == "trade"
    assert browser.execute_script("return sessionStorage.getItem('tickplant.apiKey')") == KEY
    assert browser.execute_script("return typeof CodeMirror === 'function' && typeof LightweightCharts === 'object'")
    assert errors_logged(browser) == []
    assert requests_elsewhere(browser, plant.url) == []


def test_a_query_renders_the_rows_of_v1_sql_and_goes_into_history(plant: Plant, browser: WebDriver) -> None:
    query = ("SELECT sym, count() AS n, sum(size) AS volume, round(sum(price * size) / sum(size), 4) AS vwap "
             "FROM trade WHERE date = today() GROUP BY sym ORDER BY sym")
    status = run_query(browser, query)
    want = plant.sql(query)
    assert status.startswith(f"{want['count']} rows in ")
    header, rows = grid(browser, "grid")
    assert header == ["sym", "n", "volume", "vwap"]
    assert [[r[0], int(r[1]), int(r[2]), float(r[3])] for r in rows] == \
           [[r["sym"], r["n"], r["volume"], r["vwap"]] for r in want["rows"]]
    assert browser.execute_script("return JSON.parse(localStorage.getItem('tickplant.history'))[0]") == query
    # completion offers the columns of the table after FROM (from /v1/tables) as you type
    browser.execute_script("document.querySelector('.CodeMirror').CodeMirror.setValue('')")
    browser.find_element(By.CSS_SELECTOR, ".CodeMirror textarea").send_keys("SELECT sym FROM trade WHERE pri")
    hints: list[str] = []

    def offered() -> bool:
        hints[:] = browser.execute_script(
            "return [...document.querySelectorAll('.CodeMirror-hint')].map(e => e.textContent)")
        return "price" in hints

    wait_until(offered, 10, "price among the completions", lambda: repr(hints))
    browser.find_element(By.CSS_SELECTOR, ".CodeMirror textarea").send_keys("\ue00c")  # Escape
    assert errors_logged(browser) == []
    assert requests_elsewhere(browser, plant.url) == []


def test_a_chart_draws_lines_and_candles(plant: Plant, browser: WebDriver) -> None:
    run_query(browser, "SELECT time, sym, price FROM trade WHERE date = today() ORDER BY time")
    wait_until(lambda: painted(browser) > 500, 10, "the line chart drawn", lambda: str(painted(browser)))
    assert wait_text(browser, "chart-note", "price:")
    bars = ("SELECT toStartOfMinute(time) AS bar, sym, argMin(price, time) AS open, max(price) AS high, "
            "min(price) AS low, argMax(price, time) AS close FROM trade WHERE date = today() GROUP BY bar, sym "
            "ORDER BY bar, sym")
    run_query(browser, bars)
    want = plant.sql(bars)["rows"]
    first = sorted({r["sym"] for r in want})[0]
    note = wait_text(browser, "chart-note", "candles")
    assert note == f"candles of {first}: {sum(r['sym'] == first for r in want)} points"
    wait_until(lambda: painted(browser) > 300, 10, "the candles drawn", lambda: str(painted(browser)))
    assert errors_logged(browser) == []
    assert requests_elsewhere(browser, plant.url) == []


def test_live_rows_published_during_the_test_arrive(plant: Plant, browser: WebDriver) -> None:
    browser.find_element(By.CSS_SELECTOR, "#tabs button[data-tab=live]").click()
    Select(browser.find_element(By.ID, "live-source")).select_by_value("trade")
    browser.find_element(By.ID, "live-start").click()
    wait_text(browser, "live-status", "snapshot of 4 syms")
    published: list[dict[str, Any]] = []
    for _ in range(3):
        trades, _quotes = plant.market.events(40)
        plant.publish(trades)
        published += trades
    wait_text(browser, "live-count", f"{len(published)} rows received")
    header, latest = grid(browser, "live-latest")
    last = {t["sym"]: t for t in published}
    got = {r[header.index("sym")]: r for r in latest}
    for sym, t in last.items():
        assert float(got[sym][header.index("price")]) == t["price"]
        seconds, ns = divmod(t["time"], 10**9)  # to the nanosecond: the time is not read as a float
        want = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"
        assert got[sym][header.index("time")] == want
    _h, updates = grid(browser, "live-updates")
    assert len(updates) == len(published)
    shot = os.environ.get("TICKPLANT_CONSOLE_SCREENSHOT")
    if shot:
        browser.find_element(By.CSS_SELECTOR, "#tabs button[data-tab=query]").click()
        run_query(browser, "SELECT toStartOfMinute(time) AS bar, sym, argMin(price, time) AS open, max(price) AS high, "
                           "min(price) AS low, argMax(price, time) AS close, sum(size) AS volume FROM trade "
                           "WHERE date = today() GROUP BY bar, sym ORDER BY bar, sym")
        browser.save_screenshot(str(Path(shot)))
        browser.find_element(By.CSS_SELECTOR, "#tabs button[data-tab=live]").click()
    browser.find_element(By.ID, "live-stop").click()
    wait_text(browser, "live-status", "stopped")
    assert errors_logged(browser) == []
    assert requests_elsewhere(browser, plant.url) == []


def test_the_engines_bars_arrive_live(plant: Plant, browser: WebDriver) -> None:
    """A minute of trades, then trades past its end: the engine closes the minute's bars, and
    the live view shows each sym's bar as the trades make it (open, high, low, close, volume)."""
    Select(browser.find_element(By.ID, "live-source")).select_by_value("bars")
    browser.find_element(By.ID, "live-start").click()
    wait_text(browser, "live-status", "snapshot of")
    now_s = plant.clock.now_ns() // 10**9
    plant.clock.advance(60 - now_s % 60 + 5)  # into the next minute
    minute, made = (plant.clock.now_ns() // 60 // 10**9) * 60 * 10**9, []
    for _ in range(3):
        made += plant.market.events(40)[0]
    plant.publish(made)
    plant.clock.advance(90)  # past the minute's end and the engine's grace: its bars close
    later: list[dict[str, Any]] = []
    while {t["sym"] for t in later} != {t["sym"] for t in made}:
        later += plant.market.events(40)[0]
    plant.publish(later)
    stamp = dt.datetime.fromtimestamp(minute / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000000000Z")

    def bars_of_the_minute() -> dict[str, list[str]]:
        header, rows = grid(browser, "live-latest")
        return {r[header.index("sym")]: r for r in rows if r[header.index("time")] == stamp} if rows else {}

    syms = {t["sym"] for t in made}
    wait_until(lambda: set(bars_of_the_minute()) == syms, 30, f"the bars of {stamp}",
               lambda: repr(grid(browser, "live-latest")))
    header, _rows = grid(browser, "live-latest")
    got = bars_of_the_minute()
    for sym in syms:
        ticks = [t for t in made if t["sym"] == sym]
        want = [ticks[0]["price"], max(t["price"] for t in ticks), min(t["price"] for t in ticks), ticks[-1]["price"],
                sum(t["size"] for t in ticks)]
        assert [float(got[sym][header.index(c)]) for c in ("open", "high", "low", "close", "volume")] == want, sym
    browser.find_element(By.ID, "live-stop").click()
    wait_text(browser, "live-status", "stopped")
    assert errors_logged(browser) == []
    assert requests_elsewhere(browser, plant.url) == []


def test_plant_health_and_the_query_log(plant: Plant, browser: WebDriver) -> None:
    browser.find_element(By.CSS_SELECTOR, "#tabs button[data-tab=plant]").click()
    wait_text(browser, "health", "RDB nodes")
    assert {"rdb-console", "cep-console"} <= set(browser.find_element(By.ID, "health").text.split())
    browser.find_element(By.CSS_SELECTOR, "#tabs button[data-tab=log]").click()
    wait_text(browser, "log-status", "latest ")
    header, rows = grid(browser, "log-grid")
    assert header[:3] == ["ts", "user", "endpoint"]
    assert any(r[1] == "ops" and "GROUP BY sym ORDER BY sym" in r[7] for r in rows)  # the console's own query
    assert errors_logged(browser) == []
    assert requests_elsewhere(browser, plant.url) == []


def test_another_key_sees_only_its_grants(plant: Plant, browser: WebDriver) -> None:
    browser.find_element(By.ID, "key-forget").click()
    wait_text(browser, "key-status", "enter your API key")
    browser.find_element(By.ID, "key").send_keys("alice-console-key-01")
    browser.find_element(By.ID, "key-use").click()
    wait_text(browser, "key-status", "key accepted")
    tables = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "live-source")).options]
    assert "trade" in tables and "quote" not in tables
    browser.find_element(By.CSS_SELECTOR, "#tabs button[data-tab=log]").click()
    assert "for admins" in wait_text(browser, "log-status", "query log")  # said, not asked for
    browser.find_element(By.CSS_SELECTOR, "#tabs button[data-tab=query]").click()
    browser.execute_script("document.querySelector('.CodeMirror').CodeMirror.setValue(arguments[0])",
                           "SELECT sym, size FROM trade")
    browser.find_element(By.ID, "run").click()
    status = wait_text(browser, "query-status", "403: ")
    assert "size" in status
    # the one error the browser logged is that refusal
    assert [e for e in errors_logged(browser) if "/v1/sql" not in e or " 403 " not in e] == []
    assert requests_elsewhere(browser, plant.url) == []


def test_docs_render_swagger_ui_offline(plant: Plant, browser: WebDriver) -> None:
    browser.get(plant.url + "/docs")
    wait_until(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock")) > 5, 20,
               "Swagger UI's operations")
    assert "/v1/sql" in browser.find_element(By.CSS_SELECTOR, ".swagger-ui").text
    assert errors_logged(browser) == []
    assert requests_elsewhere(browser, plant.url) == []
