"""Streaming latency as a client sees it: time to first chunk and the gaps between chunks.

A small asyncio client (httpx on uvloop) keeps `concurrency` paced streams going for a while;
every network read is time-stamped as it arrives and the SSE events it completes (each ends with
a blank line) are counted. Time to first chunk (TTFC) runs from sending the request to the first
complete event; an inter-chunk gap is the time between two consecutive complete events (0 for
events that arrive in the same read). The client's own overhead is the same for every
configuration, so differences between configurations are what the proxy adds; the `direct`
configuration (the SSE source itself) is the reference.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvloop

from bench.stats import percentile
from bench.targets import RequestSpec


@dataclass
class StreamLatency:
    """Samples of one measurement, in microseconds."""

    streams: int = 0
    errors: int = 0
    ttfc_us: list[float] = field(default_factory=list)
    gaps_us: list[float] = field(default_factory=list)
    duration_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "errors": self.errors,
            "streams_per_s": self.streams / self.duration_s if self.duration_s else 0.0,
            "chunks": len(self.gaps_us) + len(self.ttfc_us),
            "ttfc_p50_us": percentile(self.ttfc_us, 50),
            "ttfc_p99_us": percentile(self.ttfc_us, 99),
            "gap_p50_us": percentile(self.gaps_us, 50),
            "gap_p99_us": percentile(self.gaps_us, 99),
            "gap_max_us": max(self.gaps_us, default=0.0),
            "valid": self.errors == 0 and self.streams > 0,
        }


async def _one_stream(client: httpx.AsyncClient, spec: RequestSpec, result: StreamLatency) -> None:
    buffer = b""
    last: float | None = None
    started = time.perf_counter()
    async with client.stream("POST", spec.url, content=spec.body, headers=spec.headers) as reply:
        if reply.status_code != 200:
            await reply.aread()
            result.errors += 1
            return
        async for raw in reply.aiter_raw():
            now = time.perf_counter()
            buffer = (buffer + raw).replace(b"\r\n", b"\n")
            events = buffer.count(b"\n\n")
            if not events:
                continue
            buffer = buffer[buffer.rindex(b"\n\n") + 2 :]
            if last is None:
                result.ttfc_us.append((now - started) * 1e6)
            else:
                result.gaps_us.append((now - last) * 1e6)
            result.gaps_us.extend([0.0] * (events - 1))
            last = now
    result.streams += 1


async def measure(spec: RequestSpec, duration_s: float, concurrency: int) -> StreamLatency:
    """Keep `concurrency` streams of `spec` going for `duration_s` seconds."""
    result = StreamLatency()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30.0, trust_env=False) as client:
        started = time.perf_counter()
        deadline = started + duration_s

        async def worker() -> None:
            while time.perf_counter() < deadline:
                try:
                    await _one_stream(client, spec, result)
                except httpx.HTTPError:
                    result.errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.duration_s = time.perf_counter() - started
    return result


def run_stream_latency(spec: RequestSpec, duration_s: float, concurrency: int) -> StreamLatency:
    """`measure` on a fresh uvloop event loop."""
    return uvloop.run(measure(spec, duration_s, concurrency))
