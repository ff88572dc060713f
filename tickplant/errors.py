"""The foundation's error types, below config and the Kafka helpers that both raise them."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it and its source."""
