"""boto3 clients of the plant's AWS account: region and endpoint from the settings.

An empty ``aws_region`` / ``aws_endpoint_url`` leaves them to boto3's own chain
(``AWS_REGION``, the profile, the instance role); an endpoint points every call at
another server (moto in the tests, a VPC endpoint in production).
"""

from __future__ import annotations

from typing import Any

from tickplant.config import Settings

DEFAULT_REGION = "us-east-1"


def aws_client(settings: Settings, service: str) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    region = settings.aws_region or session.region_name or DEFAULT_REGION
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30)
    return session.client(service, region_name=region, endpoint_url=settings.aws_endpoint_url or None,
                          config=config)
