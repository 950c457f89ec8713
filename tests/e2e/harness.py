"""Runs the real gateway for end-to-end tests: `aigw up` (Envoy, extproc, control plane) on free
ports, a mock provider as every upstream, and helpers to talk to all of it like a user would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from aigw.embedded import free_port

READY_TIMEOUT_S = 60.0
PLATFORM_KEYS = {
    "openai": "sk-platform-openai-0000",
    "anthropic": "sk-platform-anthropic-0000",
    "google": "sk-platform-google-0000",
    "local": "sk-platform-local-0000",
}


def aigw_command() -> list[str]:
    return [str(Path(sys.executable).with_name("aigw"))]


@dataclass
class MockProvider:
    url: str
    process: subprocess.Popen[bytes]

    def requests(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.url}/_mock/requests").json()["data"])

    def last_request(self) -> dict[str, Any]:
        received = self.requests()
        assert received, "the mock provider received no request"
        return received[-1]

    def clear(self) -> None:
        httpx.delete(f"{self.url}/_mock/requests")


@contextlib.contextmanager
def run_mock_provider(log_dir: Path) -> Iterator[MockProvider]:
    port = free_port()
    log = (log_dir / "mock-provider.log").open("wb")
    process = subprocess.Popen(
        [*aigw_command(), "mock-provider", "--port", str(port)], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{url}/_mock/requests"), "mock provider", log_dir)
        yield MockProvider(url, process)
    finally:
        stop_process(process)
        log.close()


def write_config(
    path: Path,
    *,
    mock_url: str | None,
    database_url: str | None,
    redis_url: str | None,
    data_dir: Path,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A gateway configuration on free ports; providers point at the mock when given."""
    config: dict[str, Any] = {
        "server": {
            "host": "127.0.0.1",
            "port": free_port(),
            "controlplane_port": free_port(),
            "extproc_port": free_port(),
            "envoy_admin_port": free_port(),
        },
        "redis_url": redis_url or "",
        "database_url": database_url or "",
        "data_dir": str(data_dir),
        "tiers": {
            "free": {
                "spend_cap_cents": 500,
                "rate_limit_rpm": 60,
                "byok": False,
                "allowed_models": ["openai/gpt-5.4-mini", "google/gemini-*-flash*"],
            },
            "pro": {"spend_cap_cents": 10000, "allowed_models": ["*"]},
        },
        "pricing": {
            "openai/gpt-5.4-mini": {"input": 0.25, "cached_input": 0.025, "output": 2.0},
            "openai/gpt-test-pricey": {"input": 10, "output": 100},
            "local/llama-local": {"input": 0.1, "output": 0.1},
        },
    }
    if mock_url:
        config["providers"] = {
            "openai": {"base_url": f"{mock_url}/v1", "api_key": PLATFORM_KEYS["openai"]},
            "anthropic": {
                "base_url": f"{mock_url}/v1",
                "auth": "x-api-key",
                "api_key": PLATFORM_KEYS["anthropic"],
            },
            "google": {
                "base_url": f"{mock_url}/v1beta/openai",
                "api_key": PLATFORM_KEYS["google"],
            },
            "local": {
                "base_url": f"{mock_url}/serving/v1",
                "api_key": PLATFORM_KEYS["local"],
                "models": ["llama-local"],
            },
            "nokey": {"base_url": f"{mock_url}/v1", "api_key": ""},
        }
    config.update(extra or {})
    path.write_text(yaml.safe_dump(config))
    return config


@dataclass
class Gateway:
    """One running `aigw up`."""

    config_path: Path
    config: dict[str, Any]
    process: subprocess.Popen[bytes]
    log_path: Path
    children: list[psutil.Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        server = self.config["server"]
        return f"http://{server['host']}:{server['port']}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT) -> int:
        return stop_process(self.process, sig)


def start_gateway(config_path: Path, config: dict[str, Any], *args: str) -> Gateway:
    log_path = config_path.with_suffix(".log")
    log = log_path.open("wb")
    process = subprocess.Popen(
        [*aigw_command(), "up", "--config", str(config_path), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    gateway = Gateway(config_path, config, process, log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"aigw up exited with {process.returncode}:\n{gateway.output()}")
        return _answers(f"{gateway.url}/healthz")

    try:
        wait_until(ready, "aigw up", config_path.parent, log_path)
    except BaseException:
        gateway.stop()
        raise
    gateway.children = psutil.Process(process.pid).children(recursive=True)
    return gateway


@contextlib.contextmanager
def run_gateway(
    folder: Path,
    *args: str,
    mock_url: str | None,
    database_url: str | None,
    redis_url: str | None,
    extra: dict[str, Any] | None = None,
) -> Iterator[Gateway]:
    """`aigw up *args` on a configuration written to `folder` (data in `folder/data`), stopped
    afterwards."""
    config_path = folder / "gateway.yaml"
    config = write_config(
        config_path,
        mock_url=mock_url,
        database_url=database_url,
        redis_url=redis_url,
        data_dir=folder / "data",
        extra=extra,
    )
    gateway = start_gateway(config_path, config, *args)
    try:
        yield gateway
    finally:
        gateway.stop()


def wait_until(check: Any, what: str, log_dir: Path, log_path: Path | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    tail = log_path.read_text(errors="replace")[-4000:] if log_path else ""
    raise AssertionError(f"{what} not ready in {READY_TIMEOUT_S:.0f} s (logs in {log_dir})\n{tail}")


def eventually(check: Any, timeout: float = 1.0) -> Any:
    """Poll `check` until it returns a truthy value or `timeout` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.02)


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
