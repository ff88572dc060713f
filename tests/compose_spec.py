"""The official Compose Specification JSON schema, for checking docker-compose.yml.

There is no Docker engine (nor Compose) on the machines that run the tests, so
the compose file is checked against the schema Compose itself validates with.
No PyPI package exists just for that schema; ``check-jsonschema`` vendors it
(``builtin_schemas/vendor/compose-spec.json``, draft 2020-12, kept current).
Installing that package would drag in its CLI's dependencies for one JSON file,
so its wheel is fetched with ``pip download --no-deps`` into a cache directory
and the schema is read straight out of the zip. Version and content hash are
pinned, so every machine checks against the same schema until someone bumps
both on purpose.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

PACKAGE = "check-jsonschema"
VERSION = "0.39.0"
MEMBER = "check_jsonschema/builtin_schemas/vendor/compose-spec.json"
# sha256 of the schema itself (check-jsonschema records the same value in
# builtin_schemas/vendor/sha256/compose-spec.sha256).
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"


class ComposeSpecUnavailable(RuntimeError):
    """The schema could not be fetched or did not match the pinned hash."""


def cache_dir() -> Path:
    """Where the wheel is kept between runs: $XDG_CACHE_HOME or ~/.cache, then tickplant/compose-spec."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tickplant" / "compose-spec"


def _wheel_path(directory: Path) -> Path | None:
    name = PACKAGE.replace("-", "_")
    found = sorted(directory.glob(f"{name}-{VERSION}-*.whl"))
    return found[0] if found else None


def fetch_wheel(directory: Path | None = None) -> Path:
    """Return the pinned wheel, downloading it first if the cache lacks it.

    The download lands in a temporary directory beside the cache and is moved
    in with one rename, so two test processes starting at once never read a
    half-written zip.
    """
    directory = directory or cache_dir()
    wheel = _wheel_path(directory)
    if wheel:
        return wheel
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--quiet", "--dest", tmp, f"{PACKAGE}=={VERSION}",
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ComposeSpecUnavailable(f"{' '.join(cmd)}: {exc}") from exc
        got = _wheel_path(Path(tmp))
        if done.returncode != 0 or got is None:
            raise ComposeSpecUnavailable(
                f"could not download {PACKAGE}=={VERSION} (exit {done.returncode}):\n{done.stderr}"
            )
        os.replace(got, directory / got.name)
    wheel = _wheel_path(directory)
    assert wheel is not None
    return wheel


def load_compose_schema(directory: Path | None = None) -> dict[str, Any]:
    """The Compose Specification schema as a dict, checked against SCHEMA_SHA256."""
    wheel = fetch_wheel(directory)
    try:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(MEMBER)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ComposeSpecUnavailable(f"{wheel}: no usable {MEMBER} ({exc}); delete it to refetch") from exc
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SCHEMA_SHA256:
        raise ComposeSpecUnavailable(f"{wheel}:{MEMBER} has sha256 {digest}, expected {SCHEMA_SHA256}")
    schema: dict[str, Any] = json.loads(raw)
    return schema
