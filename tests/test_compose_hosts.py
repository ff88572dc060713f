"""docker-compose.yml run as hosts: the file itself, so it cannot drift from what works.

No container engine runs here, so each plant service of the compose file (the ones
built from this repo) is started as what its container would run: the service's
command, with the service's environment, as a process group of its own on a
loopback address of its own (127.0.0.2, ...) and a data directory of its own. The
real broker stands in for the ``kafka`` service and SeaweedFS for ``seaweedfs``;
for ``clickhouse`` nothing listens at its address, as if that server were down (the
gateway's HDB query pool runs on its embedded chDB then). ``rdb`` runs twice, as
``--scale rdb=2`` would. A day is fed, rolled and written to S3 by the PDB; today
and history are then asked through the gateway, exact against the rows published.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import yaml
from procs import wait_until
from s3server import s3  # noqa: F401 - the SeaweedFS fixture

from gateway.client import Client, GatewayError
from ingest.feeds.synthetic import SyntheticMarket
from ingest.publisher import Tickerplant
from tickplant.kafka.broker import free_port

ROOT = Path(__file__).resolve().parent.parent
ROLES = ["eod", "rdb", "rdb", "cep", "pdb", "gateway", "feed"]  # rdb twice: --scale rdb=2


class Host:
    """One compose service's command as a host of its own."""

    def __init__(self, name: str, address: str, argv: list[str], env: dict[str, str], log: Path):
        self.name, self.address, self.log = name, address, log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "tickplant", *argv[1:]], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])


def compose_env(service: dict, replacements: dict[str, str]) -> dict[str, str]:
    env = service.get("environment") or {}
    out = {}
    for key, value in env.items():
        value = str(value)
        for old, new in replacements.items():
            value = value.replace(old, new)
        out[key] = value
    return out


def test_the_compose_topology_runs_as_hosts(broker, catalog, s3, tmp_path):  # noqa: F811 - the fixture
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert sorted(n for n, s in services.items() if "build" in s) == sorted(set(ROLES))
    prefix = f"ch{uuid.uuid4().hex[:8]}."
    dead_clickhouse = f"127.0.0.9:{free_port()}"
    replacements = {"kafka:9092": broker.settings.bootstrap, "http://seaweedfs:8333": s3.endpoint,
                    "clickhouse:8123": dead_clickhouse, "s3://tickplant/": f"s3://{s3.bucket}/{prefix}"}
    hosts: list[Host] = []
    gateway_url = ""
    try:
        for n, role in enumerate(ROLES):
            address = f"127.0.0.{n + 2}"
            env = {**os.environ, **compose_env(services[role], replacements), **s3.env(),
                   # what the container is: its own address, its own disk, this test's topics
                   "TICKPLANT_NODE_HOST": address, "TICKPLANT_GATEWAY_HOST": address,
                   "TICKPLANT_DATA_DIR": str(tmp_path / f"host-{n + 2}"), "TICKPLANT_TOPIC_PREFIX": prefix,
                   "TICKPLANT_KAFKA_PORT": str(broker.settings.kafka_port)}
            if role == "gateway":
                gateway_url = f"http://{address}:8700"
            hosts.append(Host(f"{role}@{address}", address, services[role]["command"], env,
                              tmp_path / f"{role}-{n + 2}.log"))
            if role == "eod":  # the others wait for it to be healthy (its topics and first day)
                wait_until(lambda e=env: _topics_exist(e), 60, "the eod service's topics", hosts[0].tail)
        by_role = {h.name.split("@")[0]: h for h in hosts}
        feed = by_role["feed"]
        client = Client(gateway_url, timeout=30)

        def ask(sql: str) -> list[dict] | str:
            try:
                return client.sql(sql).to_pylist()
            except GatewayError as exc:
                return str(exc)

        wait_until(lambda: isinstance(ask("SELECT count() AS n FROM trade WHERE date = today()"), list), 120,
                   "the gateway answering over today", lambda: "\n".join(h.name + ":\n" + h.tail() for h in hosts))
        wait_until(lambda: (ask("SELECT count() AS n FROM trade WHERE date = today()") or [{}])[0].get("n", 0) > 500,
                   60, "the feed's rows in the RDB")
        feed.stop()  # SIGTERM: the feed flushes and says what was acknowledged
        published = _published(feed.log.read_text())
        assert published.get("trade", 0) > 500, feed.tail()
        day1 = _open_day(ask)
        count_today = "SELECT count() AS n FROM trade WHERE date = today()"
        wait_until(lambda: ask(count_today) == [{"n": published["trade"]}], 60,
                   "every published trade in the RDBs", lambda: str(ask(count_today)))
        rolled = subprocess.run([sys.executable, "-m", "tickplant", "eod"], env=env, capture_output=True,
                                text=True, timeout=60)
        assert rolled.returncode == 0, rolled.stderr
        wait_until(lambda: day1.isoformat() in _hdb_dates(client), 120, "the PDB writing the day to S3",
                   lambda: by_role["pdb"].tail())
        market = SyntheticMarket(syms=7, seed=3)
        today, _ = market.events(700)
        with Tickerplant(broker.settings.replace(topic_prefix=prefix), catalog, mode="batch") as tp:
            tp.publish_rows("trade", today)
        by_day = "SELECT date, count() AS n FROM trade GROUP BY date ORDER BY date"
        want = [{"date": day1, "n": published["trade"]}, {"date": day1 + dt.timedelta(days=1), "n": len(today)}]
        wait_until(lambda: ask(by_day) == want, 90, "history from S3 and today from the RDBs, exact",
                   lambda: f"{ask(by_day)} != {want}")
        nodes = client.health()
        assert sorted(n["url"] for n in nodes["rdb_nodes"]) == [f"http://{h.address}:8711" for h in hosts
                                                               if h.name.startswith("rdb@")]
        assert [n["url"] for n in nodes["cep_nodes"]] == [f"http://{by_role['cep'].address}:8721"]
        for host in hosts:
            assert host.proc.poll() is None or host is feed, f"{host.name} exited:\n{host.tail()}"
        def status() -> str:
            done = subprocess.run([sys.executable, "-m", "tickplant", "status"], env=env, capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout

        def lags(text: str) -> dict[str, int]:  # the lag column of the CEP and PDB lines
            return {line.split()[0]: int(line.split()[5 if line.startswith("cep-") else 4].replace(",", ""))
                    for line in text.splitlines() if line.startswith(("cep-", "pdb-"))}

        # caught up: at most the end of day's commit marker behind in each of the 8 partitions (a
        # transaction's marker takes an offset no reader is given); a stuck reader is thousands behind
        wait_until(lambda: len(lags(status())) == 2 and max(lags(status()).values()) <= 8, 60,
                   "the CEP and the PDB caught up, as status says", status)
        text = status()
        for host in hosts:  # every node of every role, at its own address
            if host is not feed and not host.name.startswith("eod@"):
                assert host.address in text, f"{host.name} not in:\n{text}"
        assert "caught up" in text and "yes" in text, text
    finally:
        for host in reversed(hosts):
            host.stop()


def _topics_exist(env: dict[str, str]) -> bool:
    done = subprocess.run([sys.executable, "-m", "tickplant", "topics"], env=env, capture_output=True, text=True,
                          timeout=60)
    return done.returncode == 0 and "trade" in done.stdout


def _published(feed_output: str) -> dict[str, int]:
    """The feed's closing table: rows published (acknowledged) per table."""
    out = {}
    for line in feed_output.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] in ("trade", "quote"):
            out[words[0]] = int(words[1].replace(",", ""))
    return out


def _open_day(ask) -> dt.date:
    got = ask("SELECT today() AS d")
    assert isinstance(got, list), got
    return got[0]["d"]


def _hdb_dates(client: Client) -> list[str]:
    try:
        return next(t["hdb_dates"] for t in client.tables() if t["table"] == "trade")
    except (GatewayError, StopIteration):
        return []

