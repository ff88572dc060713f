"""``tickplant demo`` end to end: a whole plant, a compressed day, its EOD, answers from both."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys


def test_demo_runs_a_day_rolls_it_and_answers_from_rdb_and_hdb(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tickplant", "demo", "--data-dir", str(tmp_path),
                          "--day-seconds", "6", "--rate", "1500"],
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    today = dt.datetime.now(dt.UTC).date()
    yesterday = today - dt.timedelta(days=1)
    assert f"{yesterday} written to the HDB" in out.stdout
    history = out.stdout.split("== History and today in one table")[1].split("==")[0]
    counts = dict(re.findall(r"^(\d{4}-\d\d-\d\d)\s+([\d,]+)", history, re.M))
    assert set(counts) == {yesterday.isoformat(), today.isoformat()}, history
    assert all(int(n.replace(",", "")) > 100 for n in counts.values())
    assert "row(s)" in out.stdout.split("== aj:")[1]
    assert not list(tmp_path.glob("demo/*.pid")), "the demo plant was left running"


def test_soak_samples_every_process_and_says_flat_or_growing(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tickplant", "soak", "--data-dir", str(tmp_path),
                          "--minutes", "0.4", "--interval", "2", "--rate", "500"],
                         capture_output=True, text=True, timeout=400)
    assert out.returncode in (0, 1), out.stdout[-2000:] + out.stderr[-3000:]
    table = out.stdout.split("process")[-1]
    for process in ("plant+feed", "kafka", "rdb-1", "cep-1", "pdb-1", "gateway-1"):
        line = next(line for line in table.splitlines() if line.startswith(process))
        assert line.split()[-1] in ("flat", "GROWING", "short"), line  # "too short": few samples
    assert re.search(r"RDB lag: first \d+, last \d+, max \d+ messages", out.stdout)
    assert re.search(r"[\d,]+ rows published", out.stdout)
    assert not list(tmp_path.glob("soak/*.pid")), "the soak plant was left running"
