"""The plant's children die with it, and ``tickplant down`` finds leftovers by the data
directory they hold, not by a pid file (issue 20)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from procs import wait_until

from ingest.eod import open_first_day
from tickplant.kafka.broker import pid_alive

SUPERVISE = """
import time
from tickplant.config import load_settings
from tickplant.supervisor import Supervisor, pdb_child
child = Supervisor().add(pdb_child(load_settings()))
print(child.proc.pid, flush=True)
time.sleep(600)
"""


def _env(settings) -> dict[str, str]:
    return {**os.environ, **settings.child_env()}


def test_children_die_with_a_killed_supervisor(settings):
    parent = subprocess.Popen([sys.executable, "-c", SUPERVISE], env=_env(settings), stdout=subprocess.PIPE,
                              text=True)
    child = 0
    try:
        child = int(parent.stdout.readline())
        assert pid_alive(child)
        time.sleep(2)  # the child is well under way (imports done, consumer made)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_until(lambda: not pid_alive(child), 30, "the child to die with its supervisor")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child and pid_alive(child):
            os.kill(child, signal.SIGKILL)


def test_down_stops_leftovers_found_by_their_data_dir(settings, catalog, tmp_path):
    other = settings.replace(data_dir=tmp_path / "other-plant", topic_prefix=settings.topic_prefix + "o.")
    for s in (settings, other):
        open_first_day(s, catalog)  # a plant's topics and day: the PDBs start at once
    procs = [subprocess.Popen([sys.executable, "-m", "tickplant", "pdb", "run", "--id", "pdb-orphan"],
                              env=_env(s), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # not a child of any plant: no pid file names it
             for s in (settings, other)]
    try:
        time.sleep(2)
        assert all(p.poll() is None for p in procs)
        # reap the orphan as init would (here it is this process's child): a zombie still answers kill 0
        reaper = threading.Thread(target=procs[0].wait, daemon=True)
        reaper.start()
        down = subprocess.run([sys.executable, "-m", "tickplant", "down"], env=_env(settings),
                              capture_output=True, text=True, timeout=90)
        assert down.returncode == 0, down.stderr
        assert f"leftover pid {procs[0].pid}" in down.stdout, down.stdout
        procs[0].wait(30)
        assert procs[1].poll() is None, "down stopped a process of another data directory"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
