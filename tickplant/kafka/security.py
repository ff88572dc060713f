"""The cluster's security settings in Faust's form, for the workers' consumer groups.

Every librdkafka client of the plant takes the cluster's security from
``kafka_client_config`` (``security.protocol``, ``sasl.*``, ``ssl.*``, as
librdkafka names them). The RDB and CEP workers also run a Faust app
(aiokafka underneath) that keeps their consumer group; it must get the same
credentials, or on a secured cluster (Amazon MSK with SASL/SCRAM or TLS) the
workers never join their group. This module is the one translation, so a
user writes the settings once.
"""

from __future__ import annotations

import ssl
from typing import Any

from tickplant.config import ConfigError, Settings

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _ssl_context(cfg: dict[str, str]) -> ssl.SSLContext:
    """librdkafka's ssl.* settings as an SSLContext (system CAs unless ``ssl.ca.location``)."""
    context = ssl.create_default_context(cafile=cfg.get("ssl.ca.location") or None)
    cert = cfg.get("ssl.certificate.location")
    if cert:
        context.load_cert_chain(cert, cfg.get("ssl.key.location") or None, cfg.get("ssl.key.password") or None)
    if cfg.get("enable.ssl.certificate.verification", "true").lower() == "false":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif cfg.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
        context.check_hostname = False
    return context


def faust_credentials(settings: Settings) -> Any:
    """``broker_credentials`` for a Faust app on this cluster (None for PLAINTEXT).

    Raises ConfigError naming the setting when the workers cannot use it."""
    import faust

    cfg = settings.kafka_client_config
    protocol = cfg.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    if protocol not in ("SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise ConfigError(f"kafka_client_config: security.protocol {protocol!r} is not one of PLAINTEXT, SSL, "
                          "SASL_PLAINTEXT, SASL_SSL")
    context = _ssl_context(cfg) if protocol in ("SSL", "SASL_SSL") else None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    mechanism = (cfg.get("sasl.mechanism") or cfg.get("sasl.mechanisms") or "GSSAPI").upper()
    if mechanism not in SASL_MECHANISMS:
        raise ConfigError(f"kafka_client_config: sasl.mechanism {mechanism!r} is not supported by the workers' "
                          f"consumer group; use one of {', '.join(SASL_MECHANISMS)}")
    missing = [k for k in ("sasl.username", "sasl.password") if not cfg.get(k)]
    if missing:
        raise ConfigError(f"kafka_client_config: {mechanism} needs {' and '.join(missing)}")
    return faust.SASLCredentials(username=cfg["sasl.username"], password=cfg["sasl.password"],
                                 ssl_context=context, mechanism=mechanism)
