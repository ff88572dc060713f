"""The plant's Prometheus metrics and JSON logs, against a real running plant and a real
Prometheus (Debian's package): every role's /metrics parses and moves, the shipped scrape
config and alert rules pass promtool, and every alert's figure and every dashboard panel's
query returns series from Prometheus scraping the plant."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from procs import wait_until
from prometheus_client.parser import text_string_to_metric_families

from bench.promserver import (
    ALERT_RULES,
    SCRAPE_CONFIG,
    MeteredPlant,
    PrometheusServer,
    alert_rules,
    binary,
    dashboard_queries,
    plant_config,
)
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames
from tickplant.config import ConfigError, load_settings
from tickplant.logs import JsonFormatter, setup_logging

# what each role must export (beyond node_info and memory, which every role has)
FAMILIES = {
    "rdb": {"tickplant_rows_in", "tickplant_consumer_lag_messages", "tickplant_caught_up", "tickplant_serving",
            "tickplant_rocksdb_bytes", "tickplant_apply_seconds", "tickplant_query_seconds",
            "tickplant_memory_budget_bytes", "tickplant_rows_held", "tickplant_dead_letters"},
    "cep": {"tickplant_rows_in", "tickplant_consumer_lag_messages", "tickplant_apply_seconds",
            "tickplant_live_subscribers", "tickplant_rows_out"},
    "gateway": {"tickplant_gateway_requests", "tickplant_gateway_request_seconds", "tickplant_live_subscribers",
                "tickplant_queries_inflight"},
    "pdb": {"tickplant_rows_in", "tickplant_consumer_lag_messages", "tickplant_writedowns",
            "tickplant_writedown_seconds", "tickplant_memory_budget_bytes"},
    "plant": {"tickplant_rows_published", "tickplant_publish_errors", "tickplant_eod_rolls",
              "tickplant_eod_next_roll_timestamp_seconds", "tickplant_dead_letters"},
}
COMPARISONS = (">=", "<=", "==", "!=", ">", "<")
# what may follow a comparison before its right operand: bool, on (...), group_left (...)
MATCHING = re.compile(r"^\s*(bool\s*)?((on|ignoring)\s*\([^)]*\)\s*)?((group_left|group_right)\s*(\([^)]*\))?\s*)?")


def scrape(url: str) -> dict[str, Any]:
    """name -> family, parsed by prometheus_client's own text parser."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.headers.get("Content-Type", "").startswith("text/plain"), resp.headers
        text = resp.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Any], name: str, sample: str = "", **labels: str) -> float:
    """The sum of a family's samples with these labels: its counter or gauge, or the histogram
    sample ``sample`` (``_count``)."""
    family = families.get(name)
    if family is None:
        return 0.0
    wanted = {f"{name}{sample}"} if sample else {name, f"{name}_total"}
    return sum(s.value for s in family.samples
               if s.name in wanted and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture(scope="module")
def plant(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeteredPlant]:
    settings = broker.settings.replace(
        bootstrap_servers=broker.settings.bootstrap, topic_prefix=f"m{uuid.uuid4().hex[:8]}.",
        data_dir=tmp_path_factory.mktemp("metered"), partitions=2, batch_interval_ms=50,
        feed_rate=200.0, feed_syms=8, log_format="json",
    )
    metered = MeteredPlant(settings)
    metered.start()
    try:
        yield metered
    finally:
        metered.stop()


@pytest.fixture(scope="module")
def prometheus(plant: MeteredPlant, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    # every 2 s (a scrape's timeout is its interval: 1 s is too short on a loaded CI machine)
    server = PrometheusServer(plant_config(plant.targets, interval="2s"), tmp_path_factory.mktemp("prometheus"))
    with server:
        yield server


def test_every_role_serves_its_families_and_rows_in_grows(plant: MeteredPlant, catalog: SchemaCatalog) -> None:
    scraped = {job: scrape(plant.metrics_url(job)) for job in plant.targets}
    for job, wanted in FAMILIES.items():
        names = set(scraped[job])
        assert {"tickplant_node_info", "tickplant_memory_rss_bytes"} <= names, job
        assert wanted <= names, f"{job} lacks {sorted(wanted - names)}"
        assert value(scraped[job], "tickplant_memory_rss_bytes") > 10 << 20, job
        roles = {s.labels["role"] for s in scraped[job]["tickplant_node_info"].samples}
        assert roles == {job}, roles
    rdb = scraped["rdb"]
    assert value(rdb, "tickplant_memory_budget_bytes", role="rdb") == plant.settings.rdb_memory_mb << 20
    lag = {(s.labels["table"], s.labels["partition"]) for s in rdb["tickplant_consumer_lag_messages"].samples}
    assert lag == {(t, str(p)) for t in catalog.names for p in range(plant.settings.partitions)}  # every table
    assert all(s.value == 1 for s in rdb["tickplant_caught_up"].samples)  # up --detach waits for serving
    assert value(rdb, "tickplant_rocksdb_bytes") > 0

    # the feed runs: what the tickerplant had acknowledged, and the RDB and PDB took in, grows
    def grown() -> bool:
        now = {job: scrape(plant.metrics_url(job)) for job in ("rdb", "pdb", "plant", "cep")}
        return (value(now["rdb"], "tickplant_rows_in", role="rdb", table="trade")
                > value(rdb, "tickplant_rows_in", role="rdb", table="trade") > 0
                and value(now["plant"], "tickplant_rows_published", table="quote")
                > value(scraped["plant"], "tickplant_rows_published", table="quote") > 0
                and value(now["pdb"], "tickplant_rows_in", role="pdb", table="quote") > 0
                and value(now["cep"], "tickplant_rows_in", role="cep", table="trade") > 0)

    wait_until(grown, 30, "rows taken in and published to grow")


def test_gateway_requests_counted_by_route_status_and_user(plant: MeteredPlant) -> None:
    gateway = f"http://127.0.0.1:{plant.settings.gateway_port}"
    before = scrape(plant.metrics_url("gateway"))
    body = json.dumps({"query": "SELECT count() AS n FROM trade WHERE date = today()"}).encode()
    for _ in range(3):
        request = urllib.request.Request(f"{gateway}/v1/sql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            assert json.loads(resp.read())["rows"][0]["n"] > 0
    bad = urllib.request.Request(f"{gateway}/v1/sql", data=json.dumps({"query": "SELECT nope("}).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bad, timeout=30)
    assert refused.value.code == 400
    after = scrape(plant.metrics_url("gateway"))
    ok = value(after, "tickplant_gateway_requests", route="/v1/sql", status="200")
    assert ok - value(before, "tickplant_gateway_requests", route="/v1/sql", status="200") == 3
    assert value(after, "tickplant_gateway_requests", route="/v1/sql", status="400") >= 1
    users = {s.labels["user"] for s in after["tickplant_gateway_requests"].samples if s.labels["route"] == "/v1/sql"}
    assert users and "-" not in users  # the authenticated (here: the open plant's one) user
    seconds = [s for s in after["tickplant_gateway_request_seconds"].samples
               if s.name.endswith("_count") and s.labels["route"] == "/v1/sql"]
    assert seconds and seconds[0].value >= 4
    # the RDB answered the gateway's fetches: its view latencies moved
    assert value(scrape(plant.metrics_url("rdb")), "tickplant_query_seconds", "_count", role="rdb") > 0


def test_promtool_passes_the_shipped_config_and_rules() -> None:
    for what, path in (("config", SCRAPE_CONFIG), ("rules", ALERT_RULES)):
        done = subprocess.run([binary("promtool"), "check", what, str(path)], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def split_comparison(expr: str) -> list[str]:
    """The sides of an alert's top-level comparison (``figure > threshold``): the operands
    outside every bracket and string; numbers are dropped, they hold no series."""
    depth, quote, i = 0, "", 0
    while i < len(expr):
        c = expr[i]
        if quote:
            quote = "" if c == quote else quote
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            for op in COMPARISONS:
                if expr.startswith(op, i) and not expr.startswith("=~", i) and expr[i - 1] != "!":
                    sides = [expr[:i], MATCHING.sub("", expr[i + len(op):])]
                    return [s.strip() for s in sides if not _number(s)]
        i += 1
    return [expr.strip()]


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_a_real_prometheus_scrapes_every_role_and_every_alert_and_panel_has_series(
        plant: MeteredPlant, prometheus: PrometheusServer) -> None:
    def all_up() -> bool:
        targets = prometheus.targets()
        return len(targets) == len(plant.targets) and all(t["health"] == "up" for t in targets)

    wait_until(all_up, 30, "every role's target up", lambda: str(prometheus.targets()))
    # scraped at 0 first, so that the dead letter below is an increase
    wait_until(lambda: prometheus.query('tickplant_dead_letters_total{role="rdb", table="trade"} == 0'), 30,
               "the RDB's dead-letter count scraped at 0")
    # a message no reader accepts (not our framing): dead-lettered once for the plant
    from confluent_kafka import Producer

    names = TopicNames(plant.settings.topic_prefix)
    producer = Producer(plant.settings.kafka_config())
    producer.produce(names.table("trade"), key=b"AAPL", value=b"not a tickplant message", partition=0)
    assert producer.flush(30) == 0
    # a day rolled: the PDB writes it down (write-down figures), the RDB serves the new day
    done = plant.tickplant("eod", timeout=120)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: prometheus.query('sum(tickplant_writedowns_total{outcome="ok"}) >= 2'), 60,
               "the rolled day written down", prometheus.log_tail)
    wait_until(lambda: prometheus.query("sum(tickplant_dead_letters_total) >= 1"), 30, "the dead letter counted")

    def empty(exprs: list[str]) -> list[str]:
        return [e for e in exprs if not prometheus.query(e)]

    figures = [side for rule in alert_rules() for side in split_comparison(rule["expr"])]
    assert len(figures) >= len(alert_rules())
    panels = [expr for _, targets in dashboard_queries() for expr, _ in targets]
    assert len(panels) >= 18
    # rates over [1m] need two scrapes of each series: a few seconds at the test's 2 s interval
    wait_until(lambda: not empty(figures + panels), 45, "series for every alert figure and panel query",
               lambda: str(empty(figures + panels)))
    # the alert on dead letters evaluated against the plant: pending (it has a `for`) or firing
    wait_until(lambda: any(a["labels"]["alertname"] == "TickplantDeadLettersRising" for a in prometheus.alerts()),
               30, "the dead-letter alert", lambda: str(prometheus.alerts()))
    healthy = [a["labels"]["alertname"] for a in prometheus.alerts()
               if a["labels"]["alertname"] in ("TickplantTargetDown", "TickplantEodLate", "TickplantEodFailed")]
    assert not healthy, healthy


def test_split_comparison_finds_the_figure() -> None:
    assert split_comparison('up{job=~"a|b"} == 0') == ['up{job=~"a|b"}']
    assert split_comparison("a > on (x) b") == ["a", "b"]
    assert split_comparison("a > bool ignoring (y) group_left (z) b") == ["a", "b"]
    assert split_comparison('max by (t) (lag{role="rdb"}) > 50000') == ['max by (t) (lag{role="rdb"})']
    assert split_comparison("(x or y * 0) / y > 0.05") == ["(x or y * 0) / y"]


def test_logs_as_json_lines_carry_the_metrics_names(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, [h.formatter for h in root.handlers])
    try:
        root.handlers = [logging.StreamHandler()]  # stderr, captured
        setup_logging("json", "rdb", "rdb-1")
        log = logging.getLogger("tickplant.rdb")
        log.info("applied %d rows\nof %s", 5, "trade", extra={"table": "trade", "partition": 3})
        try:
            raise ValueError("bad block")
        except ValueError:
            log.exception("refused")
        lines = capsys.readouterr().err.strip().splitlines()
    finally:
        root.handlers, root.level = saved[0], saved[1]
        for handler, formatter in zip(saved[0], saved[2], strict=True):
            handler.setFormatter(formatter)
    assert len(lines) == 2  # one line per record, the newline in the message escaped
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "applied 5 rows\nof trade"
    assert {k: first[k] for k in ("level", "logger", "role", "node", "table", "partition")} == {
        "level": "info", "logger": "tickplant.rdb", "role": "rdb", "node": "rdb-1", "table": "trade", "partition": 3}
    assert first["time"].endswith("+00:00")
    assert second["level"] == "error" and "ValueError: bad block" in second["exception"]
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})), str)


def test_the_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKPLANT_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="log_format must be 'text' or 'json', not 'xml'"):
        load_settings()
    monkeypatch.setenv("TICKPLANT_LOG_FORMAT", "json")
    monkeypatch.setenv("TICKPLANT_METRICS_PORT", "70000")
    with pytest.raises(ConfigError, match="metrics_port must be a port number"):
        load_settings()


def test_the_plants_own_logs_are_json_lines(plant: MeteredPlant) -> None:
    """Every role of a plant started with log_format = json logs JSON objects, a line each,
    with its role and node; nothing else but the roles' start-up lines (print) is there:
    no terminal escapes, no half lines."""
    roles = {"rdb-1": "rdb", "cep-1": "cep", "pdb-1": "pdb", "gateway-1": "gateway"}
    records: dict[str, list[dict[str, Any]]] = {}
    for name, role in roles.items():
        lines = (plant.settings.data_dir / "logs" / f"{name}.log").read_text().splitlines()
        assert not [line for line in lines if "\x1b" in line], name
        records[name] = [json.loads(line) for line in lines if line.startswith("{")]
        assert all(r["role"] == role and r["node"] == name for r in records[name]), records[name]
        banners = [line for line in lines if not line.startswith("{") and line.strip()]
        assert len(banners) <= 2, banners  # "PDB pdb-1: capturing ...", "gateway ...: http://..."
    assert any(r["logger"] == "tickplant.pdb" and r["level"] == "info" for r in records["pdb-1"]), records["pdb-1"]
