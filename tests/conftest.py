"""One real Kafka broker (embedded KRaft) for the whole test session.

Each test gets its own topic prefix, so tests share the broker but never a
topic, a day, or an EOD transactional id.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.schemas import SchemaCatalog
from tickplant.config import REPO_ROOT, Settings
from tickplant.kafka.broker import EmbeddedKafka


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_pair() -> int:
    """A port p with p+1 free too (broker + controller)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("plant"), kafka_port=free_port_pair())
    kafka = EmbeddedKafka(settings)
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture
def settings(broker: EmbeddedKafka, tmp_path: Path) -> Settings:
    return broker.settings.replace(
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        data_dir=tmp_path / "plant",
        batch_interval_ms=50,
    )


@pytest.fixture(scope="session")
def catalog() -> SchemaCatalog:
    return SchemaCatalog.load(REPO_ROOT / "schemas")
