"""The CLI as a user runs it: up --detach, status, feed csv, eod, replay, down, and its errors."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from procs import wait_until

from tickplant.cli import build_parser
from tickplant.kafka.broker import free_port, free_port_pair, pid_alive


def tickplant(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tickplant", *args], env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "TICKPLANT_DATA_DIR": str(tmp_path / "plant"),
        "TICKPLANT_KAFKA_PORT": str(free_port_pair()),
        "TICKPLANT_FEED_RATE": "300",
        "TICKPLANT_FEED_SYMS": "10",
        "TICKPLANT_GATEWAY_PORT": str(free_port()),
        "TICKPLANT_RDB_PORT": str(free_port()),
        "TICKPLANT_CEP_PORT": str(free_port()),
    })
    return env


def test_a_users_session(cli_env, tmp_path):
    up = tickplant(cli_env, "up", "--detach")
    assert up.returncode == 0, up.stderr
    assert "tickplant is up" in up.stdout
    plant_pid = int((tmp_path / "plant" / "plant.pid").read_text())
    broker_pid = int((tmp_path / "plant" / "kafka" / "broker.pid").read_text())
    try:
        again = tickplant(cli_env, "up", "--detach")
        assert again.returncode == 1 and "already running" in again.stdout

        status = tickplant(cli_env, "status")
        assert status.returncode == 0, status.stderr
        assert "plant: running" in status.stdout
        assert "trade" in status.stdout and "quote" in status.stdout
        assert f"gateway: http://127.0.0.1:{cli_env['TICKPLANT_GATEWAY_PORT']} ok" in status.stdout, status.stdout
        assert "CEP worker" in status.stdout and "RDB worker" in status.stdout
        query = tickplant(cli_env, "query", "SELECT sym, count() AS n FROM trade WHERE date = today() GROUP BY sym")
        assert query.returncode == 0, query.stderr
        assert "row(s)" in query.stdout and "sym" in query.stdout.splitlines()[0]

        csv_path = tmp_path / "t.csv"
        csv_path.write_text(
            "time,sym,price,size,exchange\n"
            "2026-11-22T10:00:00Z,ZZTOP,10.5,100,N\n"
            "2026-11-22T10:00:01Z,ZZTOP,oops,100,N\n"
        )
        fed = tickplant(cli_env, "feed", "csv", "trade", str(csv_path))
        assert fed.returncode == 3, fed.stderr  # done, with rejects
        assert "1 rows published, 1 rejected" in fed.stdout
        assert f"{csv_path}:3: price: 'oops' is not a valid double" in fed.stdout

        eod = tickplant(cli_env, "eod")
        assert eod.returncode == 0, eod.stderr
        closed = eod.stdout.split()[1].rstrip(";")
        assert "open day is now" in eod.stdout

        replay = tickplant(cli_env, "replay", "trade", "--date", closed, "--format", "csv")
        assert replay.returncode == 0, replay.stderr
        zz = [line for line in replay.stdout.splitlines() if ",ZZTOP," in line]
        assert zz == ["1795341600000000000,ZZTOP,10.5,100,N,"]

        bad = tickplant(cli_env, "replay", "trade", "--date", "1999-01-01")
        assert bad.returncode == 2 and "no closed day 1999-01-01" in bad.stderr

        dead = tickplant(cli_env, "deadletters")
        assert "not a valid double" in dead.stdout

        # a child killed is restarted by the plant's own supervision (nobody watches a detached plant)
        state_file = tmp_path / "plant" / "plant.json"
        pdb = next(name for name in json.loads(state_file.read_text())["children"] if name.startswith("pdb"))
        old_pid = json.loads(state_file.read_text())["children"][pdb]["pid"]
        os.kill(old_pid, signal.SIGKILL)

        def restarted() -> bool:
            child = json.loads(state_file.read_text())["children"][pdb]
            return child["restarts"] >= 1 and child["pid"] != old_pid and pid_alive(child["pid"])

        wait_until(restarted, 60, "the killed PDB restarted", lambda: state_file.read_text())
    finally:
        down = tickplant(cli_env, "down")
    assert down.returncode == 0 and "stopped plant" in down.stdout
    assert not pid_alive(plant_pid) and not pid_alive(broker_pid)
    after = tickplant(cli_env, "status")
    assert "plant: not running" in after.stdout
    assert after.returncode == 2 and "unreachable" in after.stderr and "tickplant up" in after.stderr


def test_port_taken_is_a_clear_error(cli_env):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", int(cli_env["TICKPLANT_KAFKA_PORT"])))
        sock.listen()
        result = tickplant(cli_env, "up")
    assert result.returncode == 2
    assert f"port {cli_env['TICKPLANT_KAFKA_PORT']} on 127.0.0.1 is taken" in result.stderr


def test_java_missing_is_a_clear_error(cli_env):
    env = {**cli_env, "PATH": str(Path(sys.executable).parent)}
    result = tickplant(env, "up")
    assert result.returncode == 2
    assert "Java is not installed" in result.stderr


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command the parser knows, as argument prefixes."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found.extend(_commands(sub, (*prefix, name)))
    return found


def test_help_on_every_command(capsys):
    """Every command the parser has, found by walking it (a new command is covered at once),
    answers --help with its own usage."""
    result = tickplant(dict(os.environ), "--help", timeout=30)  # the installed entry point
    assert result.returncode == 0 and "usage: tickplant" in result.stdout
    commands = _commands(build_parser())
    assert len(commands) >= 17 and ("hdb", "backfill") in commands, commands
    for command in commands:
        with pytest.raises(SystemExit) as stop:
            build_parser().parse_args([*command, "--help"])
        out = capsys.readouterr().out
        assert stop.value.code == 0 and out.startswith(f"usage: tickplant {' '.join(command)}"), (command, out)
