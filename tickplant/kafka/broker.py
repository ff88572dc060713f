"""The embedded broker: one real Apache Kafka node in KRaft mode, owned by the plant.

Its storage lives under ``<data_dir>/kafka`` and is formatted on first start.
The broker is started as a child that dies with its parent (PR_SET_PDEATHSIG),
and its pid is recorded so ``tickplant down`` can stop one left by a crash.
"""

from __future__ import annotations

import base64
import ctypes
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from tickplant.config import Settings
from tickplant.kafka.jars import LOG4J, KafkaSetupError, ensure_jars, java_binary

PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The broker could not start or stop; the message carries the reason and log tail."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port free now (for tests, benchmarks and extra workers), picked below the ephemeral range.

    A port from bind(0) comes from the range the kernel also uses for the source
    ports of outgoing connections, so between our pick and the server's bind a
    Kafka client or HTTP pool can take it ("address already in use" in CI).
    Ports below that range are only ever taken by someone binding on purpose.
    """
    low, _ = _ephemeral_range()
    floor = 10000 if low > 12000 else 1024
    for _ in range(200):
        port = random.randrange(floor, low)
        if port not in _handed_out and port_is_free(port):
            _handed_out.add(port)
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_pair() -> int:
    """A free port p with p+1 free too: an embedded broker and its controller."""
    for _ in range(50):
        port = free_port()
        if port_is_free(port + 1):
            return port
    raise BrokerError("no free pair of ports on 127.0.0.1")


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedKafka:
    """Start, wait for, and stop a single-node KRaft broker on loopback."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = Path(settings.data_dir).resolve() / "kafka"
        self.log_dirs = self.home / "data"
        self.log_file = self.home / "broker.log"
        self.pid_file = self.home / "broker.pid"
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.settings.kafka_port}"

    def _properties(self) -> str:
        s = self.settings
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{s.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={self.log_dirs}",
            f"num.partitions={s.partitions}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            f"log.retention.hours={s.retention_hours}",
            "message.max.bytes=8388608",
            "",
        ])

    def format_args(self) -> list[str]:
        """More arguments for formatting the storage (SCRAM users, for a secured broker)."""
        return []

    def _java(self, libs: Path, main: str, *args: str, heap: str = "256m") -> list[str]:
        return [
            java_binary(), f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{LOG4J}", "-cp", f"{libs}/*", main, *args,
        ]

    def _format(self, libs: Path, props: Path) -> None:
        if (self.log_dirs / "meta.properties").exists():
            return
        cid = "-"
        while cid.startswith("-"):  # as Kafka's Uuid.randomUuid: a leading dash reads as an option
            cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        result = subprocess.run(
            self._java(libs, "kafka.tools.StorageTool", "format", "-t", cid, "-c", str(props), *self.format_args()),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise BrokerError(f"formatting Kafka storage in {self.log_dirs} failed:\n{result.stdout}{result.stderr}")

    def running_pid(self) -> int | None:
        """The pid of a broker this data directory started and that is still alive."""
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def start(self, timeout: float = 90.0) -> None:
        s = self.settings
        leftover = self.running_pid()
        if leftover:
            raise BrokerError(
                f"a broker started from {s.data_dir} is still running (pid {leftover}); "
                "run 'tickplant down' first"
            )
        for port in (s.kafka_port, s.controller_port):
            if not port_is_free(port):
                raise BrokerError(
                    f"port {port} on 127.0.0.1 is taken (another Kafka or program?); "
                    "set kafka_port (TICKPLANT_KAFKA_PORT) to a free port"
                )
        libs = ensure_jars()
        self.home.mkdir(parents=True, exist_ok=True)
        props = self.home / "server.properties"
        props.write_text(self._properties())
        self._format(libs, props)
        log = open(self.log_file, "ab")
        self.process = subprocess.Popen(
            self._java(libs, "kafka.Kafka", str(props), heap=s.kafka_heap),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        log.close()
        self.pid_file.write_text(str(self.process.pid))
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def died(self) -> bool:
        """Started by us and no longer running (killed, crashed)."""
        return self.process is not None and self.process.poll() is not None

    def restart(self, timeout: float = 90.0) -> int | None:
        """Start again after a death, on the same ports and data (the log survives a
        kill -9: acknowledged writes are in the page cache and on disk). Returns the
        dead process's exit code."""
        code = self.process.returncode if self.process else None
        self.process = None
        self.pid_file.unlink(missing_ok=True)
        deadline = time.monotonic() + 30
        while not all(port_is_free(p) for p in (self.settings.kafka_port, self.settings.controller_port)):
            if time.monotonic() > deadline:
                break  # start() says which port is taken
            time.sleep(0.2)
        self.start(timeout)
        return code

    def _wait_ready(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        admin = AdminClient(self.settings.kafka_config(**{"bootstrap.servers": self.bootstrap}))
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise BrokerError(f"the Kafka broker exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                meta = admin.list_topics(timeout=1.0)
                if meta.brokers:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.2)
        raise BrokerError(f"the Kafka broker did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no broker log)"

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM for a clean shutdown (the log is flushed), SIGKILL if it hangs."""
        pid = self.process.pid if self.process else self.running_pid()
        if pid is None:
            return
        stop_pid(pid, timeout)
        if self.process:
            self.process.wait()
        self.pid_file.unlink(missing_ok=True)
        self.process = None

    def kill(self) -> None:
        """kill -9, as a crash would: for fault tests."""
        if self.process:
            self.process.kill()
            self.process.wait()
            self.process = None
        self.pid_file.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedKafka:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_pid(pid: int, timeout: float = 30.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            if not pid_alive(pid):
                return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


__all__ = ["BrokerError", "EmbeddedKafka", "KafkaSetupError", "free_port", "free_port_pair", "port_is_free",
           "stop_pid"]
