"""A secured cluster (as MSK with SASL/SCRAM): the settings written once reach every client,
the workers' Faust consumer groups included. A real broker with a SASL_PLAINTEXT listener
and SCRAM-SHA-512 users, formatted with them (KRaft)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import faust
import pytest
from confluent_kafka import KafkaException
from procs import Worker, wait_until

from ingest.eod import open_first_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.publisher import Tickerplant
from ingest.schemas import SchemaCatalog
from ingest.topics import ensure_topics
from tickplant.clock import ManualClock
from tickplant.config import ConfigError, Settings
from tickplant.kafka.broker import EmbeddedKafka, free_port_pair
from tickplant.kafka.security import faust_credentials

T0 = 1_795_300_000_000_000_000
USER, PASSWORD = "tickplant", "s3cret-for-tests"
SCRAM = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
         "sasl.username": USER, "sasl.password": PASSWORD}


class ScramKafka(EmbeddedKafka):
    """The embedded broker with its client listener on SASL_PLAINTEXT, SCRAM-SHA-512 only."""

    def format_args(self) -> list[str]:
        return ["--add-scram", "SCRAM-SHA-512=[name=broker,password=broker-secret]",
                "--add-scram", f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]"]

    def _properties(self) -> str:
        s = self.settings
        lines = [line for line in super()._properties().splitlines()
                 if not line.startswith(("listeners=", "advertised.listeners=", "listener.security.protocol.map="))]
        return "\n".join(lines + [
            f"listeners=SASL_PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.controller_port}",
            f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{s.kafka_port}",
            "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=SASL_PLAINTEXT",
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            'username="broker" password="broker-secret";',
            "",
        ])


@pytest.fixture(scope="module")
def scram_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("scram"), kafka_port=free_port_pair(),
                        kafka_client_config=dict(SCRAM), topic_prefix="sec.", batch_interval_ms=50)
    kafka = ScramKafka(settings)
    kafka.start()
    try:
        yield settings
    finally:
        kafka.stop()


def test_faust_credentials_follow_the_librdkafka_settings(tmp_path: Path) -> None:
    assert faust_credentials(Settings(data_dir=tmp_path)) is None
    sasl = faust_credentials(Settings(data_dir=tmp_path, kafka_client_config={**SCRAM, "security.protocol": "SASL_SSL"}))
    assert isinstance(sasl, faust.SASLCredentials)
    assert (sasl.username, sasl.password, sasl.mechanism.value, sasl.protocol.value) == (
        USER, PASSWORD, "SCRAM-SHA-512", "SASL_SSL")
    assert isinstance(sasl.ssl_context, ssl.SSLContext)
    tls = faust_credentials(Settings(data_dir=tmp_path, kafka_client_config={
        "security.protocol": "SSL", "enable.ssl.certificate.verification": "false"}))
    assert isinstance(tls, faust.SSLCredentials) and tls.context.verify_mode == ssl.CERT_NONE
    with pytest.raises(ConfigError, match="sasl.mechanism 'GSSAPI'"):
        faust_credentials(Settings(data_dir=tmp_path, kafka_client_config={"security.protocol": "SASL_SSL"}))
    with pytest.raises(ConfigError, match="needs sasl.password"):
        faust_credentials(Settings(data_dir=tmp_path, kafka_client_config={
            "security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "u"}))
    with pytest.raises(ConfigError, match="security.protocol 'SSH'"):
        faust_credentials(Settings(data_dir=tmp_path, kafka_client_config={"security.protocol": "SSH"}))


def test_a_wrong_password_is_refused_by_the_broker(scram_settings: Settings, catalog: SchemaCatalog) -> None:
    wrong = scram_settings.replace(kafka_client_config={**SCRAM, "sasl.password": "nope"})
    with pytest.raises((KafkaException, RuntimeError)):
        ensure_topics(wrong, catalog, timeout=10)


def test_an_rdb_worker_joins_its_group_and_serves_on_a_scram_cluster(
        scram_settings: Settings, catalog: SchemaCatalog, tmp_path: Path) -> None:
    settings = scram_settings.replace(data_dir=tmp_path / "plant")
    ensure_topics(settings, catalog)
    open_first_day(settings, catalog, ManualClock(T0))
    market = SyntheticMarket(syms=20, seed=5, clock=ManualClock(T0))
    trades, quotes = market.events(5_000)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        tp.publish_rows("trade", trades)
    worker = Worker(settings, "rdb-sec", tmp_path).start()
    try:
        worker.wait_serving()
        wait_until(lambda: sum(worker.client.count("trade").values()) == len(trades), 60,
                   "the RDB to hold every trade", worker.log_tail)
        status = worker.client.status()
        # every partition of the trade topic assigned to it by its Faust group (aiokafka, over SCRAM)
        assert status["serving"] and status["tables"]["trade"]["partitions"] == list(range(settings.partitions))
    finally:
        worker.stop()
