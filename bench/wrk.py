"""Load with `wrk`: a Lua script per request (POST, body, headers) that also prints wrk's own
summary as one JSON line, one wrk thread, a given number of connections and seconds.

A run is valid only with zero non-2xx/3xx responses (wrk's "Non-2xx or 3xx responses" line,
checked as printed, and its `summary.errors.status`) and zero socket errors.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.targets import RequestSpec

TIMEOUT_S = 30  # per request: a slow peer's stream at 32 connections must not time out
_REPORT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"status":%d,"connect":%d,' ..
    '"read":%d,"write":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read,
    e.write, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")


class WrkMissing(RuntimeError):
    """wrk is not installed."""


@dataclass
class WrkResult:
    """One wrk run, latencies in microseconds."""

    requests: int
    duration_s: float
    rps: float
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int
    mean_us: float
    non_2xx: int
    socket_errors: dict[str, int]

    @property
    def valid(self) -> bool:
        return self.non_2xx == 0 and not any(self.socket_errors.values()) and self.requests > 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "valid": self.valid}


def wrk_path() -> str:
    found = shutil.which("wrk")
    if not found:
        raise WrkMissing("wrk is not installed (Debian: apt-get install -y wrk)")
    return found


def lua_string(data: bytes | str) -> str:
    """A Lua long-bracket literal holding `data` verbatim."""
    text = data.decode() if isinstance(data, bytes) else data
    level = 1
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def write_script(spec: RequestSpec, path: Path, extra_lua: str = "") -> Path:
    """The wrk Lua script sending `spec` on every request (`extra_lua`, e.g. a `request`
    function making each body unique, is added after the defaults)."""
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(spec.body)}"]
    lines += [f"wrk.headers[ {lua_string(k)} ] = {lua_string(v)}" for k, v in spec.headers.items()]
    path.write_text("\n".join(lines) + "\n" + extra_lua + "\n" + _REPORT)
    return path


def run_wrk(url: str, script: Path, connections: int, duration_s: int) -> WrkResult:
    """Run wrk and read its result; raises RuntimeError when wrk itself fails."""
    command = [
        wrk_path(),
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        f"--timeout={TIMEOUT_S}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60)
    return parse_output(done.stdout, done.stderr)


def parse_output(stdout: str, stderr: str = "") -> WrkResult:
    """The result of one wrk run from its output."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{stdout}\n{stderr}")
    data = orjson.loads(line.removeprefix("WRKJSON "))
    printed = _NON_2XX.search(stdout)
    non_2xx = max(int(printed.group(1)) if printed else 0, int(data["status"]))
    duration_s = data["duration_us"] / 1e6
    return WrkResult(
        requests=data["requests"],
        duration_s=duration_s,
        rps=data["requests"] / duration_s if duration_s else 0.0,
        p50_us=data["p50_us"],
        p90_us=data["p90_us"],
        p99_us=data["p99_us"],
        max_us=data["max_us"],
        mean_us=data["mean_us"],
        non_2xx=non_2xx,
        socket_errors={k: int(data[k]) for k in ("connect", "read", "write", "timeout")},
    )
