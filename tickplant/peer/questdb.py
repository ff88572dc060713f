"""QuestDB as a throwaway server: its jar from Maven Central, a process on free ports.

The jar (``org.questdb:questdb``, self-contained: its native libraries are
inside) is fetched once by Maven from the pom beside this file, with strict
checksums (Maven checks the SHA-1 Central publishes beside it, and refuses a
mismatch), into ``~/.cache/tickplant/questdb-<version>/`` (or under
``TICKPLANT_JAR_CACHE``), as the Kafka jars are (``tickplant.kafka.jars``).
``QuestDB`` runs it on 127.0.0.1 with its own temporary root directory, only
its HTTP endpoint open (``/exec`` for SQL, ILP over HTTP for ingest), and
always stops it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tickplant import httpclient
from tickplant.kafka.broker import _die_with_parent, free_port
from tickplant.kafka.jars import KafkaSetupError, cache_root, java_binary

POM = Path(__file__).with_name("questdb-pom.xml")


def questdb_version() -> str:
    match = re.search(r"<questdb.version>([^<]+)</questdb.version>", POM.read_text())
    if match is None:
        raise KafkaSetupError(f"{POM} names no questdb.version: the package is damaged; reinstall it")
    return match.group(1)


def jar_path() -> Path:
    version = questdb_version()
    return cache_root() / f"questdb-{version}" / f"questdb-{version}.jar"


def ensure_jar(quiet: bool = True) -> Path:
    """The QuestDB server jar, fetched with Maven (checksums verified) the first time."""
    jar = jar_path()
    marker = jar.parent / ".complete"
    if marker.exists() and jar.exists():
        return jar
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaSetupError(f"the QuestDB jar is not at {jar} and Maven ('mvn') is not installed to fetch it")
    jar.parent.mkdir(parents=True, exist_ok=True)
    cmd = [mvn, "-B", "--strict-checksums", "-f", str(POM), "dependency:copy-dependencies",
           f"-DoutputDirectory={jar.parent}", "-DincludeScope=runtime"]
    if quiet:
        cmd.insert(2, "-q")
    result = subprocess.run(cmd, capture_output=quiet, text=True)
    if result.returncode != 0 or not jar.exists():
        tail = (result.stdout or "")[-2000:] + (result.stderr or "")[-2000:]
        raise KafkaSetupError(f"Maven could not fetch the QuestDB jar:\n{tail}")
    # the copy in the local Maven repository passed Maven's check against Central's .sha1;
    # check the copy we run is that file
    sha1 = Path.home() / ".m2" / "repository" / "org" / "questdb" / "questdb" / questdb_version() / \
        f"questdb-{questdb_version()}.jar.sha1"
    if sha1.exists():
        want = sha1.read_text().split()[0].strip().lower()
        got = hashlib.sha1(jar.read_bytes()).hexdigest()
        if got != want:
            jar.unlink()
            raise KafkaSetupError(f"{jar}: SHA-1 {got} is not Maven Central's {want}")
    marker.write_text(questdb_version())
    return jar


class QuestDBError(RuntimeError):
    """QuestDB did not start, or answered a query with an error."""


class QuestDB:
    """A QuestDB server in a temporary root directory on a free port; a context manager."""

    def __init__(self, root: Path | None = None, heap_mb: int = 2048):
        self.jar = ensure_jar()
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="tickplant-questdb-")) if root is None else root
        self.port = free_port()
        self.heap_mb = heap_mb
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def conf(self) -> str:
        """The ILP-over-HTTP configuration string of the Python client."""
        return f"http::addr=127.0.0.1:{self.port};"

    def start(self, timeout: float = 60.0) -> QuestDB:
        env = dict(os.environ,
                   QDB_HTTP_BIND_TO=f"127.0.0.1:{self.port}", QDB_HTTP_MIN_ENABLED="false",
                   QDB_PG_ENABLED="false", QDB_LINE_TCP_ENABLED="false", QDB_LINE_UDP_ENABLED="false",
                   QDB_TELEMETRY_ENABLED="false")
        log = open(self.root / "server.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [java_binary(), f"-Xmx{self.heap_mb}m", "-p", str(self.jar), "-m", "io.questdb/io.questdb.ServerMain",
             "-d", str(self.root)],
            stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)  # dies with us, even on kill -9
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise QuestDBError(f"QuestDB exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if self.exec("SELECT 1")["dataset"] == [[1]]:
                    return self
            except (OSError, QuestDBError):
                pass
            time.sleep(0.1)
        self.stop()
        raise QuestDBError(f"QuestDB did not answer on {self.url} within {timeout:.0f} s")

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def exec(self, query: str, timeout: float = 120.0) -> dict[str, Any]:
        """``/exec`` of one statement: QuestDB's JSON answer (columns, dataset, count)."""
        try:
            resp = httpclient.request("GET", f"{self.url}/exec", params={"query": query}, timeout=timeout,
                                      check=False)
        except httpclient.HttpError as exc:
            raise QuestDBError(f"{query[:200]}: {exc}") from None
        if resp.status != 200:
            raise QuestDBError(f"{query[:200]}: {resp.status} {resp.reason()}")
        answer = resp.json()
        if "error" in answer:
            raise QuestDBError(f"{query[:200]}: {answer['error']}")
        return answer

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> QuestDB:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
