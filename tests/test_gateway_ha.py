"""Several gateways: a client given all of them sees no error when one is killed.

Two ``tickplant gateway run`` processes, each a "host" of its own (its own loopback address
and data directory), on the real broker; the Python client and ``tickplant query`` are
given both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

from procs import plant_env, stop_group, wait_until

from gateway.client import Client, GatewayError
from ingest.eod import open_first_day
from ingest.metadata import read_metadata
from tickplant.kafka.broker import free_port


def test_a_gateway_killed_while_a_client_queries_through_two(broker, catalog, tmp_path):
    settings = broker.settings.replace(topic_prefix=f"ha{uuid.uuid4().hex[:8]}.", data_dir=tmp_path / "shared")
    open_first_day(settings, catalog)
    port = free_port()
    hosts = ["127.0.0.2", "127.0.0.3"]
    procs = {}
    for n, host in enumerate(hosts):
        env = {**plant_env(settings), "TICKPLANT_DATA_DIR": str(tmp_path / f"host{n}"),
               "TICKPLANT_GATEWAY_HOST": host, "TICKPLANT_GATEWAY_PORT": str(port),
               "TICKPLANT_INTERNAL_SECRET": "one-secret-for-the-plant"}
        log = open(tmp_path / f"gateway-{n}.log", "wb")
        procs[host] = subprocess.Popen([sys.executable, "-m", "tickplant", "gateway", "run", "--id", f"gw-{n}"],
                                       env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    urls = [f"http://{h}:{port}" for h in hosts]
    try:
        for url in urls:
            wait_until(lambda u=url: _answers(u), 90, f"the gateway at {url}")
        wait_until(lambda: sorted(r.url for r in read_metadata(settings).values() if r.kind == "gateway")
                   == urls, 30, "both gateways announced on the metadata topic")
        status = subprocess.run([sys.executable, "-m", "tickplant", "status"], env=plant_env(settings),
                                capture_output=True, text=True, timeout=60)
        assert all(url in status.stdout for url in urls), status.stdout + status.stderr
        answers: list[object] = []
        done = threading.Event()

        def ask() -> None:
            with Client(urls, timeout=30) as client:
                while not done.is_set():
                    try:
                        answers.append(client.sql("SELECT 7 AS x").to_pylist())
                    except GatewayError as exc:
                        answers.append(exc)

        asking = threading.Thread(target=ask)
        asking.start()
        wait_until(lambda: len(answers) >= 20, 30, "answers through the first gateway")
        os.killpg(procs[hosts[0]].pid, signal.SIGKILL)
        procs[hosts[0]].wait()
        killed_at = len(answers)
        wait_until(lambda: len(answers) >= killed_at + 50, 60, "answers after the kill")
        done.set()
        asking.join(30)
        assert all(a == [{"x": 7}] for a in answers), [a for a in answers if a != [{"x": 7}]][:3]
        out = subprocess.run([sys.executable, "-m", "tickplant", "query", "SELECT 8 AS y", "--url", ",".join(urls)],
                             env=plant_env(settings), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "8" in out.stdout, out.stderr
    finally:
        for proc in procs.values():
            stop_group(proc)


def _answers(url: str) -> bool:
    try:
        with Client(url, timeout=5) as client:
            return client.sql("SELECT 1 AS x").to_pylist() == [{"x": 1}]
    except GatewayError:
        time.sleep(0.2)
        return False
