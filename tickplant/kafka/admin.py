"""The cluster as an admin sees it: a client, and whether any broker answers at all.

Below every role and command: each checks the broker before it starts, so that
"Kafka is not there" is one plain line rather than a client's retry loop.
"""

from __future__ import annotations

from confluent_kafka.admin import AdminClient

from tickplant.config import Settings


class BrokerUnreachable(RuntimeError):
    """No broker of the configured cluster answered."""


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka_config())


def check_reachable(settings: Settings, timeout: float = 5.0) -> None:
    """Fail fast, and say so plainly, when no broker answers."""
    try:
        meta = admin_client(settings).list_topics(timeout=timeout)
    except Exception as exc:
        hint = " (is the plant up? 'tickplant up --detach' starts it)" if settings.embedded else ""
        raise BrokerUnreachable(f"Kafka at {settings.bootstrap} is unreachable{hint}: {exc}") from None
    if not meta.brokers:
        raise BrokerUnreachable(f"Kafka at {settings.bootstrap} answered with no brokers")
