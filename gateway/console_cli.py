"""``tickplant install --console``: the console's browser libraries rebuilt from the lockfile."""

from __future__ import annotations

from gateway.console_assets import VENDOR_DIR, AssetError, build, verify


def install_console() -> str:
    """``npm ci`` and the copy into gateway/static/vendor; the line to print. Raises
    ``AssetError`` (one line) when npm is missing or fails, or the copies do not check."""
    entries = build()
    problems = verify()
    if problems:
        raise AssetError("; ".join(problems))
    packages = sorted({f"{e['package']} {e['version']}" for e in entries})
    return f"console assets ready in {VENDOR_DIR} ({', '.join(packages)})"
