"""The fake provider every configuration is pointed at, started once per run:

- JSON: an Envoy answering a canned chat completion (with `usage`) by `direct_response` behind
  a buffer filter, so that connections stay alive (templates/provider_envoy.yaml);
- SSE: `bench.sse_source`, a bare asyncio/uvloop server streaming N chunks plus a usage chunk.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.payloads import chat_completion
from bench.procs import Child, answers, free_port, spawn, stop, wait_until
from bench.targets import render, start_envoy


@dataclass
class FakeProvider:
    json_port: int
    sse_port: int
    children: list[Child]

    @property
    def json_url(self) -> str:
        return f"http://127.0.0.1:{self.json_port}"

    @property
    def sse_url(self) -> str:
        return f"http://127.0.0.1:{self.sse_port}"

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def stop(self) -> None:
        for child in self.children:
            stop(child)


def start_fake_provider(work: Path, chunks: int, interval_ms: float) -> FakeProvider:
    """Start both halves of the fake provider and wait until they answer."""
    json_port, sse_port = free_port(), free_port()
    config = render(
        "provider_envoy.yaml",
        work / "provider_envoy.yaml",
        port=json_port,
        admin_port=free_port(),
        body=orjson.dumps(chat_completion().decode()).decode(),
    )
    envoy = start_envoy("provider-envoy", config, work, json_port)
    source = spawn(
        "sse-source",
        [
            sys.executable,
            "-m",
            "bench.sse_source",
            "--port",
            str(sse_port),
            "--chunks",
            str(chunks),
            "--interval-ms",
            str(interval_ms),
        ],
        work,
        cwd=Path(__file__).resolve().parent.parent,
    )
    provider = FakeProvider(json_port, sse_port, [envoy, source])
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{sse_port}/"), "SSE source", source)
    except BaseException:
        provider.stop()
        raise
    return provider
