"""A real Prometheus server (Debian's ``prometheus`` package) scraping a running plant, with
the plant's own scrape config (deploy/prometheus/prometheus.yml) pointed at its ports.

Used by tests/test_metrics.py (every alert and dashboard query returns series) and by
``python -m bench dashboard`` (the dashboard's queries drawn from a real plant).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tickplant.config import REPO_ROOT
from tickplant.kafka.broker import free_port, stop_pid

DEPLOY = REPO_ROOT / "deploy"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERT_RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "tickplant.json"


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not start, or refused a query."""


def binary(name: str = "prometheus") -> str:
    path = shutil.which(name)
    if path is None:
        raise PrometheusError(f"{name} is not installed (Debian: apt-get install prometheus; `make setup` does it as root)")
    return path


def plant_config(targets: dict[str, list[str]], interval: str = "1s") -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with each job's static targets replaced by ``targets``
    (jobs not given are dropped), the alert rules by absolute path, scraped every ``interval``."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    unknown = set(targets) - set(jobs)
    if unknown:
        raise PrometheusError(f"no job {sorted(unknown)} in {SCRAPE_CONFIG}; it has {sorted(jobs)}")
    config["scrape_configs"] = [{**jobs[name], "static_configs": [{"targets": where}]}
                                for name, where in targets.items()]
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = [str(ALERT_RULES)]
    return config


def dashboard_queries(path: Path = DASHBOARD) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each panel's title and its (expression, legend) pairs."""
    panels = json.loads(path.read_text())["panels"]
    return [(p["title"], [(t["expr"], t.get("legendFormat", "")) for t in p["targets"]]) for p in panels]


def alert_rules(path: Path = ALERT_RULES) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


class PrometheusServer:
    """``prometheus`` on a free loopback port with its own data directory; stopped by pid."""

    def __init__(self, config: dict[str, Any], workdir: Path, port: int | None = None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = self.workdir / "prometheus.yml"
        self.config = config
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=1))  # YAML reads JSON
        log = open(self.workdir / "prometheus.log", "ab")  # noqa: SIM115 - the child writes it until stopped
        self.proc = subprocess.Popen(
            [binary(), f"--config.file={self.config_path}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with code {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {timeout:.0f}s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.workdir / "prometheus.log").read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def api(self, path: str, **params: Any) -> Any:
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"{path} {params}: {exc.code} {exc.read()[:500]!r}") from exc
        if answer.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {answer}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one series) ``expr`` evaluates to now."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def alerts(self) -> list[dict[str, Any]]:
        return self.api("alerts")["alerts"]

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid, 20)  # SIGTERM, then SIGKILL past the timeout
            self.proc.wait()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MeteredPlant:
    """``tickplant up --detach`` on free ports with its metrics on: the RDB, CEP and gateway on
    their own ports, the plant's process on ``metrics_port`` and its PDB on + 1. Stopped with
    ``tickplant down`` (which stops what this plant started, its embedded broker included)."""

    def __init__(self, settings: Any):
        from tickplant.kafka.broker import free_port_pair

        self.settings = settings.replace(
            rdb_port=free_port(), cep_port=free_port(), gateway_port=free_port(), metrics_port=free_port_pair(),
            rdb_workers=1, rdb_replicas=1, cep_workers=1,
        )

    @property
    def env(self) -> dict[str, str]:
        import os

        return {**os.environ, **self.settings.child_env()}

    def tickplant(self, *argv: str, timeout: float = 240.0) -> subprocess.CompletedProcess:
        import sys

        return subprocess.run([sys.executable, "-m", "tickplant", *argv], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def start(self) -> MeteredPlant:
        done = self.tickplant("up", "--detach")
        if done.returncode != 0:
            raise RuntimeError(f"tickplant up failed ({done.returncode}): {done.stderr or done.stdout}")
        return self

    def stop(self) -> None:
        self.tickplant("down", timeout=120)

    @property
    def targets(self) -> dict[str, list[str]]:
        s = self.settings
        return {"rdb": [f"127.0.0.1:{s.rdb_port}"], "cep": [f"127.0.0.1:{s.cep_port}"],
                "gateway": [f"127.0.0.1:{s.gateway_port}"], "plant": [f"127.0.0.1:{s.metrics_port}"],
                "pdb": [f"127.0.0.1:{s.metrics_port + 1}"]}

    def metrics_url(self, job: str) -> str:
        return f"http://{self.targets[job][0]}/metrics"
