"""AWS Lambda entry points (handler strings ``tickplant.aws.lambda_handlers.<name>``).

Thin on purpose: each builds what it needs once per instance (settings from the
``TICKPLANT_*`` variables) and hands the event to the module that does the work.

- ``query``: API Gateway HTTP API (payload 2.0) -> the gateway over the HDB on S3,
  history only (gateway/serverless.py).
- ``black_scholes``: options in the event, or an S3 object of them -> prices and
  greeks (tickplant/aws/black_scholes.py).
- ``s3_object_created``: an S3 file drop -> the batch loader, exactly once
  (tickplant/aws/lambda_files.py).
"""

from __future__ import annotations

import functools
from typing import Any

from gateway import serverless
from tickplant.aws import black_scholes as _black_scholes
from tickplant.aws.lambda_files import s3_object_created  # noqa: F401 - S3 ObjectCreated -> the batch loader
from tickplant.config import Settings


@functools.cache
def _settings() -> Settings:
    return serverless.lambda_settings()


def query(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """API Gateway (HTTP API, payload 2.0) event -> the response object."""
    return serverless.handle_query(event)


def black_scholes(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Options (``{"options": [...]}``, the reference's payload) or an S3 object of them -> prices and greeks."""
    return _black_scholes.handle(event, _settings())
