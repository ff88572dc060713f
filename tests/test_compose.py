"""docker-compose.yml: valid Compose, and wired the way the plant needs.

No Docker engine runs here, so `docker compose up` can't prove the file. What
can fail silently is checked instead: the file against the official Compose
Specification schema (tests/compose_spec.py says where it comes from), and the
wiring a schema can't see -- a dependency on a missing service, a bootstrap
address that isn't the broker's internal listener, a gateway bound to loopback
inside its container, a misspelt TICKPLANT_ variable (the plant ignores unknown
ones), a volume used but not declared.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import load_compose_schema
from jsonschema.validators import validator_for

from tickplant.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
KAFKA = "kafka"  # the broker's service name, which containers resolve
HOST_KAFKA_PORT = 9092
# TICKPLANT_ variables the compose file sets for settings that don't exist yet;
# drop a name from here once tickplant/config.py has the field.
PROPOSED_SETTINGS: set[str] = set()

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def schema() -> Doc:
    return load_compose_schema()


@pytest.fixture(scope="module")
def compose() -> Doc:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict), f"{COMPOSE_FILE} is not a YAML mapping"
    return doc


def spec_errors(doc: Doc, schema: Doc) -> list[str]:
    """Every schema violation as 'path: message'; the schema's $schema picks the draft."""
    validator = validator_for(schema)(schema)
    return sorted(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    )


def services(doc: Doc) -> dict[str, Doc]:
    return doc.get("services") or {}


def plant_services(doc: Doc) -> dict[str, Doc]:
    """The services built from this repo (the others run upstream images)."""
    return {name: svc for name, svc in services(doc).items() if "build" in svc}


def environment(svc: Doc) -> dict[str, str]:
    """A service's environment in either syntax (mapping, or list of KEY=VALUE)."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def depends_on(svc: Doc) -> dict[str, str]:
    """Dependency -> condition; the list syntax means service_started."""
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec["condition"] for name, spec in deps.items()}


def published_ports(svc: Doc) -> dict[int, int]:
    """Host port -> container port, from short ('[ip:]host:container[/proto]') or long syntax."""
    out: dict[int, int] = {}
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published") is not None:
                out[int(port["published"])] = int(port["target"])
            continue
        parts = str(port).split("/")[0].rsplit(":", 2)
        if len(parts) >= 2:
            out[int(parts[-2])] = int(parts[-1])
    return out


def named_volumes(svc: Doc) -> set[str]:
    """Named volumes a service mounts (bind mounts and anonymous volumes left out)."""
    names = set()
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            if vol.get("type", "volume") == "volume" and vol.get("source"):
                names.add(vol["source"])
        elif ":" in vol and not vol.startswith(("/", ".", "~", "$")):
            names.add(vol.split(":", 1)[0])
    return names


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,...' (Kafka's listeners syntax) -> {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


# -- the schema ---------------------------------------------------------------

def test_schema_is_the_compose_spec(schema: Doc) -> None:
    assert schema.get("title") == "Compose Specification"
    validator_for(schema).check_schema(schema)


def test_compose_file_matches_the_spec(compose: Doc, schema: Doc) -> None:
    assert spec_errors(compose, schema) == []


def _unknown_service_key(doc: Doc) -> None:
    doc["services"][KAFKA]["imagee"] = "apache/kafka"


def _bad_condition(doc: Doc) -> None:
    doc["services"]["gateway"]["depends_on"] = {KAFKA: {"condition": "service_ready"}}


def _ports_not_a_list(doc: Doc) -> None:
    doc["services"]["gateway"]["ports"] = "8700:8700"


def _unknown_top_level_key(doc: Doc) -> None:
    doc["service"] = doc.pop("services")


@pytest.mark.parametrize(
    "breakage", [_unknown_service_key, _bad_condition, _ports_not_a_list, _unknown_top_level_key]
)
def test_the_spec_check_rejects_broken_files(
    compose: Doc, schema: Doc, breakage: Callable[[Doc], None]
) -> None:
    """Proof that the check above can fail: each of these is rejected by Compose too."""
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert spec_errors(broken, schema), f"{breakage.__name__} was accepted"


# -- the wiring ---------------------------------------------------------------

def test_dependencies_exist_and_can_be_met(compose: Doc) -> None:
    svcs = services(compose)
    for name, svc in svcs.items():
        for dep, condition in depends_on(svc).items():
            assert dep in svcs, f"{name} depends on {dep}, which is not a service"
            target = svcs[dep]
            if condition == "service_healthy":
                test = (target.get("healthcheck") or {}).get("test")
                assert test and test != ["NONE"], f"{name} waits for {dep} to be healthy; it has no healthcheck"
            if condition == "service_completed_successfully":
                assert target.get("restart", "no") == "no", f"{dep} must run once for {name} to wait on it"


def test_plant_bootstraps_from_the_brokers_internal_listener(compose: Doc) -> None:
    env = environment(services(compose)[KAFKA])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(env["KAFKA_LISTENERS"])
    internal = [(name, host, port) for name, (host, port) in advertised.items() if host == KAFKA]
    assert len(internal) == 1, f"want one listener advertised as {KAFKA}:<port>, got {advertised}"
    name, host, port = internal[0]
    assert name in bound and bound[name][1] == port, f"{name} is advertised on {port} but bound as {bound}"
    assert name not in env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")
    plants = plant_services(compose)
    assert plants, "no service is built from this repo"
    for svc_name, svc in plants.items():
        got = environment(svc).get("TICKPLANT_BOOTSTRAP_SERVERS")
        assert got == f"{host}:{port}", f"{svc_name}: TICKPLANT_BOOTSTRAP_SERVERS={got}, not {host}:{port}"
        assert depends_on(svc).get(KAFKA) == "service_healthy", f"{svc_name} must wait for the broker"


def test_host_reaches_kafka_on_9092(compose: Doc) -> None:
    """The host's port must land on a listener that advertises an address the host can reach."""
    kafka = services(compose)[KAFKA]
    env = environment(kafka)
    container_port = published_ports(kafka).get(HOST_KAFKA_PORT)
    assert container_port is not None, f"{KAFKA} does not publish {HOST_KAFKA_PORT}"
    names = [n for n, (_, p) in listeners(env["KAFKA_LISTENERS"]).items() if p == container_port]
    assert len(names) == 1, f"no single listener bound on container port {container_port}"
    host, port = listeners(env["KAFKA_ADVERTISED_LISTENERS"])[names[0]]
    assert (host, port) in {("localhost", HOST_KAFKA_PORT), ("127.0.0.1", HOST_KAFKA_PORT)}, (
        f"host port {HOST_KAFKA_PORT} reaches listener {names[0]}, which advertises {host}:{port}"
    )


def test_gateway_port_is_published_and_reachable(compose: Doc) -> None:
    default = Settings()
    found = False
    for name, svc in plant_services(compose).items():
        env = environment(svc)
        target = published_ports(svc).get(default.gateway_port)
        if target is None:
            continue
        found = True
        listen = int(env.get("TICKPLANT_GATEWAY_PORT", default.gateway_port))
        assert target == listen, f"{name}: publishes {default.gateway_port} onto {target}, listens on {listen}"
        # the default 127.0.0.1 inside a container is unreachable through a published port
        host = env.get("TICKPLANT_GATEWAY_HOST")
        assert host == "0.0.0.0", f"{name}: TICKPLANT_GATEWAY_HOST={host}, not 0.0.0.0"
    assert found, f"no plant service publishes the gateway on {default.gateway_port}"


def test_volumes_are_declared_and_used(compose: Doc) -> None:
    declared = set(compose.get("volumes") or {})
    used = set().union(*(named_volumes(svc) for svc in services(compose).values()))
    assert used <= declared, f"used but not declared: {sorted(used - declared)}"
    assert declared <= used, f"declared but unused: {sorted(declared - used)}"


def test_tickplant_variables_are_settings(
    compose: Doc, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The plant ignores unknown TICKPLANT_ variables, so a typo would go unnoticed."""
    fields = {f"TICKPLANT_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    monkeypatch.setenv("TICKPLANT_CONFIG", str(tmp_path / "absent.toml"))
    for name, svc in plant_services(compose).items():
        tick = {k: v for k, v in environment(svc).items() if k.startswith("TICKPLANT_")}
        unknown = set(tick) - fields - PROPOSED_SETTINGS
        assert not unknown, f"{name}: not settings: {sorted(unknown)}"
        for key, value in tick.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()  # raises ConfigError on a malformed value
        assert not settings.embedded, f"{name} would start its own broker"


def test_hdb_bucket_is_created_before_the_plant(compose: Doc) -> None:
    svcs = services(compose)
    for name, svc in plant_services(compose).items():
        uri = environment(svc).get("TICKPLANT_HDB_ROOT", "")
        if not uri.startswith("s3://"):
            continue
        bucket = uri.removeprefix("s3://").split("/", 1)[0]
        inits = [
            dep for dep, cond in depends_on(svc).items()
            if cond == "service_completed_successfully" and bucket in str(svcs[dep].get("command"))
        ]
        assert inits, f"{name} uses bucket {bucket!r} but waits for no service that creates it"


def test_image_builds_from_this_repo(compose: Doc) -> None:
    """Each build points at a real Dockerfile, which copies every package pyproject installs."""
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    wanted = {p.rstrip("*.") for p in packages["find"]["include"]}
    for name, svc in plant_services(compose).items():
        build = svc["build"] if isinstance(svc["build"], dict) else {"context": svc["build"]}
        context = ROOT / build.get("context", ".")
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        copied = set()
        for line in dockerfile.read_text().splitlines():
            words = line.split()
            if words[:1] == ["COPY"]:
                copied |= {w.rstrip("/") for w in words[1:-1] if not w.startswith("--")}
        assert wanted <= copied, f"{dockerfile} does not copy {sorted(wanted - copied)}"
        assert "pyproject.toml" in copied and "schemas" in copied
