"""The embedded broker's jars: Apache Kafka and its runtime dependencies from Maven Central.

Fetched once by Maven from the pom beside this file into a per-version cache
(``~/.cache/tickplant/kafka-<version>/libs``, or ``TICKPLANT_JAR_CACHE``) that
every data directory shares.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

POM = Path(__file__).with_name("pom.xml")
LOG4J = Path(__file__).with_name("log4j.properties")


class KafkaSetupError(RuntimeError):
    """Java, Maven or the jars are missing; the message says what to install."""


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    if match is None:
        raise KafkaSetupError(f"{POM} names no kafka.version: the package is damaged; reinstall it")
    return match.group(1)


def cache_root() -> Path:
    """Where what the plant fetches or builds once is kept between checkouts: the broker's,
    QuestDB's and the schema registry's jars, and the tests' client drivers."""
    return Path(os.environ.get("TICKPLANT_JAR_CACHE", "~/.cache/tickplant")).expanduser()


def jar_dir() -> Path:
    return cache_root() / f"kafka-{kafka_version()}" / "libs"


def java_binary() -> str:
    java = shutil.which("java")
    if not java:
        raise KafkaSetupError(
            "Java is not installed (no 'java' on PATH): the embedded Kafka broker needs "
            "a Java 17+ runtime, or set bootstrap_servers to use an existing cluster"
        )
    return java


def ensure_jars(quiet: bool = True) -> Path:
    """Return the directory of broker jars, fetching them with Maven the first time."""
    libs = jar_dir()
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaSetupError(
            f"the Kafka jars are not in {libs} and Maven ('mvn') is not installed to fetch them"
        )
    libs.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn, "-B", "-f", str(POM), "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}", "-DincludeScope=runtime",
    ]
    if quiet:
        cmd.insert(2, "-q")
    result = subprocess.run(cmd, capture_output=quiet, text=True)
    if result.returncode != 0:
        tail = (result.stdout or "")[-2000:] + (result.stderr or "")[-2000:]
        raise KafkaSetupError(f"Maven could not fetch the Kafka jars:\n{tail}")
    marker.write_text(kafka_version())
    return libs
