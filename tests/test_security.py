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
from tickplant.kafkaauth import faust_credentials

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


# -- Amazon MSK IAM (AWS_MSK_IAM): the token and the wiring; no MSK here to shake hands with ----------

MSK_BOOTSTRAP = "b-1.prod.abc123.c2.kafka.eu-west-1.amazonaws.com:9098"


@pytest.fixture
def aws_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Static keys from the environment, and nothing else the AWS chain could find or call."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _signed_url(token: str) -> str:
    import base64

    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def msk_settings(**client: str) -> Settings:
    return Settings(bootstrap_servers=MSK_BOOTSTRAP,
                    kafka_client_config={"security.protocol": "SASL_SSL", "sasl.mechanism": "AWS_MSK_IAM", **client})


def test_msk_iam_token_is_a_signed_connect_request_for_the_region(aws_keys: None) -> None:
    import time
    import urllib.parse

    from tickplant.kafkaauth import msk_iam_token

    token, expires = msk_iam_token("eu-west-1")
    url = urllib.parse.urlsplit(_signed_url(token))
    query = urllib.parse.parse_qs(url.query)
    assert (url.scheme, url.netloc) == ("https", "kafka.eu-west-1.amazonaws.com")
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Credential"][0].startswith("AKIAIOSFODNN7EXAMPLE/")
    assert query["X-Amz-Credential"][0].endswith("/eu-west-1/kafka-cluster/aws4_request")
    assert len(query["X-Amz-Signature"][0]) == 64
    assert time.time() + 60 < expires <= time.time() + 3600


def test_msk_iam_becomes_oauthbearer_for_librdkafka_and_faust(aws_keys: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from confluent_kafka import Producer

    import tickplant.kafkaauth as security

    settings = msk_settings()
    config = settings.kafka_config()
    assert (config["security.protocol"], config["sasl.mechanism"]) == ("SASL_SSL", "OAUTHBEARER")
    asked: list[str] = []
    real = security.msk_iam_token
    monkeypatch.setattr(security, "msk_iam_token", lambda region: (asked.append(region), real(region))[1])
    # librdkafka takes the settings and asks the callback for a token (no broker needed for that)
    producer = Producer(settings.kafka_config(**{"bootstrap.servers": "127.0.0.1:1"}))
    producer.poll(0.5)
    assert asked and set(asked) == {"eu-west-1"}  # the region read from the brokers' names
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.OAuthCredentials) and credentials.protocol.value == "SASL_SSL"
    assert "kafka.eu-west-1.amazonaws.com" in _signed_url(asyncio.run(credentials.oauth_cb.token()))
    monkeypatch.setenv("AWS_REGION", "us-east-2")  # the environment wins over the brokers' names
    token, _ = settings.kafka_config()["oauth_cb"]("")
    assert "kafka.us-east-2.amazonaws.com" in _signed_url(token)


@pytest.mark.parametrize("settings, message", [
    (msk_settings(**{"security.protocol": "SASL_PLAINTEXT"}), "AWS_MSK_IAM needs security.protocol SASL_SSL"),
    (msk_settings().replace(bootstrap_servers="broker.internal:9098"), "set AWS_REGION"),
])
def test_msk_iam_misconfigured_is_refused_by_name(aws_keys: None, settings: Settings, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings.kafka_config()
    with pytest.raises(ConfigError, match=message):
        faust_credentials(settings)


def test_msk_iam_without_aws_credentials_says_so(aws_keys: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from tickplant.kafkaauth import msk_iam_token

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="cannot sign an MSK IAM token for eu-west-1"):
        msk_iam_token("eu-west-1")
