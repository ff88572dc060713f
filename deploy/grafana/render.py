"""Draw deploy/grafana/tickplant.json's panels from a real plant: docs/dashboard.png.

Grafana is not installable here, so this runs what the dashboard would show: a throwaway
plant (``tickplant up`` with its metrics on, its own embedded broker), a real Prometheus
(Debian's package) scraping it with deploy/prometheus/prometheus.yml, a few minutes of
activity (the synthetic feed, queries through the gateway, one refused message, an end
of day), then each panel's queries over that window (``query_range``) drawn in the
dashboard's grid with matplotlib. The picture is the dashboard's queries, not Grafana's
rendering of them.

    python deploy/grafana/render.py [--minutes 4] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for bench/ and the plant

from bench.promserver import DASHBOARD, MeteredPlant, PrometheusServer, plant_config  # noqa: E402
from tickplant.config import Settings  # noqa: E402
from tickplant.kafka.broker import free_port_pair  # noqa: E402

UNITS = {"bytes": (2 ** 20, "MiB"), "s": (1e-3, "ms")}  # shown as: value / scale, in this unit


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip() or "value"


def drive(plant: MeteredPlant, stop: threading.Event, junk_after: float, eod_after: float) -> None:
    """Queries through the gateway (one refused now and then), a message no reader accepts
    and, later, an end of day: what the panels show besides the feed."""
    from confluent_kafka import Producer

    from ingest.topics import TopicNames

    gateway = f"http://127.0.0.1:{plant.settings.gateway_port}/v1/sql"
    statements = ["SELECT sym, count() AS n, avg(price) FROM trade WHERE date = today() GROUP BY sym",
                  "SELECT count() FROM quote", "SELECT sym, max(price) FROM trade GROUP BY sym",
                  "SELECT nope("]
    started, junked, rolled, n = time.monotonic(), False, False, 0
    while not stop.wait(0.5):
        body = json.dumps({"query": statements[n % len(statements)]}).encode()
        n += 1
        try:
            request = urllib.request.Request(gateway, data=body, headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=30).read()
        except (urllib.error.HTTPError, OSError):
            pass
        if not junked and time.monotonic() - started > junk_after:
            producer = Producer(plant.settings.kafka_config())
            topic = TopicNames(plant.settings.topic_prefix).table("trade")
            producer.produce(topic, key=b"AAPL", value=b"junk", partition=0)
            producer.flush(30)
            junked = True
        if not rolled and time.monotonic() - started > eod_after:
            plant.tickplant("eod")
            rolled = True


def draw(prometheus: PrometheusServer, start: float, end: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = json.loads(DASHBOARD.read_text())["panels"]
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 6.4, rows * 3.2), squeeze=False)
    step = max(1.0, (end - start) / 240)
    for ax, panel in zip(axes.flat, panels, strict=False):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        scale, shown = UNITS.get(unit, (1.0, unit if unit not in ("short",) else ""))
        lines = 0
        for target in panel["targets"]:
            for series in prometheus.query_range(target["expr"], start, end, step):
                points = [(float(t) - start, float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                ax.plot([x / 60 for x in xs], [y / scale for y in ys], linewidth=1.2,
                        label=legend(target.get("legendFormat", ""), series["metric"])[:40])
                lines += 1
        ax.set_title(panel["title"], fontsize=9, loc="left")
        ax.set_ylabel(shown, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=6, loc="upper left", ncol=2 if lines > 6 else 1, framealpha=0.6)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("minutes", fontsize=8)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end))
    fig.suptitle(f"deploy/grafana/tickplant.json: each panel's PromQL against a real Prometheus scraping a "
                 f"real plant ({when}); drawn with matplotlib, not Grafana", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="how long the plant runs before drawing")
    parser.add_argument("--rate", type=float, default=1000.0, help="synthetic quote events per second")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "docs" / "dashboard.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tickplant-dashboard-") as tmp:
        settings = Settings(data_dir=Path(tmp) / "plant", kafka_port=free_port_pair(), feed_rate=args.rate,
                            feed_syms=20, partitions=4)
        plant = MeteredPlant(settings)
        print(f"starting a plant in {tmp} ...", flush=True)
        plant.start()
        stop = threading.Event()
        try:
            with PrometheusServer(plant_config(plant.targets, interval="2s"), Path(tmp) / "prometheus") as prom:
                start = time.time()
                driver = threading.Thread(target=drive, args=(plant, stop, args.minutes * 20, args.minutes * 30),
                                          daemon=True)
                driver.start()
                print(f"plant up, Prometheus at {prom.url}; running for {args.minutes:g} min ...", flush=True)
                time.sleep(args.minutes * 60)
                stop.set()
                driver.join(60)
                draw(prom, start, time.time(), args.out)
        finally:
            stop.set()
            plant.stop()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
