"""The `floor` configuration: what the gateway's Envoy ↔ extproc design costs before any of its
own work — Envoy with the same ext_proc set-up and message pattern (three messages for a
non-streamed request, one per chunk for a stream) and a processor that passes everything on
(`bench/floor_processor.py`, `templates/floor_envoy.yaml`). The gateway's distance to it is
the cost of authenticating, admitting in Redis, metering and settling.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from bench.fake_provider import FakeProvider
from bench.procs import Child, free_port, spawn, stop, wait_until
from bench.targets import Target, envoy_requests, render, start_envoy


def floor_target(work: Path, provider: FakeProvider) -> Target:
    processor_port, port = free_port(), free_port()
    processor = spawn(
        "floor-processor",
        [sys.executable, "-m", "bench.floor_processor", "--port", str(processor_port)],
        work,
        cwd=Path(__file__).resolve().parent.parent,
    )
    children: list[Child] = [processor]
    try:
        wait_until(lambda: _listens(processor_port), "floor processor", processor)
        config = render(
            "floor_envoy.yaml",
            work / "floor_envoy.yaml",
            port=port,
            admin_port=free_port(),
            provider_port=provider.json_port,
            sse_port=provider.sse_port,
            processor_port=processor_port,
        )
        children.append(start_envoy("floor-envoy", config, work, port))
    except BaseException:
        for child in children:
            stop(child)
        raise
    return Target(
        "floor",
        envoy_requests(port),
        children,
        lambda: {"envoy": [children[1].pid], "extproc": [processor.pid], "provider": provider.pids},
        version="Envoy + pass-through ext_proc (grpc.aio)",
    )


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
