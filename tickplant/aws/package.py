"""``tickplant aws package``: what AWS Lambda needs to run the handlers, and the CloudFormation.

The function's code is the project's packages and table schemas (``function.zip``).
Its dependencies are measured as installed here (each distribution's files, from
its RECORD) against Lambda's limit of 250 MB unzipped for a function and all its
layers: within it they go in a layer (``layer.zip``, under ``python/``); past it
(chDB alone is over 500 MB) the function ships as a container image instead
(10 GB limit): ``image/`` holds the Dockerfile and the pinned requirements, built
with ``docker build`` and pushed to ECR. ``lambda.yaml`` is the CloudFormation for
the functions in the form chosen (deploy/cloudformation/lambda.yaml is this file as
the repository's dependencies make it), a template of its own that the plant's
template includes as a nested stack.

Archives are deterministic (sorted entries, fixed times): the same tree gives the
same bytes, so CloudFormation sees a change only when there is one.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import shutil
import sys
import zipfile
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

from tickplant.aws.template import render_template
from tickplant.config import REPO_ROOT

PACKAGES = ("tickplant", "ingest", "streams", "sinks", "gateway", "schemas")
DIST = "tickplant"
UNZIPPED_LIMIT = 250 * 1000 * 1000  # Lambda: a function and its layers, unzipped (AWS counts 250 MB as 262,144,000 bytes; the stricter)
ZIP_TIME = (2020, 1, 1, 0, 0, 0)
HANDLERS = {"query": "tickplant.aws.lambda_handlers.query",
            "black_scholes": "tickplant.aws.lambda_handlers.black_scholes"}


class PackageError(RuntimeError):
    """The package cannot be built; the message says what is missing."""


@dataclass
class Dependency:
    name: str
    version: str
    files: list[Path]
    size: int


@dataclass
class Package:
    """What was built and why that form: sizes in bytes."""

    out: Path
    code_size: int
    dependencies: list[Dependency]
    form: str  # "zip+layer" or "image"
    artifacts: list[Path] = field(default_factory=list)

    @property
    def dependencies_size(self) -> int:
        return sum(d.size for d in self.dependencies)


def build(out: Path) -> Package:
    """Build the function's archive, its dependencies' layer or image context, and the template."""
    out.mkdir(parents=True, exist_ok=True)
    code = code_files()
    function = out / "function.zip"
    _zip(function, [(path, path.relative_to(REPO_ROOT).as_posix()) for path in code])
    deps = dependencies()
    code_size = sum(p.stat().st_size for p in code)
    total = code_size + sum(d.size for d in deps)
    package = Package(out, code_size, deps, "zip+layer" if total <= UNZIPPED_LIMIT else "image", [function])
    for stale in (out / "layer.zip", out / "image"):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    if package.form == "zip+layer":
        layer = out / "layer.zip"
        _zip(layer, [(f, f"python/{_relative(f)}") for d in deps for f in d.files])
        package.artifacts.append(layer)
    else:
        package.artifacts.extend(_image_context(out / "image", deps))
    template = out / "lambda.yaml"
    template.write_text(render_template(package.form, HANDLERS))
    package.artifacts.append(template)
    return package


def code_files() -> list[Path]:
    """The project's packages as they ship: modules and package data, no caches."""
    files = []
    for name in PACKAGES:
        root = REPO_ROOT / name
        if not root.is_dir():
            raise PackageError(f"package {name!r} is not in {REPO_ROOT}")
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
                files.append(path)
    return files


def dependencies() -> list[Dependency]:
    """The project's runtime dependencies and theirs, as installed in this environment."""
    try:
        wanted = md.requires(DIST) or []
    except md.PackageNotFoundError:
        raise PackageError(f"the {DIST!r} distribution is not installed here (pip install -e .)") from None
    env: dict[str, str | AbstractSet[str]] = {k: str(v) for k, v in default_environment().items()}
    seen: dict[str, Dependency] = {}
    queue = [Requirement(r) for r in wanted]
    while queue:
        req = queue.pop()
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        key = _canonical(req.name)
        if key in seen or key == DIST:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            raise PackageError(f"dependency {req.name!r} is not installed here") from None
        files = [Path(str(dist.locate_file(f))) for f in dist.files or [] if not str(f).startswith("..")]
        files = [f for f in files if f.is_file() and "__pycache__" not in f.parts]
        seen[key] = Dependency(dist.metadata["Name"], dist.version, files, sum(f.stat().st_size for f in files))
        for extra_req in dist.requires or []:
            sub = Requirement(extra_req)
            if sub.marker is None or sub.marker.evaluate({**env, "extra": ""}) or any(
                    sub.marker.evaluate({**env, "extra": e}) for e in req.extras):
                queue.append(Requirement(str(sub).split(";")[0]))
    return sorted(seen.values(), key=lambda d: -d.size)


def _image_context(directory: Path, deps: list[Dependency]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    requirements = directory / "requirements.txt"
    requirements.write_text("".join(f"{d.name}=={d.version}\n" for d in sorted(deps, key=lambda d: d.name.lower())))
    dockerfile = directory / "Dockerfile"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    dockerfile.write_text(f"""\
# The tickplant Lambda functions as a container image: its dependencies (chDB among them)
# are past the 250 MB that a zip and its layers may hold. Built by `tickplant aws package`:
#   cd {directory.parent.name} && docker build -f image/Dockerfile -t tickplant-lambda . && docker push ...
FROM public.ecr.aws/lambda/python:{python}
COPY image/requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY function.zip ./
RUN python -m zipfile -e function.zip "${{LAMBDA_TASK_ROOT}}" && rm function.zip
ENV TICKPLANT_DATA_DIR=/tmp/tickplant
# each function names its handler (ImageConfig.Command); this one unless told
CMD ["{HANDLERS['query']}"]
""")
    return [dockerfile, requirements]


def _zip(path: Path, entries: list[tuple[Path, str]]) -> None:
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for source, name in sorted(entries, key=lambda e: e[1]):
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.external_attr = (0o755 if source.stat().st_mode & 0o111 else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(source, "rb") as f:
                z.writestr(info, f.read())
    tmp.replace(path)


def _relative(path: Path) -> str:
    """A dependency's file relative to the site-packages directory holding it."""
    parts = path.parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in ("site-packages", "dist-packages"):
            return "/".join(parts[i + 1:])
    raise PackageError(f"{path} is not under a site-packages directory")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
