"""The embedded broker: real Apache Kafka in KRaft mode, owned by the plant.

One node by default, its storage under ``<data_dir>/kafka``, formatted on first
start; or, with ``kafka_brokers = 3`` (``tickplant up --brokers 3``), a cluster
as Amazon MSK gives: three nodes, each broker and controller, on ports
``kafka_port``, +2, +4 (controllers +1), storage under ``<data_dir>/kafka/node-N``,
every topic replicated three ways with two replicas in sync for a write to be
acknowledged, so a broker can die without losing an acknowledged row. Each
broker is started as a child that dies with its parent (PR_SET_PDEATHSIG), and
its pid is recorded so ``tickplant down`` can stop one left by a crash.
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
from concurrent.futures import ThreadPoolExecutor
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
    """Start, wait for, and stop one KRaft node on loopback: the whole broker, or node
    ``node`` of a cluster of ``settings.kafka_brokers``."""

    def __init__(self, settings: Settings, node: int = 1):
        self.settings = settings
        self.node = node
        self.nodes = settings.kafka_brokers
        root = Path(settings.data_dir).resolve() / "kafka"
        self.home = root if self.nodes == 1 else root / f"node-{node}"
        self.cluster_id_file = root / "cluster.id"
        self.log_dirs = self.home / "data"
        self.log_file = self.home / "broker.log"
        self.pid_file = self.home / "broker.pid"
        self.port = settings.broker_port(node)
        self.controller_port = settings.controller_port if self.nodes == 1 else self.port + 1
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _properties(self) -> str:
        s = self.settings
        if self.nodes == 1:
            voters = f"1@127.0.0.1:{self.controller_port}"
        else:
            voters = ",".join(f"{n}@127.0.0.1:{s.broker_port(n) + 1}" for n in range(1, self.nodes + 1))
        copies = min(3, self.nodes)
        in_sync = 2 if self.nodes >= 3 else 1
        return "\n".join([
            "process.roles=broker,controller",
            f"node.id={self.node}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={self.log_dirs}",
            f"num.partitions={s.partitions}",
            f"default.replication.factor={copies}",
            f"min.insync.replicas={in_sync}",
            f"offsets.topic.replication.factor={copies}",
            "offsets.topic.num.partitions=4",
            f"transaction.state.log.replication.factor={copies}",
            f"transaction.state.log.min.isr={in_sync}",
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

    def _cluster_id(self) -> str:
        """A new id for a single node; the one id every node of a cluster is formatted with."""
        if self.nodes > 1 and self.cluster_id_file.exists():
            return self.cluster_id_file.read_text().strip()
        cid = "-"
        while cid.startswith("-"):  # as Kafka's Uuid.randomUuid: a leading dash reads as an option
            cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if self.nodes > 1:
            self.cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
            self.cluster_id_file.write_text(cid)
        return cid

    def _format(self, libs: Path, props: Path) -> None:
        if (self.log_dirs / "meta.properties").exists():
            return
        cid = self._cluster_id()
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
        self.launch()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def launch(self) -> None:
        """Start the node's process (formatting its storage the first time), not waiting."""
        s = self.settings
        leftover = self.running_pid()
        if leftover:
            raise BrokerError(
                f"a broker started from {s.data_dir} is still running (pid {leftover}); "
                "run 'tickplant down' first"
            )
        for port in (self.port, self.controller_port):
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
        while not all(port_is_free(p) for p in (self.port, self.controller_port)):
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


class EmbeddedCluster:
    """``kafka_brokers`` KRaft nodes on loopback, each broker and controller: started
    together (a node is ready only once a majority of controllers vote), stopped together,
    and any one killed and restarted alone (what a broker dying on MSK looks like)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.nodes = [EmbeddedKafka(settings, n) for n in range(1, settings.kafka_brokers + 1)]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def start(self, timeout: float = 120.0) -> None:
        try:
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node._wait_ready(timeout)
            self._wait_all_registered(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_all_registered(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self.settings.kafka_config(**{"bootstrap.servers": self.bootstrap}))
        deadline = time.monotonic() + timeout
        while len(admin.list_topics(timeout=5).brokers) < len(self.nodes):
            if time.monotonic() > deadline:
                raise BrokerError(f"not every broker of the cluster registered within {timeout:.0f}s:\n"
                                  f"{self.log_tail()}")
            time.sleep(0.2)

    @property
    def died(self) -> bool:
        return any(node.died for node in self.nodes)

    def restart(self, timeout: float = 120.0) -> int | None:
        """Start the nodes that died again; the exit code of the first of them."""
        codes = [node.restart(timeout) for node in self.nodes if node.died]
        return codes[0] if codes else None

    def running_pid(self) -> int | None:
        return next((pid for pid in (node.running_pid() for node in self.nodes) if pid), None)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(f"-- node {n.node}:\n{n.log_tail(lines // len(self.nodes) + 1)}" for n in self.nodes)

    def stop(self, timeout: float = 30.0) -> None:
        """Every node at once: stopped one by one, the last of a cluster that lost a node is
        alone, without the majority of controllers its clean shutdown waits for."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.stop(timeout), self.nodes))

    def __enter__(self) -> EmbeddedCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def embedded_broker(settings: Settings) -> EmbeddedKafka | EmbeddedCluster:
    """The plant's own broker: one node, or a cluster of ``kafka_brokers``."""
    return EmbeddedCluster(settings) if settings.kafka_brokers > 1 else EmbeddedKafka(settings)


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


__all__ = ["BrokerError", "EmbeddedCluster", "EmbeddedKafka", "embedded_broker", "KafkaSetupError", "free_port", "free_port_pair", "port_is_free",
           "stop_pid"]
