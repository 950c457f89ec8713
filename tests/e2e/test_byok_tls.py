"""Providers of their own gateway: HTTPS verified against a test CA (and refused with a wrong
certificate), and an extra OpenAI-compatible provider over http with a base path and no platform
key, usable only with a parent's own key."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from aigw.embedded import free_port
from aigw.secrets_box import KEY_FILE, generate_master_key, key_id
from aigw.supervisor import read_run_state
from tests.conftest import own_database
from tests.e2e.certs import make_ca, make_server_cert
from tests.e2e.conftest import Parent
from tests.e2e.harness import (
    Gateway,
    MockProvider,
    aigw_command,
    start_gateway,
    stop_process,
    wait_until,
    write_config,
)

MESSAGES = [{"role": "user", "content": "Hi"}]
PLATFORM_KEY = "sk-platform-secure-0000"
PRICE = {"input": 1, "output": 1}


@dataclass
class HttpsMock:
    url: str
    context: ssl.SSLContext

    def requests(self) -> list[dict[str, Any]]:
        with httpx.Client(verify=self.context) as client:
            return list(client.get(f"{self.url}/_mock/requests").json()["data"])


@dataclass
class TlsSetup:
    gateway: Gateway
    secure: HttpsMock
    plain: MockProvider
    database_url: str
    redis_url: str
    data_dir: Path

    def chat(self, key: str, model: str) -> httpx.Response:
        return httpx.post(
            f"{self.gateway.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": model, "messages": MESSAGES},
            timeout=30,
        )


@contextlib.contextmanager
def https_mock(folder: Path, cert: Path, key: Path, ca: Path) -> Iterator[HttpsMock]:
    """The mock provider app under uvicorn with TLS, on a free port of localhost."""
    port = free_port()
    log = (folder / f"https-mock-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "aigw.mock.app:create_mock_app",
         "--host", "127.0.0.1", "--port", str(port), "--lifespan", "off",
         "--log-level", "warning", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
        stdout=log,
        stderr=log,
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # one of them is issued for another name on purpose
    mock = HttpsMock(f"https://localhost:{port}", context)

    def answers() -> bool:
        try:
            mock.requests()
        except (httpx.HTTPError, ssl.SSLError):
            return False
        return True

    try:
        wait_until(answers, "https mock provider", folder)
        yield mock
    finally:
        stop_process(process)
        log.close()


@pytest.fixture(scope="module")
async def tls_database(database_url: str) -> AsyncIterator[str]:
    async with own_database(database_url, f"aigw_e2e_tls_{os.getpid()}") as url:
        yield url


@pytest.fixture(scope="module")
def tls(
    tmp_path_factory: pytest.TempPathFactory, mock_provider: MockProvider, tls_database: str
) -> Iterator[TlsSetup]:
    folder = Path(tmp_path_factory.mktemp("tls"))
    ca = make_ca(folder, "aigw test CA")
    other_ca = make_ca(folder, "another CA")
    good_cert, good_key = make_server_cert(folder, ca, ["localhost"], ("127.0.0.1",))
    wrong_cert, wrong_key = make_server_cert(folder, ca, ["other.example"])
    with (
        https_mock(folder, good_cert, good_key, ca.pem_path) as secure,
        https_mock(folder, wrong_cert, wrong_key, ca.pem_path) as wrong_host,
    ):
        providers = {
            "secure": {
                "base_url": f"{secure.url}/secure/v1",
                "api_key": PLATFORM_KEY,
                "ca_file": str(ca.pem_path),
            },
            "wrongca": {
                "base_url": f"{secure.url}/secure/v1",
                "api_key": PLATFORM_KEY,
                "ca_file": str(other_ca.pem_path),
            },
            "wronghost": {
                "base_url": f"{wrong_host.url}/v1",
                "api_key": PLATFORM_KEY,
                "ca_file": str(ca.pem_path),
            },
            "extra": {"base_url": f"{mock_provider.url}/deep/base/openai/v1", "api_key": ""},
        }
        config_path = folder / "gateway.yaml"
        config = write_config(
            config_path,
            mock_url=None,
            database_url=tls_database,
            redis_url=None,  # embedded Redis in the data dir: nothing shared with other tests
            data_dir=folder / "data",
            extra={
                "providers": providers,
                "pricing": {f"{name}/model-x": PRICE for name in providers},
            },
        )
        gateway = start_gateway(config_path, config)
        try:
            state = read_run_state(folder / "data")
            assert state is not None
            yield TlsSetup(
                gateway, secure, mock_provider, tls_database, state["redis_url"], folder / "data"
            )
        finally:
            gateway.stop()


@pytest.fixture
async def tls_parent(tls: TlsSetup) -> Parent:
    from controlplane.accounts import create_parent_account

    account_id, key = await create_parent_account(tls.database_url, "tls", tls.redis_url)
    return Parent(account_id, key, tls.gateway.base_url)


def test_an_https_provider_is_verified_with_its_ca_file(tls: TlsSetup, tls_parent: Parent) -> None:
    key = tls_parent.create_sub_account()["key"]

    response = tls.chat(key, "secure/model-x")

    assert response.status_code == 200, response.text
    received = tls.secure.requests()[-1]
    assert received["path"] == "/secure/v1/chat/completions"
    assert received["headers"]["authorization"] == f"Bearer {PLATFORM_KEY}"
    assert received["headers"]["host"] == tls.secure.url.removeprefix("https://")

    byok = f"sk-byok-secure-{secrets.token_hex(16)}"
    attached = tls_parent.call("PUT", "/provider-keys/secure", json={"api_key": byok})
    assert attached.status_code == 200
    response = tls.chat(key, "secure/model-x")
    assert response.status_code == 200
    assert response.headers["x-aig-byok"] == "true"
    assert tls.secure.requests()[-1]["headers"]["authorization"] == f"Bearer {byok}"


@pytest.mark.parametrize(
    ("provider", "why"),
    [("wrongca", "signed by another CA"), ("wronghost", "issued for another hostname")],
)
def test_a_wrong_certificate_is_refused(
    tls: TlsSetup, tls_parent: Parent, provider: str, why: str
) -> None:
    key = tls_parent.create_sub_account()["key"]
    before = len(tls.secure.requests())

    response = tls.chat(key, f"{provider}/model-x")

    assert response.status_code == 502, f"{why}: {response.text}"
    error = response.json()["error"]
    assert error["code"] == "provider_tls_error", error
    assert "certificate" in error["message"]
    assert response.headers["x-aig-request-id"]
    assert len(tls.secure.requests()) == before  # no request was sent in the clear or at all


def test_an_extra_provider_without_platform_key_works_with_the_parents_key(
    tls: TlsSetup, tls_parent: Parent
) -> None:
    key = tls_parent.create_sub_account()["key"]

    refused = tls.chat(key, "extra/model-x")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "provider_not_configured"
    assert refused.json()["error"]["provider"] == "extra"

    byok = f"sk-byok-extra-{secrets.token_hex(16)}"
    attached = tls_parent.call("PUT", "/provider-keys/extra", json={"api_key": byok})
    assert attached.status_code == 200
    response = tls.chat(key, "extra/model-x")

    assert response.status_code == 200, response.text
    assert response.headers["x-aig-byok"] == "true"
    received = tls.plain.last_request()
    assert received["path"] == "/deep/base/openai/v1/chat/completions"
    assert received["body"]["model"] == "model-x"
    assert received["headers"]["authorization"] == f"Bearer {byok}"


async def test_another_parent_still_has_no_key_for_the_extra_provider(
    tls: TlsSetup, tls_parent: Parent
) -> None:
    from controlplane.accounts import create_parent_account

    byok = f"sk-byok-extra-{secrets.token_hex(16)}"
    assert tls_parent.call("PUT", "/provider-keys/extra", json={"api_key": byok}).status_code == 200
    other_id, other_key = await create_parent_account(tls.database_url, "other", tls.redis_url)
    other = Parent(other_id, other_key, tls.gateway.base_url)

    response = tls.chat(other.create_sub_account()["key"], "extra/model-x")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "provider_not_configured"


def test_aigw_up_refuses_keys_sealed_with_another_master_key(
    tls: TlsSetup, tls_parent: Parent, tmp_path: Path
) -> None:
    byok = f"sk-byok-extra-{secrets.token_hex(16)}"
    assert tls_parent.call("PUT", "/provider-keys/extra", json={"api_key": byok}).status_code == 200
    generated = (tls.data_dir / KEY_FILE).read_text().strip()  # the first start made it
    config_path = tmp_path / "gateway.yaml"
    write_config(
        config_path,
        mock_url=None,
        database_url=tls.database_url,
        redis_url=None,
        data_dir=tmp_path / "data",
        extra={"secrets_key": generate_master_key()},
    )

    result = subprocess.run(
        [*aigw_command(), "up", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Refusing to start" in result.stderr and "secrets_key" in result.stderr
    assert key_id(base64.b64decode(generated)) in result.stderr
    assert generated not in result.stdout + result.stderr
    assert not (tmp_path / "data" / "logs" / "controlplane.log").exists()  # nothing started


def test_zz_logs_never_contain_a_provider_key(tls: TlsSetup, tls_parent: Parent) -> None:
    """Last in the module: the keys attached above and the generated master key."""
    attached = ["sk-byok-secure-", "sk-byok-extra-"]
    logs = [*tls.data_dir.joinpath("logs").glob("*.log"), tls.gateway.log_path]
    text = "\n".join(path.read_text(errors="replace") for path in logs)
    assert not any(prefix in text for prefix in attached)
    assert (tls.data_dir / KEY_FILE).read_text().strip() not in text
