"""A Confluent-compatible schema registry on this machine: Apicurio Registry, in memory.

For the registry mode's tests (``schema_registry_url``) and for trying the mode
locally; a production plant points at the registry its Kafka already has
(Confluent's, Apicurio's, AWS Glue's Confluent-compatible endpoint...). Confluent's
own registry is not on PyPI or Maven Central; Apicurio is, as a Quarkus application
jar whose dependencies Maven fetches: ``ensure_registry`` builds it once from the
pom beside this file (``apicurio/pom.xml`` says why that version) into a per-version
cache (``~/.cache/tickplant/apicurio-<version>``, or under ``TICKPLANT_JAR_CACHE``),
as ``tickplant install --schema-registry`` does. Clients use the Confluent API
under ``/apis/ccompat/v7`` (``RegistryServer.url``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tickplant.kafka.jars import KafkaSetupError, cache_root, java_binary

SOURCE = Path(__file__).with_name("apicurio")
CCOMPAT = "/apis/ccompat/v7"


class RegistrySetupError(KafkaSetupError):
    """Maven could not build the registry, or it did not start; the message says why."""


def apicurio_version() -> str:
    match = re.search(r"<apicurio.version>([^<]+)</apicurio.version>", (SOURCE / "pom.xml").read_text())
    if match is None:
        raise RegistrySetupError(f"{SOURCE / 'pom.xml'} names no apicurio.version: the package is damaged")
    return match.group(1)


def app_dir() -> Path:
    return cache_root() / f"apicurio-{apicurio_version()}"


def ensure_registry(quiet: bool = True) -> Path:
    """The registry's runnable jar, built with Maven the first time (a few minutes)."""
    home = app_dir()
    jar = home / "app" / "schema-registry-1-runner.jar"
    if (home / ".complete").exists() and jar.exists():
        return jar
    mvn = shutil.which("mvn")
    if not mvn:
        raise RegistrySetupError(f"the schema registry is not built in {home} and Maven ('mvn') is not installed")
    build = home / "build"
    shutil.rmtree(build, ignore_errors=True)
    shutil.copytree(SOURCE, build)
    cmd = [mvn, "-B", "package", "-DskipTests"]
    if quiet:
        cmd.insert(2, "-q")
    result = subprocess.run(cmd, cwd=build, capture_output=quiet, text=True)
    if result.returncode != 0:
        tail = (result.stdout or "")[-2000:] + (result.stderr or "")[-2000:]
        raise RegistrySetupError(f"Maven could not build the schema registry (Apicurio {apicurio_version()}):\n{tail}")
    shutil.rmtree(home / "app", ignore_errors=True)
    (home / "app").mkdir(parents=True)
    shutil.move(str(build / "target" / "schema-registry-1-runner.jar"), jar)
    shutil.move(str(build / "target" / "lib"), home / "app" / "lib")
    shutil.rmtree(build, ignore_errors=True)
    (home / ".complete").write_text(apicurio_version())
    return jar


class RegistryServer:
    """One registry process on ``host:port`` (loopback by default), its log in ``log_path``."""

    def __init__(self, port: int, log_path: Path, host: str = "127.0.0.1"):
        self.host, self.port, self.log_path = host, port, log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """What ``schema_registry_url`` (and ClickHouse's ``format_avro_schema_registry_url``) take."""
        return f"http://{self.host}:{self.port}{CCOMPAT}"

    def start(self, timeout: float = 240.0) -> RegistryServer:
        jar = ensure_registry()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        # C1 only and a small serial heap: it starts in half the time, and serves a test's load
        self.process = subprocess.Popen(
            [java_binary(), "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx384m",
             f"-Dquarkus.http.host={self.host}", f"-Dquarkus.http.port={self.port}", "-jar", str(jar)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RegistrySetupError(f"the schema registry exited with {self.process.returncode}: "
                                         f"{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/subjects", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise RegistrySetupError(f"the schema registry did not answer on {self.url} within {timeout:.0f}s: "
                                 f"{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-800:].replace("\n", " | ")
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
