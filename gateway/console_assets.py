"""The web console's browser libraries: npm packages vendored into ``gateway/static/vendor``.

The console and ``/docs`` must work on a desk with no internet, so every script and
stylesheet they load is served by the gateway itself. The packages are pinned in
``console/package.json`` and ``console/package-lock.json``; ``tickplant install --console``
runs ``npm ci`` there and copies the files the pages load (with each package's licence)
into ``gateway/static/vendor/<package>/``, and writes ``MANIFEST.json``: for every file,
the package, its version and the file's SHA-256. The copies are committed, so a wheel or
a checkout without Node serves them as they are; ``verify()`` (a test) checks that they
are the lockfile's versions, byte for byte as recorded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tickplant.config import REPO_ROOT

STATIC_DIR = Path(__file__).resolve().parent / "static"
VENDOR_DIR = STATIC_DIR / "vendor"
MANIFEST = VENDOR_DIR / "MANIFEST.json"
NPM_PROJECT = REPO_ROOT / "console"


@dataclass(frozen=True)
class Vendored:
    """One file the pages load: where npm puts it, and its name under ``vendor/<package>/``."""

    package: str
    source: str  # inside node_modules/<package>/
    name: str


FILES = [
    Vendored("codemirror", "lib/codemirror.js", "codemirror.js"),
    Vendored("codemirror", "lib/codemirror.css", "codemirror.css"),
    Vendored("codemirror", "mode/sql/sql.js", "sql.js"),
    Vendored("codemirror", "addon/hint/show-hint.js", "show-hint.js"),
    Vendored("codemirror", "addon/hint/show-hint.css", "show-hint.css"),
    Vendored("codemirror", "addon/hint/sql-hint.js", "sql-hint.js"),
    Vendored("codemirror", "addon/edit/matchbrackets.js", "matchbrackets.js"),
    Vendored("codemirror", "LICENSE", "LICENSE"),
    Vendored("lightweight-charts", "dist/lightweight-charts.standalone.production.js",
             "lightweight-charts.standalone.production.js"),
    Vendored("lightweight-charts", "LICENSE", "LICENSE"),
    Vendored("swagger-ui-dist", "swagger-ui-bundle.js", "swagger-ui-bundle.js"),
    Vendored("swagger-ui-dist", "swagger-ui.css", "swagger-ui.css"),
    Vendored("swagger-ui-dist", "favicon-32x32.png", "favicon-32x32.png"),
    Vendored("swagger-ui-dist", "LICENSE", "LICENSE"),
]


class AssetError(RuntimeError):
    """The console's assets cannot be built, or the committed ones are not what the lockfile says."""


def url(package: str, name: str) -> str:
    """Where the gateway serves a vendored file (``/static`` is gateway/static)."""
    return f"/static/vendor/{package}/{name}"


def locked_versions(project: Path = NPM_PROJECT) -> dict[str, str]:
    """Each vendored package's version as ``package-lock.json`` pins it."""
    lock = json.loads((project / "package-lock.json").read_text())
    packages = lock.get("packages", {})
    out = {}
    for package in sorted({f.package for f in FILES}):
        entry = packages.get(f"node_modules/{package}")
        if entry is None:
            raise AssetError(f"{project / 'package-lock.json'}: no entry for {package!r}; add it to package.json")
        out[package] = entry["version"]
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(project: Path = NPM_PROJECT, vendor: Path = VENDOR_DIR, npm: str = "npm") -> list[dict[str, str]]:
    """``npm ci`` (no install scripts: nothing of theirs runs here) in ``project``, then the
    files of ``FILES`` copied into ``vendor`` and the manifest written; returns its entries."""
    if shutil.which(npm) is None:
        raise AssetError(f"{npm!r} not found: install Node.js and npm (Debian: apt-get install npm) "
                         "to build the console's assets")
    if not (project / "package-lock.json").exists():
        raise AssetError(f"{project}: no package-lock.json (the console's assets build from a source checkout)")
    done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                          cwd=project, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise AssetError(f"npm ci in {project} failed (exit {done.returncode}): {last}")
    modules = project / "node_modules"
    entries = []
    for f in FILES:
        version = json.loads((modules / f.package / "package.json").read_text())["version"]
        source = modules / f.package / f.source
        if not source.exists():
            raise AssetError(f"{f.package} {version} has no {f.source}: update gateway/console_assets.py FILES")
        target = vendor / f.package / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        entries.append({"package": f.package, "version": version, "file": f"{f.package}/{f.name}",
                        "sha256": _sha256(target)})
    vendor.mkdir(parents=True, exist_ok=True)
    (vendor / "MANIFEST.json").write_text(json.dumps(entries, indent=1) + "\n")
    return entries


def verify(project: Path = NPM_PROJECT, vendor: Path = VENDOR_DIR) -> list[str]:
    """What is wrong with the vendored files (empty: nothing): a file missing or changed
    since it was copied, or copied from another version than the lockfile's."""
    manifest = vendor / "MANIFEST.json"
    if not manifest.exists():
        return [f"{manifest} is missing: run tickplant install --console"]
    entries = {e["file"]: e for e in json.loads(manifest.read_text())}
    locked = locked_versions(project)
    problems = []
    for f in FILES:
        key = f"{f.package}/{f.name}"
        entry = entries.get(key)
        path = vendor / key
        if entry is None or not path.exists():
            problems.append(f"{key}: not vendored; run tickplant install --console")
        elif entry["version"] != locked[f.package]:
            problems.append(f"{key}: from {f.package} {entry['version']}, the lockfile pins {locked[f.package]}")
        elif _sha256(path) != entry["sha256"]:
            problems.append(f"{key}: changed since it was copied from {f.package} {entry['version']}")
    return problems
