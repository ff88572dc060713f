"""Settings: values from the environment are typed and checked, and reach the clients."""

from __future__ import annotations

import pytest

from ingest.publisher import producer_config
from tickplant.config import ConfigError, Settings, load_settings


def test_zero_linger_reaches_the_zero_latency_producer_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKPLANT_ZERO_LINGER_MS", "0.25")
    settings = load_settings()
    assert settings.zero_linger_ms == 0.25
    assert producer_config(settings, "zero")["linger.ms"] == 0.25
    assert producer_config(settings, "batch")["linger.ms"] == 5


@pytest.mark.parametrize("raw, message", [
    ("-1", "zero_linger_ms must be between 0 and 1000"),
    ("soon", "TICKPLANT_ZERO_LINGER_MS"),
])
def test_a_bad_zero_linger_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, raw: str, message: str) -> None:
    monkeypatch.setenv("TICKPLANT_ZERO_LINGER_MS", raw)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_client_config_from_the_environment_as_pairs_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKPLANT_KAFKA_CLIENT_CONFIG", "security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512")
    assert load_settings().kafka_client_config == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}
    monkeypatch.setenv("TICKPLANT_KAFKA_CLIENT_CONFIG", '{"sasl.username": "tp", "sasl.password": "a,b=c"}')
    assert load_settings().kafka_client_config == {"sasl.username": "tp", "sasl.password": "a,b=c"}


@pytest.mark.parametrize("raw", ["security.protocol", '{"sasl.password": ', "[1, 2]"])
def test_a_malformed_client_config_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("TICKPLANT_KAFKA_CLIENT_CONFIG", raw)
    with pytest.raises(ConfigError, match="TICKPLANT_KAFKA_CLIENT_CONFIG.*kafka_client_config"):
        load_settings()


def test_a_child_process_gets_the_same_client_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers and the gateway are started with the parent's settings in TICKPLANT_* variables:
    a SASL password with commas and '=' must reach them whole."""
    parent = Settings(kafka_client_config={"security.protocol": "SASL_SSL", "sasl.password": "p,w=d"},
                      zero_linger_ms=0.5)
    for name, value in parent.child_env().items():
        monkeypatch.setenv(name, value)
    child = load_settings()
    assert child.kafka_client_config == parent.kafka_client_config and child.zero_linger_ms == 0.5


def test_the_hdb_codec_is_checked_and_reaches_the_write_down(monkeypatch: pytest.MonkeyPatch) -> None:
    from sinks.writedown import WriteOptions

    assert WriteOptions.of(load_settings()).compression == "lz4"
    monkeypatch.setenv("TICKPLANT_HDB_COMPRESSION", "zstd")
    assert WriteOptions.of(load_settings()).compression == "zstd"
    monkeypatch.setenv("TICKPLANT_HDB_COMPRESSION", "gzip")
    with pytest.raises(ConfigError, match="hdb_compression must be one of lz4, zstd, snappy, none, not 'gzip'"):
        load_settings()
