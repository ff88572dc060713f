"""Which EC2 instance this process runs on: the key between an RDB node and its Auto Scaling group.

The scaler terminates instances, the plant knows nodes: each node's metadata record
carries its instance id. Whoever starts a worker may say it (``instance_id`` /
``TICKPLANT_INSTANCE_ID``); otherwise, on EC2, the instance tells it: Nitro instances
put their id in the DMI board asset tag, others answer on the instance metadata
service (IMDSv2). Elsewhere (a laptop, a test) there is none, and nothing is asked
of the network: the metadata service is only tried where the DMI vendor is Amazon.
"""

from __future__ import annotations

import re
from pathlib import Path

from tickplant.httpclient import HttpError, request

DMI = Path("/sys/devices/virtual/dmi/id")
IMDS = "http://169.254.169.254/latest"
_INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _from_imds(timeout: float = 1.0) -> str:
    token = request("PUT", f"{IMDS}/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
                    timeout=timeout).text
    return request("GET", f"{IMDS}/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token},
                   timeout=timeout).text.strip()


def instance_id(configured: str = "", dmi: Path = DMI) -> str:
    """The configured id, else this EC2 instance's, else empty (not on EC2)."""
    if configured:
        return configured
    tag = _read(dmi / "board_asset_tag")
    if _INSTANCE_ID.fullmatch(tag):
        return tag
    if "amazon" not in (_read(dmi / "sys_vendor") + _read(dmi / "bios_vendor")).lower():
        return ""
    try:
        found = _from_imds()
    except HttpError:
        return ""
    return found if _INSTANCE_ID.fullmatch(found) else ""
