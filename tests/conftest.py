"""One real Kafka broker (embedded KRaft) for the whole test session.

Each test gets its own topic prefix, so tests share the broker but never a
topic, a day, or an EOD transactional id.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.schemas import SchemaCatalog
from tickplant.config import REPO_ROOT, Settings
from tickplant.kafka.broker import EmbeddedKafka, free_port_pair


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


@pytest.fixture(autouse=True)
def fresh_aws_default_session() -> None:
    """boto3's default session keeps the first credentials it resolved for the whole process:
    a test that set other keys (moto's, a made-up session token) would sign every later test's
    ``boto3.client`` with them, so each test starts with none resolved."""
    boto3 = sys.modules.get("boto3")
    if boto3 is not None:
        boto3.DEFAULT_SESSION = None
