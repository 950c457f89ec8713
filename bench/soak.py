"""The memory soak (`python -m bench soak`): does extproc's memory stay flat under hours of load?
Ten minutes of it, by default.

1. The fake provider and `aigw up` on fresh backends with the bench's sub-account (generous
   caps and limits: every request is admitted, metered and settled), as in the data-plane
   bench; one extproc worker unless `--extproc-workers`.
2. A warm-up window, then wrk for `--minutes` in windows of `--window` seconds at
   `--connections`, alternating non-streamed and streamed chat so both metering paths run.
3. After the warm-up and after every window: the resident memory (VmRSS) of every extproc
   worker, of Envoy and of the control plane, and the window's requests per second.

Verdict (`flat`): extproc's RSS at the end is within max(`FLAT_FRACTION`, `FLAT_BYTES`) of its
RSS after the warm-up. The report also gives the largest RSS seen and the growth over the second
half of the run (a leak keeps growing; a cache that fills up stops). A window with any non-2xx
answer or socket error makes the run invalid.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.dataplane import log
from bench.fake_provider import start_fake_provider
from bench.gateway import Backends, Gateway, gateway_target, start_gateway
from bench.procs import BenchError, rss_bytes, stop
from bench.targets import Target
from bench.wrk import WrkMissing, run_wrk, write_script, wrk_path

FLAT_FRACTION = 0.05
FLAT_BYTES = 8 * 1024 * 1024
MIB = 1024 * 1024
ROLES = ("extproc", "envoy", "controlplane")


@dataclass(frozen=True)
class SoakSettings:
    backends: Backends
    work: Path
    minutes: float = 10.0
    window_s: int = 30
    connections: int = 32
    extproc_workers: int = 1
    chunks: int = 50
    smoke: bool = False

    @property
    def windows(self) -> int:
        return max(2, round(self.minutes * 60 / self.window_s))


def run_soak(settings: SoakSettings) -> dict[str, Any]:
    settings.work.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    log("starting the fake provider and aigw up (soak)")
    provider = start_fake_provider(settings.work, settings.chunks, 0.0)
    gateway: Gateway | None = None
    try:
        gateway = start_gateway(
            settings.work,
            settings.backends,
            provider.json_url,
            provider.sse_url,
            extproc_workers=settings.extproc_workers,
        )
        target = gateway_target(gateway)
        scripts = {
            mode: write_script(target.requests[mode], settings.work / f"soak-{mode}.lua")
            for mode in ("json", "stream")
        }
        _load(target, scripts, "json", settings)  # warm-up, not recorded
        _load(target, scripts, "stream", settings)
        windows = [_sample(gateway, 0, "warm-up", None)]
        for number in range(1, settings.windows + 1):
            mode = "json" if number % 2 else "stream"
            result = _load(target, scripts, mode, settings)
            windows.append(_sample(gateway, number, mode, result))
            log(
                f"window {number}/{settings.windows} ({mode}): {result['rps']:,.0f}/s, extproc "
                f"{windows[-1]['rss_mib']['extproc']:.1f} MiB"
            )
    finally:
        if gateway is not None:
            stop(gateway.supervisor)
            gateway.backends.drop()
        provider.stop()
    return _result(settings, started, windows)


def _load(
    target: Target, scripts: dict[str, Path], mode: str, settings: SoakSettings
) -> dict[str, Any]:
    spec = target.requests[mode]
    result = run_wrk(spec.url, scripts[mode], settings.connections, settings.window_s)
    return {
        "requests": result.requests,
        "rps": result.rps,
        "p99_us": result.p99_us,
        "non_2xx": result.non_2xx,
        "socket_errors": result.socket_errors,
        "valid": result.valid,
    }


def _sample(
    gateway: Gateway, number: int, mode: str, load: dict[str, Any] | None
) -> dict[str, Any]:
    processes = gateway.processes()
    rss = {role: sum(rss_bytes(pid) or 0 for pid in processes[role]) for role in ROLES}
    return {
        "window": number,
        "mode": mode,
        "at": time.time(),
        "rss_mib": {role: value / MIB for role, value in rss.items()},
        "load": load,
    }


def _result(
    settings: SoakSettings, started: datetime, windows: list[dict[str, Any]]
) -> dict[str, Any]:
    extproc = [w["rss_mib"]["extproc"] for w in windows]
    start, end = extproc[0], extproc[-1]
    half = extproc[len(extproc) // 2]
    allowed_mib = max(start * FLAT_FRACTION, FLAT_BYTES / MIB)
    loads = [w["load"] for w in windows if w["load"] is not None]
    invalid = [w["window"] for w in windows if w["load"] is not None and not w["load"]["valid"]]
    return {
        "meta": {
            "kind": "soak",
            "started_at": started.isoformat(timespec="seconds"),
            "smoke": settings.smoke,
            "windows": settings.windows,
            "window_s": settings.window_s,
            "connections": settings.connections,
            "extproc_workers": settings.extproc_workers,
        },
        "windows": windows,
        "extproc_rss_mib": {
            "after_warm_up": start,
            "end": end,
            "max": max(extproc),
            "growth": end - start,
            "growth_second_half": end - half,
            "allowed_growth": allowed_mib,
        },
        "requests": sum(load["requests"] for load in loads),
        "flat": end - start <= allowed_mib,
        "invalid_windows": invalid,
        "valid": not invalid,
    }


def markdown(result: dict[str, Any]) -> str:
    meta, rss = result["meta"], result["extproc_rss_mib"]
    lines = [
        f"# aigw memory soak — {meta['started_at']}" + (" (smoke)" if meta["smoke"] else ""),
        "",
        f"wrk at {meta['connections']} connections for {meta['windows']} windows of "
        f"{meta['window_s']} s, non-streamed and streamed chat alternating, "
        f"{meta['extproc_workers']} extproc worker(s); {result['requests']:,} requests.",
        "",
        f"**extproc RSS: {rss['after_warm_up']:.1f} MiB after the warm-up, {rss['end']:.1f} MiB "
        f"at the end** (growth {rss['growth']:+.1f} MiB, of which {rss['growth_second_half']:+.1f}"
        f" in the second half; largest {rss['max']:.1f} MiB): "
        + ("flat" if result["flat"] else "NOT flat")
        + f" (allowed: {rss['allowed_growth']:.1f} MiB).",
        "",
        "| window | load | req/s | p99 (ms) | extproc RSS (MiB) | Envoy RSS | control plane RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for window in result["windows"]:
        load, rss_mib = window["load"], window["rss_mib"]
        rate = "—" if load is None else f"{load['rps']:,.0f}"
        p99 = "—" if load is None else f"{load['p99_us'] / 1000:.1f}"
        lines.append(
            f"| {window['window']} | {window['mode']} | {rate} | {p99} | "
            f"{rss_mib['extproc']:.1f} | {rss_mib['envoy']:.1f} | {rss_mib['controlplane']:.1f} |"
        )
    if result["invalid_windows"]:
        lines += ["", f"**Invalid run**: non-2xx or socket errors in {result['invalid_windows']}."]
    return "\n".join(lines) + "\n"


def main_soak(argv: list[str]) -> int:
    from bench.run import DEFAULT_DATABASE, backend_arguments, finish

    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="two windows of 2 s")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=int, default=30, metavar="S")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--extproc-workers", type=int, default=1)
    backend_arguments(parser, DEFAULT_DATABASE)
    args = parser.parse_args(argv)
    stem = f"soak-{time.strftime('%Y%m%d-%H%M%S')}" + ("-smoke" if args.smoke else "")
    settings = SoakSettings(
        backends=Backends(args.postgres, args.database, args.redis_url),
        work=args.results / f"{stem}-work",
        minutes=4 / 60 if args.smoke else args.minutes,
        window_s=2 if args.smoke else args.window,
        connections=8 if args.smoke else args.connections,
        extproc_workers=args.extproc_workers,
        smoke=args.smoke,
    )
    try:
        wrk_path()
        result = run_soak(settings)
    except (WrkMissing, BenchError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    return finish(result, args.results, stem, markdown(result))
