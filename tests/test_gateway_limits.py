"""Limits per user and per query: one caller cannot take the gateway from the others.

A real gateway app (FastAPI, embedded chDB, the real broker for its routing) with no plant
table in the statements: what is limited here is the gateway's own work."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.auth import Unauthorized, Users, hash_key
from ingest.eod import open_first_day

USERS = {"users": {
    "amy": {"keys": [hash_key("amy-key")], "tables": {"trade": {}}},
    "ben": {"keys": [hash_key("ben-key")], "tables": {"trade": {}}},
}}
AMY, BEN = {"X-API-Key": "amy-key"}, {"X-API-Key": "ben-key"}


@pytest.fixture(scope="module")
def gateway(broker, catalog, tmp_path_factory):
    limited = broker.settings.replace(
        topic_prefix=f"lim{uuid.uuid4().hex[:8]}.", data_dir=tmp_path_factory.mktemp("limits") / "plant",
        gateway_user_queries=2, gateway_max_statement_bytes=4096, gateway_max_memory_mb=64,
        gateway_max_result_mb=1, gateway_timeout_s=20)
    open_first_day(limited, catalog)
    app = create_app(limited, users=Users.from_dict(USERS))
    with TestClient(app) as client:
        yield app.state.gateway, client


def test_a_users_queries_past_the_limit_are_refused_at_once_and_others_still_run(gateway):
    gw, client = gateway
    with gw.running.admit("amy"), gw.running.admit("amy"):  # amy's two queries are running
        started = time.monotonic()
        refused = client.post("/v1/sql", json={"query": "SELECT 1 AS x"}, headers=AMY)
        assert refused.status_code == 429 and "gateway_user_queries" in refused.json()["error"]
        assert time.monotonic() - started < 5
        ok = client.post("/v1/sql", json={"query": "SELECT 1 AS x"}, headers=BEN)  # ben is not held up
        assert ok.status_code == 200 and ok.json()["rows"] == [{"x": 1}]
    assert client.post("/v1/sql", json={"query": "SELECT 1 AS x"}, headers=AMY).status_code == 200


def test_the_wait_for_a_busy_engine_counts_in_the_timeout(gateway):
    gw, client = gateway
    pool = gw.engine.hdb.pool
    held = []
    while pool._slots.acquire(blocking=False):  # every ClickHouse client busy
        held.append(1)
    try:
        started = time.monotonic()
        resp = client.post("/v1/sql", json={"query": "SELECT 1 AS x", "timeout": 1.5}, headers=BEN)
        waited = time.monotonic() - started
        assert resp.status_code == 408 and "waiting for the query engine" in resp.json()["error"], resp.text
        assert 1.0 <= waited < 5, waited
    finally:
        for _ in held:
            pool._slots.release()
    assert client.post("/v1/sql", json={"query": "SELECT 1 AS x"}, headers=BEN).status_code == 200


def test_a_statement_or_body_over_the_limit_is_413_before_parsing(gateway):
    _, client = gateway
    long = "SELECT " + "+".join(["1"] * 3000) + " AS x"
    resp = client.post("/v1/sql", json={"query": long}, headers=BEN)
    assert resp.status_code == 413 and "gateway_max_statement_bytes" in resp.json()["error"]
    body = b'{"query": "SELECT 1", "pad": "' + b"x" * 2_000_000 + b'"}'
    started = time.monotonic()
    resp = client.post("/v1/sql", content=body, headers={**BEN, "Content-Type": "application/json"})
    assert resp.status_code == 413 and "request body" in resp.json()["error"]

    def chunks():
        yield b'{"query": "SELECT 1", "pad": "'
        for _ in range(100):
            yield b"x" * 100_000
        yield b'"}'

    resp = client.post("/v1/sql", content=chunks(), headers={**BEN, "Content-Type": "application/json"})
    assert resp.status_code == 413, resp.text
    assert time.monotonic() - started < 10


def test_a_querys_memory_and_answer_size_are_bounded(gateway):
    _, client = gateway
    big = client.post("/v1/sql", json={"query": "SELECT length(groupArray(x)) AS n FROM "
                                                "(SELECT arrayJoin(range(30000000)) AS x)"}, headers=BEN)
    assert big.status_code == 413 and "gateway_max_memory_mb" in big.json()["error"], big.text
    wide = client.post("/v1/sql", json={"query": "SELECT repeat('x', 1000) AS s FROM "
                                                 "(SELECT arrayJoin(range(5000)) AS i)"}, headers=BEN)
    assert wide.status_code == 413 and "gateway_max_result_mb" in wide.json()["error"], wide.text
    fine = client.post("/v1/sql", json={"query": "SELECT repeat('x', 10) AS s FROM "
                                                 "(SELECT arrayJoin(range(200)) AS i)"}, headers=BEN)
    assert fine.status_code == 200 and len(fine.json()["rows"]) == 200


def test_concurrent_users_each_get_their_answers(gateway):
    _, client = gateway
    answers: dict[str, list[int]] = {"amy": [], "ben": []}

    def ask(name: str, headers: dict) -> None:
        for _ in range(5):
            answers[name].append(client.post("/v1/sql", json={"query": "SELECT 1 AS x"}, headers=headers).status_code)

    threads = [threading.Thread(target=ask, args=a) for a in (("amy", AMY), ("ben", BEN))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == {"amy": [200] * 5, "ben": [200] * 5}


def test_one_users_heavy_queries_do_not_hold_up_another_users_small_one(gateway):
    """The issue's case: cross joins from one user, a trivial query from another."""
    gw, client = gateway
    heavy = ("SELECT count() AS n FROM (SELECT arrayJoin(range(100000)) AS a) AS x "
             "CROSS JOIN (SELECT arrayJoin(range(100000)) AS b) AS y WHERE (a * b) % 7 = 3")
    statuses: list[int] = []

    def run_heavy() -> None:
        statuses.append(client.post("/v1/sql", json={"query": heavy, "timeout": 8}, headers=AMY).status_code)

    threads = [threading.Thread(target=run_heavy) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while gw.running._running.get("amy", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gw.running._running.get("amy") == 2
    assert client.post("/v1/sql", json={"query": heavy}, headers=AMY).status_code == 429
    small = client.post("/v1/sql", json={"query": "SELECT 42 AS x"}, headers=BEN)
    assert small.status_code == 200 and small.json()["rows"] == [{"x": 42}]
    assert gw.running._running.get("amy") == 2, "ben's answer came only after amy's queries ended"
    for t in threads:
        t.join(30)
    assert statuses == [408, 408]


def test_grants_changed_in_the_users_file_take_effect_within_two_seconds(broker, catalog, tmp_path):
    path = tmp_path / "users.toml"
    path.write_text('[users.cy]\nkeys = ["cy-key-0123456789abcdef"]\n[users.cy.tables.quote]\n')
    settings = broker.settings.replace(topic_prefix=f"usr{uuid.uuid4().hex[:8]}.", data_dir=tmp_path / "plant",
                                       gateway_users_file=str(path))
    open_first_day(settings, catalog)
    cy = {"X-API-Key": "cy-key-0123456789abcdef"}

    def tables() -> set[str] | int:
        resp = client.get("/v1/tables", headers=cy)
        return {t["table"] for t in resp.json()["tables"]} if resp.status_code == 200 else resp.status_code

    def granted() -> set[str] | int:
        """What the gateway in force grants cy (asked in-process: no request's latency counted)."""
        try:
            user = gw.users.authenticate(cy["X-API-Key"])
        except Unauthorized:
            return 401
        return {t for t in ("trade", "quote") if user.grant_for(t) is not None}

    def within_2s(want: object, what: str) -> None:
        changed = time.monotonic()
        while granted() != want:
            assert time.monotonic() - changed < 2.0, f"{what} not in force within 2 s"
            time.sleep(0.05)
        assert tables() == want  # and so it answers

    app = create_app(settings)
    gw = app.state.gateway
    with TestClient(app) as client:
        assert tables() == {"quote"}
        assert client.post("/v1/sql", json={"query": "SELECT count() FROM trade"}, headers=cy).status_code == 403
        path.write_text('[users.cy]\nkeys = ["cy-key-0123456789abcdef"]\n[users.cy.tables.trade]\n')
        within_2s({"trade"}, "the new grant")
        path.write_text('[users.cy]\nkeys = ["cy-key-0123456789abcdef"]\n[users.cy.tables.nosuchtable]\n')
        time.sleep(1.0)  # a wrong file is refused when read: the last good one stays in force
        assert tables() == {"trade"}
        path.write_text('[users.dee]\nkeys = ["dee-key-0123456789abcdef"]\nadmin = true\n')
        within_2s(401, "the removal of the user")


def test_the_anonymous_user_of_a_local_plant_is_not_limited():
    from gateway.admission import RunningQueries

    running = RunningQueries(1)
    with running.admit("anonymous", limited=False), running.admit("anonymous", limited=False):
        with pytest.raises(Exception, match="gateway_user_queries"), running.admit("anonymous"):
            pass
