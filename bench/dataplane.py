"""The data-plane benchmark: start the fake provider and every configuration once, then run
the cells (wrk or the stream client), interleaving the configurations (A B C A B C …) for a
number of rounds, with the CPU of each configuration's processes read around every cell.

    result = run_dataplane(settings)     # the JSON-able result (see bench/report.py)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.fake_provider import FakeProvider, start_fake_provider
from bench.floor import floor_target
from bench.gateway import Backends, Gateway, gateway_target, start_gateway
from bench.peers import PEERS, PeerUnavailable, start_litellm, start_portkey
from bench.procs import BenchError, CpuSnapshot, own_cpu_seconds, stop
from bench.stream_client import run_stream_latency
from bench.targets import Target, direct_target, plain_envoy_target, probe
from bench.wrk import run_wrk, write_script

ALL_CONFIGS = ("direct", "envoy", "floor", "gateway", "litellm", "portkey")
SMOKE_CONFIGS = ("envoy", "floor", "gateway")


@dataclass(frozen=True)
class Cell:
    """One measurement: a request mode, a load generator and its connections."""

    name: str
    mode: str  # json | stream | paced
    connections: int
    tool: str = "wrk"  # wrk | client (bench/stream_client.py)


FULL_CELLS = (
    Cell("json-c32", "json", 32),
    Cell("json-c1", "json", 1),
    Cell("json-c8", "json", 8),
    Cell("stream-c32", "stream", 32),
    Cell("paced-c4", "paced", 4, "client"),
)


@dataclass(frozen=True)
class DataPlaneSettings:
    backends: Backends
    work: Path
    duration_s: int = 10
    rounds: int = 3
    cells: tuple[Cell, ...] = FULL_CELLS
    configs: tuple[str, ...] = ALL_CONFIGS
    chunks: int = 50
    interval_ms: float = 5.0
    extproc_workers: int = 1
    litellm_workers: int = 1
    warmup_s: int = 2
    profile_s: int = 0  # > 0: py-spy the extproc for that long after the rounds
    max_interference: float = 0.25  # cores busy outside the bench before a cell is run again
    retries: int = 2
    smoke: bool = False


@dataclass
class _Run:
    settings: DataPlaneSettings
    targets: dict[str, Target] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    unsupported: dict[str, dict[str, str]] = field(default_factory=dict)
    gateway: Gateway | None = None
    completed: dict[str, int] = field(default_factory=dict)
    load_at_start: tuple[float, float, float] = field(default_factory=os.getloadavg)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_dataplane(settings: DataPlaneSettings) -> dict[str, Any]:
    """Run the whole data-plane benchmark; returns the raw result (cells, skipped peers…)."""
    settings.work.mkdir(parents=True, exist_ok=True)
    run = _Run(settings)
    started = datetime.now(UTC)
    with _fake_provider(settings) as provider, _targets(run, provider):
        for target in run.targets.values():
            _warm_up(run, target)
        cells = []
        for number in range(1, settings.rounds + 1):
            for cell in settings.cells:
                for target in run.targets.values():
                    if cell.mode not in run.unsupported.get(target.name, {}):
                        cells.append(_measure_quietly(run, target, cell, number))
        profile = _profile(run) if settings.profile_s and run.gateway else None
        metering = _metering(run)
    return {
        "meta": _meta(settings, started, run),
        "configurations": list(run.targets),
        "skipped": run.skipped,
        "unsupported": run.unsupported,
        "cells": cells,
        "metering": metering,
        "profile": profile,
    }


@contextlib.contextmanager
def _fake_provider(settings: DataPlaneSettings) -> Iterator[FakeProvider]:
    log("starting the fake provider (Envoy direct_response + SSE source)")
    provider = start_fake_provider(settings.work, settings.chunks, settings.interval_ms)
    try:
        yield provider
    finally:
        provider.stop()


@contextlib.contextmanager
def _targets(run: _Run, provider: FakeProvider) -> Iterator[None]:
    settings = run.settings
    starters: dict[str, Callable[[], Target]] = {
        "direct": lambda: direct_target(provider.json_url, provider.sse_url, provider.pids),
        "envoy": lambda: plain_envoy_target(
            settings.work, provider.json_port, provider.sse_port, provider.pids
        ),
        "floor": lambda: floor_target(settings.work, provider),
        "gateway": lambda: _start_gateway(run, provider),
        "litellm": lambda: start_litellm(settings.work, provider, settings.litellm_workers),
        "portkey": lambda: start_portkey(settings.work, provider),
    }
    try:
        for name in settings.configs:
            log(f"starting {name}")
            try:
                run.targets[name] = target = starters[name]()
            except PeerUnavailable as exc:
                run.skipped[name] = str(exc)
                log(f"{name} is not available, going on without it: {str(exc)[:400]}")
                continue
            failed = probe(target)
            answered = len(target.requests) - len(failed)
            run.completed[name] = run.completed.get(name, 0) + answered
            if failed and name not in PEERS:
                raise BenchError(f"{name} does not answer: {failed}")
            for mode, reason in failed.items():
                run.unsupported.setdefault(name, {})[mode] = reason
                log(f"{name} fails {mode} requests, its {mode} cells are skipped: {reason[:300]}")
        yield
    finally:
        for target in run.targets.values():
            target.stop()
        if run.gateway is not None:
            stop(run.gateway.supervisor)  # already stopped unless its target failed to start
            run.gateway.backends.drop()


def _start_gateway(run: _Run, provider: FakeProvider) -> Target:
    settings = run.settings
    gateway = start_gateway(
        settings.work,
        settings.backends,
        provider.json_url,
        provider.sse_url,
        extproc_workers=settings.extproc_workers,
    )
    run.gateway = gateway
    target = gateway_target(gateway)
    target.children.append(gateway.supervisor)
    run.completed["gateway"] = len(target.requests)  # the sanity requests
    return target


def _warm_up(run: _Run, target: Target) -> None:
    """Unrecorded load so that caches, pools and JITs are warm before the first cell."""
    seconds = run.settings.warmup_s
    if seconds <= 0:
        return
    for mode in ("json", "stream"):
        if mode in run.unsupported.get(target.name, {}):
            continue
        script = write_script(target.requests[mode], run.settings.work / f"warm-{target.name}.lua")
        result = run_wrk(target.requests[mode].url, script, 8, seconds)
        run.completed[target.name] = run.completed.get(target.name, 0) + result.requests
    target.quiesce()


def _measure(run: _Run, target: Target, cell: Cell, number: int) -> dict[str, Any]:
    """One cell for one configuration, with its CPU per request by process group."""
    settings = run.settings
    for other in run.targets.values():
        other.quiesce()
    spec = target.requests[cell.mode]
    groups = target.cpu_groups()
    script = write_script(spec, settings.work / f"{target.name}-{cell.mode}.lua")
    before, load_before, wall = CpuSnapshot.take(groups), own_cpu_seconds(), time.monotonic()
    if cell.tool == "wrk":
        wrk = run_wrk(spec.url, script, cell.connections, settings.duration_s)
        result, count = wrk.as_dict(), wrk.requests
    else:
        latency = run_stream_latency(spec, settings.duration_s, cell.connections)
        result, count = latency.summary(), latency.streams
    after, load_cpu = CpuSnapshot.take(groups), own_cpu_seconds() - load_before
    wall = time.monotonic() - wall
    run.completed[target.name] = run.completed.get(target.name, 0) + count
    cpu = after.seconds_since(before)
    record = {
        "config": target.name,
        "cell": cell.name,
        "mode": cell.mode,
        "connections": cell.connections,
        "tool": cell.tool,
        "round": number,
        **result,
        "cpu_s": cpu,
        "cpu_us_per_request": {g: s * 1e6 / count if count else None for g, s in cpu.items()},
        "machine_busy": after.machine_busy_since(before),
        "load_generator_cpu_s": load_cpu,
    }
    # Busy CPU that none of the above explains: other programs on the machine (interference).
    unattributed = after.machine_busy_seconds_since(before) - load_cpu - sum(cpu.values())
    record["unattributed_cores"] = max(0.0, unattributed) / wall
    shown = f"{result.get('rps', result.get('streams_per_s', 0)):,.0f}/s"
    flag = "" if result["valid"] else "  INVALID"
    log(f"round {number} {cell.name:<11} {target.name:<8} {shown}{flag}")
    return record


def _measure_quietly(run: _Run, target: Target, cell: Cell, number: int) -> dict[str, Any]:
    """`_measure`, again (at most `retries` times) while other programs kept more than
    `max_interference` of a core busy; the attempt with the least interference is kept."""
    settings = run.settings
    attempts = [_measure(run, target, cell, number)]
    while (
        attempts[-1]["unattributed_cores"] > settings.max_interference
        and len(attempts) <= settings.retries
    ):
        log(f"  {attempts[-1]['unattributed_cores']:.2f} core(s) busy elsewhere: again")
        time.sleep(1.0)
        attempts.append(_measure(run, target, cell, number))
    kept = min(attempts, key=lambda record: record["unattributed_cores"])
    kept["attempts"] = len(attempts)
    with (settings.work / "cells.jsonl").open("ab") as progress:  # survives a crashed run
        progress.write(orjson.dumps(kept) + b"\n")
    return kept


def _profile(run: _Run) -> dict[str, Any] | None:
    from bench.profile import profile_extproc

    assert run.gateway is not None
    profile = profile_extproc(run.gateway, run.targets["gateway"], run.settings)
    for mode in ("json", "stream"):
        run.completed["gateway"] += profile.get(mode, {}).get("requests", 0)
    return profile


def _metering(run: _Run) -> dict[str, Any] | None:
    """Did the gateway meter what it served? Ledger rows once the ingester has caught up."""
    gateway = run.gateway
    if gateway is None:
        return None
    gateway.quiesce()
    rows = asyncio.run(gateway.ledger_rows())
    return {
        "completed_requests": run.completed.get("gateway", 0),
        "ledger_rows": rows,
        "note": "rows include requests wrk cut off at the end of each cell (settled as aborted)",
    }


def _meta(settings: DataPlaneSettings, started: datetime, run: _Run) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "extproc", "controlplane", "aigw"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    ).stdout.strip()
    return {
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit + ("+uncommitted" if dirty else ""),
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "load_average_at_start": run.load_at_start,
        "smoke": settings.smoke,
        "duration_s": settings.duration_s,
        "rounds": settings.rounds,
        "cells": [cell.__dict__ for cell in settings.cells],
        "chunks": settings.chunks,
        "paced_interval_ms": settings.interval_ms,
        "extproc_workers": settings.extproc_workers,
        "litellm_workers": settings.litellm_workers,
        "max_interference_cores": settings.max_interference,
        "retries": settings.retries,
        "versions": {name: target.version for name, target in run.targets.items()},
        "redis_url": settings.backends.redis_url,
        "database": settings.backends.database,
    }
