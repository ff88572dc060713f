"""The plant as a user installs it: a wheel in a fresh virtualenv, run from elsewhere.

The editable install the other tests use reads every data file from the checkout,
so it cannot show a file the wheel forgot. Here the wheel is built and installed
without the checkout on the path; its dependencies come from this venv's
site-packages through a ``.pth`` line (pip cannot fetch them offline, and they are
not what is under test).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tickplant.config import REPO_ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv holding only the tickplant wheel (and this venv's deps)."""
    root = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools builds in the tree and would reuse a stale build/
    source = root / "source"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".*", "build", "*.egg-info", "__pycache__", "tests", "bench", "docker", "node_modules"))
    wheels = root / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("tickplant-*.whl")
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    target = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (target / "deps.pth").write_text("\n".join(deps) + "\n")
    return python


def run_installed(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKPLANT_") and k != "PYTHONPATH"}
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def probe(python: Path, code: str, cwd: Path) -> Any:
    """What ``code`` prints as JSON, run by the installed wheel's python."""
    answer = run_installed(python, "-c", code, cwd=cwd)
    assert answer.returncode == 0, answer.stderr
    return json.loads(answer.stdout)


def test_the_wheel_carries_the_schemas_and_runs_from_elsewhere(installed: Path, tmp_path: Path) -> None:
    found = probe(installed, (
        "import tickplant, json; from pathlib import Path;"
        "from tickplant.config import Settings; from ingest.schemas import SchemaCatalog;"
        "s = Settings(); c = SchemaCatalog.load(s.schemas_dir);"
        "print(json.dumps({'module': tickplant.__file__, 'tables': sorted(c.tables)}))"
    ), tmp_path)
    assert not found["module"].startswith(str(REPO_ROOT)), f"imported from the checkout: {found['module']}"
    assert {"trade", "quote"} <= set(found["tables"])


def test_the_wheel_carries_the_web_consoles_page_and_libraries(installed: Path, tmp_path: Path) -> None:
    found = probe(installed, (
        "import json; from gateway import console_assets as c;"
        "want = [c.STATIC_DIR / 'console' / n for n in ('index.html', 'console.js', 'console.css')]"
        " + [c.VENDOR_DIR / f.package / f.name for f in c.FILES];"
        "print(json.dumps({'dir': str(c.STATIC_DIR), 'missing': [str(p) for p in want if not p.exists()]}))"
    ), tmp_path)
    assert not found["dir"].startswith(str(REPO_ROOT)) and found["missing"] == []


def test_the_installed_cli_answers(installed: Path, tmp_path: Path) -> None:
    answer = run_installed(installed, "-m", "tickplant", "--help", cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    assert "replay" in answer.stdout and "gateway" in answer.stdout
