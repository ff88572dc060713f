"""The plant's child processes (RDB workers, later CEP, PDB, gateway): start, watch, restart, stop.

Each child is ``python -m tickplant ...`` with the plant's settings passed as
TICKPLANT_* variables, its output in ``<data_dir>/logs/<name>.log``. One that
dies is restarted (a crash must not end the plant), at most every few seconds.

A child dies with the plant: the kernel sends it SIGTERM when the supervising
process ends, kill -9 included (PR_SET_PDEATHSIG, as the embedded broker has).
Whatever survives anyway (a plant of an older version, a child started by
hand) is found by what it holds, not by a pid file: ``plant_processes`` lists
the tickplant processes whose environment names the data directory, and
brokers whose command line reads their configuration from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tickplant.config import Settings
from tickplant.kafka.broker import _die_with_parent, stop_pid

RESTART_DELAY = 3.0


@dataclass
class Child:
    name: str
    argv: list[str]
    settings: Settings
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = Path(self.settings.data_dir) / "logs" / f"{self.name}.log"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.settings.child_env()}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tickplant", *self.argv], env=env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        self.started_at = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def watch(self) -> str | None:
        """Restart the child if it died; return a line saying so, else None."""
        if self.proc is None or self.alive or time.monotonic() - self.started_at < RESTART_DELAY:
            return None
        code = self.proc.returncode
        self.restarts += 1
        self.start()
        return f"{self.name} exited with code {code}; restarted (restart {self.restarts}, log {self.log_path})"

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid, timeout)
        if self.proc is not None:
            self.proc.wait()


class Supervisor:
    def __init__(self) -> None:
        self.children: list[Child] = []

    def add(self, child: Child) -> Child:
        self.children.append(child)
        child.start()
        return child

    def watch(self) -> list[str]:
        return [line for child in self.children if (line := child.watch())]

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()


def rdb_worker_child(settings: Settings, index: int, replica: int = 0) -> Child:
    """Worker ``index`` of replica group ``replica`` (0 = "a", 1 = "b", ...)."""
    name = "abcdefghijklmnopqrstuvwxyz"[replica]
    node = f"rdb-{index + 1}" if replica == 0 else f"rdb-{name}{index + 1}"
    port = settings.rdb_port + replica * settings.rdb_workers + index
    return Child(
        node,
        ["rdb", "worker", "--id", node, "--port", str(port), "--memory-mb", str(settings.rdb_memory_mb),
         "--replica", name],
        settings,
    )


def cep_child(settings: Settings, index: int = 0) -> Child:
    port = settings.cep_port + index
    return Child(f"cep-{index + 1}", ["cep", "run", "--id", f"cep-{index + 1}", "--port", str(port),
                                      "--bar-seconds", str(settings.cep_bar_seconds),
                                      "--grace-seconds", str(settings.cep_grace_seconds)], settings)


def pdb_child(settings: Settings) -> Child:
    # the plant's own process listens on metrics_port (it runs the feed and the EOD timer)
    port = settings.metrics_port + 1 if settings.metrics_port else 0
    return Child("pdb-1", ["pdb", "run", "--id", "pdb-1", "--metrics-port", str(port)], settings)


def gateway_child(settings: Settings) -> Child:
    return Child("gateway-1", ["gateway", "run", "--id", "gateway-1"], settings)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return b""


def plant_processes(settings: Settings) -> list[tuple[int, str]]:
    """(pid, command line) of every live process of the plant in ``settings.data_dir``:
    ``python -m tickplant`` processes whose TICKPLANT_DATA_DIR is that directory, and
    Kafka brokers started with a configuration file under it. This process is left out."""
    data_dir = Path(settings.data_dir).resolve()
    kafka_home = str(data_dir / "kafka") + "/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        argv = [a.decode(errors="replace") for a in _read(entry / "cmdline").split(b"\0") if a]
        if not argv:
            continue
        ours = False
        if "-m" in argv and "tickplant" in argv[argv.index("-m") + 1:argv.index("-m") + 2]:
            env = dict(kv.split(b"=", 1) for kv in _read(entry / "environ").split(b"\0") if b"=" in kv)
            held = env.get(b"TICKPLANT_DATA_DIR")
            if held is not None:
                held_dir = Path(held.decode(errors="replace"))
                if not held_dir.is_absolute():
                    held_dir = Path(os.readlink(entry / "cwd")) / held_dir if (entry / "cwd").exists() else held_dir
                ours = held_dir.resolve() == data_dir
        elif any(a.startswith(kafka_home) for a in argv) and any(a == "kafka.Kafka" for a in argv):
            ours = True
        if ours:
            found.append((int(entry.name), " ".join(argv)))
    return found


def stop_leftovers(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Stop what ``plant_processes`` finds (children first, brokers last); what was stopped."""
    stopped = []
    found = sorted(plant_processes(settings), key=lambda p: "kafka.Kafka" in p[1])
    for pid, cmdline in found:
        stop_pid(pid, timeout)
        stopped.append(f"leftover pid {pid} ({cmdline[:80]})")
    return stopped
