"""The cluster's security settings in Faust's form, for the workers' consumer groups.

Every librdkafka client of the plant takes the cluster's security from
``kafka_client_config`` (``security.protocol``, ``sasl.*``, ``ssl.*``, as
librdkafka names them). The RDB and CEP workers also run a Faust app
(aiokafka underneath) that keeps their consumer group; it must get the same
credentials, or on a secured cluster (Amazon MSK with SASL/SCRAM or TLS) the
workers never join their group. This module is the one translation, so a
user writes the settings once.

Amazon MSK's IAM authentication is asked for as the MSK documentation names
it, ``sasl.mechanism = "AWS_MSK_IAM"`` (with ``security.protocol =
"SASL_SSL"``): both kinds of client then speak SASL/OAUTHBEARER with a token
signed by AWS's own signer (``aws-msk-iam-sasl-signer-python``) from the
default AWS credentials chain (environment, profile, instance or task role),
for the region in ``AWS_REGION`` or, failing that, in the brokers' names.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import ssl
from typing import TYPE_CHECKING, Any

from aiokafka.abc import AbstractTokenProvider

from tickplant.errors import ConfigError

if TYPE_CHECKING:  # config reads this module's settings through it: no import back at run time
    from tickplant.config import Settings

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
MSK_IAM = "AWS_MSK_IAM"
_MSK_HOST = re.compile(r"\.kafka(?:-serverless)?\.([a-z]{2}(?:-[a-z]+)+-\d+)\.amazonaws\.com")


def _mechanism(cfg: dict[str, str]) -> str:
    return (cfg.get("sasl.mechanism") or cfg.get("sasl.mechanisms") or "GSSAPI").upper()


def msk_region(settings: Settings) -> str:
    """The MSK cluster's AWS region: ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``), else the one
    in the brokers' names (``b-1.x.y.kafka.eu-west-1.amazonaws.com``)."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        return region
    found = _MSK_HOST.search(settings.bootstrap)
    if found is None:
        raise ConfigError(f"kafka_client_config: sasl.mechanism {MSK_IAM} needs the cluster's region: set "
                          f"AWS_REGION (none in bootstrap_servers {settings.bootstrap!r})")
    return found.group(1)


def msk_iam_token(region: str) -> tuple[str, float]:
    """A fresh MSK IAM token and when it expires (seconds since the epoch)."""
    from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

    try:
        token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(region)
    except Exception as exc:  # botocore's NoCredentialsError and kin: say what is missing
        raise ConfigError(f"cannot sign an MSK IAM token for {region}: {exc}") from exc
    return token, expiry_ms / 1000


def _oauth_cb(region: str, _oauthbearer_config: str) -> tuple[str, float]:
    return msk_iam_token(region)


class MskTokenProvider(AbstractTokenProvider):
    """The same token for aiokafka (the workers' Faust groups), signed off the event loop."""

    def __init__(self, region: str):
        self.region = region

    async def token(self) -> str:
        token, _ = await asyncio.get_running_loop().run_in_executor(None, msk_iam_token, self.region)
        return token


def _check_msk(cfg: dict[str, str]) -> None:
    protocol = cfg.get("security.protocol", "PLAINTEXT").upper()
    if protocol != "SASL_SSL":
        raise ConfigError(f"kafka_client_config: sasl.mechanism {MSK_IAM} needs security.protocol SASL_SSL, "
                          f"not {protocol}")


def librdkafka_security(settings: Settings) -> dict[str, Any]:
    """``kafka_client_config`` as librdkafka takes it: as written, except ``AWS_MSK_IAM``,
    which becomes OAUTHBEARER with a token callback."""
    cfg: dict[str, Any] = dict(settings.kafka_client_config)
    if _mechanism(cfg) != MSK_IAM:
        return cfg
    _check_msk(cfg)
    cfg.pop("sasl.mechanisms", None)
    cfg["sasl.mechanism"] = "OAUTHBEARER"
    cfg["oauth_cb"] = functools.partial(_oauth_cb, msk_region(settings))
    return cfg


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
    mechanism = _mechanism(cfg)
    if mechanism == MSK_IAM:
        _check_msk(cfg)
        return faust.OAuthCredentials(oauth_cb=MskTokenProvider(msk_region(settings)), ssl_context=context)
    if mechanism not in SASL_MECHANISMS:
        raise ConfigError(f"kafka_client_config: sasl.mechanism {mechanism!r} is not supported by the workers' "
                          f"consumer group; use one of {', '.join(SASL_MECHANISMS)} or {MSK_IAM}")
    missing = [k for k in ("sasl.username", "sasl.password") if not cfg.get(k)]
    if missing:
        raise ConfigError(f"kafka_client_config: {mechanism} needs {' and '.join(missing)}")
    return faust.SASLCredentials(username=cfg["sasl.username"], password=cfg["sasl.password"],
                                 ssl_context=context, mechanism=mechanism)
