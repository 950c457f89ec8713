"""Hostile input on the data plane, through the real Envoy and extproc: malformed and oversized
bodies, deep nesting, wrong types, invalid UTF-8, header injection, huge and near-miss keys. Each
gets a 4xx in the contract's error envelope, never a 500 or a hang, and the gateway keeps serving
(no worker crashed). Bodies the existing `test_data_plane.py` covers (not JSON, no model, a body
over `max_request_bytes`) are not repeated here."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.e2e.conftest import E2E, Parent
from tests.e2e.harness import PLATFORM_KEYS

MODEL = "openai/gpt-5.4-mini"
MESSAGES = [{"role": "user", "content": "Hi"}]
TIMEOUT_S = 20.0  # an answer that does not come within this is a hang


@pytest.fixture
def key(parent: Parent) -> str:
    return str(parent.create_sub_account(allowed_models=["openai/*"], spend_cap_cents=100)["key"])


@pytest.fixture(autouse=True)
def gateway_survives(e2e: E2E) -> Iterator[None]:
    """After each test: every gateway process still runs and a plain request still succeeds."""
    before = {p.pid for p in psutil.Process(e2e.gateway.process.pid).children(recursive=True)}
    yield
    after = {p.pid for p in psutil.Process(e2e.gateway.process.pid).children(recursive=True)}
    assert before <= after, "a gateway process died"
    assert e2e.gateway.process.poll() is None
    health = httpx.get(f"{e2e.gateway.url}/healthz", timeout=TIMEOUT_S)
    assert health.status_code == 200


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = dict(response.json()["error"])
    assert error["code"] == code, error
    assert {"message", "type", "code", "param"} <= set(error)
    assert response.headers["x-aig-request-id"]
    return error


def post(e2e: E2E, key: str, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{e2e.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json", **headers},
        content=content,
        timeout=TIMEOUT_S,
    )


DEPTH = 100_000


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   \n ",
        b'{"model": "openai/gpt-5.4-mini", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        b'{"model": "openai/gpt-5.\xc0\xaf4-mini", "messages": []}',
        b'{"model": "openai/gpt-5.4-mini", "messages": ' + b"[" * DEPTH + b"]" * DEPTH + b"}",
        b'{"model": "openai/gpt-5.4-mini", "messages": [], "extra": '
        + b'{"a":' * DEPTH
        + b"1"
        + b"}" * DEPTH
        + b"}",
        b'{"model": "openai/gpt-5.4-mini", "messages": [], "max_tokens": NaN}',
        b'{"model": "openai/gpt-5.4-mini", "messages": []',
        b'"openai/gpt-5.4-mini"',
        b"null",
        b"\x00" * 64,
    ],
    ids=[
        "empty",
        "whitespace",
        "invalid-utf8-in-content",
        "overlong-utf8-in-model",
        "100k-nested-arrays",
        "100k-nested-objects",
        "nan",
        "truncated",
        "a-string",
        "null",
        "nul-bytes",
    ],
)
def test_malformed_bodies_are_400(e2e: E2E, key: str, body: bytes) -> None:
    e2e.mock.clear()
    assert_error(post(e2e, key, body), 400, "invalid_request")
    assert e2e.mock.requests() == []


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": None}, "model"),
        ({"model": ""}, "model"),
        ({"model": ["openai/gpt-5.4-mini"]}, "model"),
        ({"model": {"name": "openai/gpt-5.4-mini"}}, "model"),
        ({"messages": "Hi"}, "messages"),
        ({"messages": {"role": "user"}}, "messages"),
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": 10**30}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"stream": True, "stream_options": "usage"}, "stream_options"),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_wrong_types_are_400_naming_the_field(
    e2e: E2E, key: str, fields: dict[str, Any], param: str
) -> None:
    e2e.mock.clear()
    body = json.dumps({"model": MODEL, "messages": MESSAGES, **fields}).encode()
    error = assert_error(post(e2e, key, body), 400, "invalid_request")
    assert error["param"] == param
    assert e2e.mock.requests() == []


def test_a_chunked_body_over_the_limit_is_413(e2e: E2E, key: str) -> None:
    limit = int(e2e.gateway.config.get("max_request_bytes", 10 * 1024 * 1024))

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "openai/gpt-5.4-mini", "messages": [{"role": "user", "content": "'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'"}]}'

    response = httpx.post(
        f"{e2e.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
        content=chunks(),
        timeout=TIMEOUT_S,
    )
    assert_error(response, 413, "request_too_large")


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer sk-aig-" + b"a" * 8000,
        b"Bearer " + b"sk-aig-" + "é".encode() * 40,
        b"Bearer sk-aig-\xff\xfe" + b"b" * 40,
        b"Bearer  sk-aig-" + b"c" * 43,
        b"bearer",
        b"Bearer sk-aig-",
        b"Basic " + b"sk-aig-" + b"d" * 43,
    ],
    ids=[
        "8k-key",
        "non-ascii-key",
        "latin1-bytes-key",
        "double-space",
        "scheme-only",
        "prefix-only",
        "other-scheme",
    ],
)
def test_strange_keys_are_401(e2e: E2E, authorization: bytes) -> None:
    e2e.mock.clear()
    response = httpx.post(
        f"{e2e.base_url}/chat/completions",
        headers=[(b"Authorization", authorization), (b"content-type", b"application/json")],
        json={"model": MODEL, "messages": MESSAGES},
        timeout=TIMEOUT_S,
    )
    assert_error(response, 401, "invalid_api_key")
    assert e2e.mock.requests() == []


def test_a_key_one_character_off_is_401(e2e: E2E, key: str) -> None:
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    for near_miss in (flipped, key[:-1], key + "x", key.upper(), key.replace("sk-aig-", "sk-aig_")):
        response = httpx.post(
            f"{e2e.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {near_miss}"},
            json={"model": MODEL, "messages": MESSAGES},
            timeout=TIMEOUT_S,
        )
        assert_error(response, 401, "invalid_api_key")


def test_client_sent_gateway_headers_are_ignored(e2e: E2E, key: str) -> None:
    e2e.mock.clear()
    response = httpx.post(
        f"{e2e.base_url}/chat/completions",
        headers={
            "Authorization": f"Bearer {key}",
            "x-aig-provider": "anthropic",  # Envoy routes on this header: it must be ours
            "x-aig-byok": "true",
        },
        json={"model": MODEL, "messages": MESSAGES},
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    received = e2e.mock.last_request()
    assert received["path"].endswith("/chat/completions")
    assert received["headers"]["authorization"] == f"Bearer {PLATFORM_KEYS['openai']}"
    assert response.headers["x-aig-byok"] == "false"


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer %KEY%\rX-Injected: 1",
        b"Authorization: Bearer %KEY%\x00X-Injected: 1",
        b"Authorization: Bearer sk-aig-" + b"a" * 64 * 1024,
        b"Authorization: Bearer \xc3\xa9\xff",
        b"Authorization: Bearer ",
    ],
    ids=["bare-cr", "nul", "64-kib", "utf8-and-invalid", "empty"],
)
def test_header_injection_and_oversized_headers_are_refused(
    e2e: E2E, key: str, header: bytes
) -> None:
    """Envoy's HTTP/1 parser answers 4xx or closes the connection without an answer (NUL, a
    header block over 60 KiB); either way nothing goes upstream."""
    e2e.mock.clear()
    status, body = raw_request(e2e.gateway.url, header.replace(b"%KEY%", key.encode()))
    assert status is None or 400 <= status < 500, (status, body)
    if status == 401:
        assert json.loads(body.partition(b"\r\n\r\n")[2])["error"]["code"] == "invalid_api_key"
    assert e2e.mock.requests() == []


def raw_request(base_url: str, header_lines: bytes) -> tuple[int | None, bytes]:
    """A request written byte by byte (no client library would send these headers): the
    status (None when the connection closed without an answer) and the rest of the answer."""
    parts = urlsplit(base_url)
    body = b'{"model": "openai/gpt-5.4-mini", "messages": [{"role": "user", "content": "Hi"}]}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\n"
        + f"Host: {parts.hostname}:{parts.port}\r\n".encode()
        + header_lines
        + b"\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    answer = b""
    with socket.create_connection((parts.hostname or "", parts.port or 80), TIMEOUT_S) as sock:
        sock.sendall(request)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    if not answer:
        return None, b""
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest
