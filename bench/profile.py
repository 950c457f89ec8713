"""Where the extproc's time goes under load: py-spy samples every extproc process while wrk
drives the gateway (non-streamed, then streamed, at 32 connections), and the samples are
summed into the top frames by self time and by inclusive time, and by package.

py-spy is a tool for the person running the bench, not a dependency of the project:
`.venv/bin/pip install py-spy`. Without it the profile says so and the run goes on.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.wrk import run_wrk, write_script

if TYPE_CHECKING:
    from bench.dataplane import DataPlaneSettings
    from bench.gateway import Gateway
    from bench.targets import Target

MISSING = "py-spy is not installed (.venv/bin/pip install py-spy)"
SAMPLE_RATE = 100  # --native samples pause the process: keep the rate modest
TOP = 20
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Leaf frames of a thread that is waiting, not working (gRPC's poller sits in epoll_wait).
_WAITING = ("epoll_wait", "epoll_pwait", "poll ", "ppoll", "select ", "pselect",
            "pthread_cond_wait", "pthread_cond_timedwait", "sem_wait", "sem_timedwait",
            "nanosleep", "clock_nanosleep")  # fmt: skip
# A thread blocked on a Python lock (an idle worker of a thread pool) waits in a futex whose
# libc frame often has no symbol: the caller tells.
_LOCK_WAIT = "acquire_lock"
# What a busy leaf frame belongs to, first match wins.
_LEAF_KINDS = (
    ("libc.so", "libc: system calls (write, sendmsg, futex, getpid…)"),
    ("libpython", "CPython runtime (eval loop, GC, objects)"),
    ("cygrpc", "gRPC core (C / Cython)"),
    ("_message", "protobuf (upb, C)"),
    ("orjson", "orjson"),
    ("hiredis", "hiredis"),
    ("loop.c", "uvloop"),
    ("uvloop", "uvloop"),
    ("extproc/", "extproc (our Python)"),
    ("aigw/", "aigw (our Python)"),
    ("controlplane/", "controlplane (our Python)"),
    ("asyncpg", "asyncpg"),
    ("pydantic", "pydantic"),
    ("fastapi/", "FastAPI / Starlette"),
    ("starlette/", "FastAPI / Starlette"),
    ("uvicorn/", "uvicorn"),
    ("grpc/", "grpc (Python)"),
    ("asyncio/", "asyncio (Python)"),
    ("redis/", "redis-py (Python)"),
    ("google/protobuf", "protobuf (Python)"),
)
# Python frames worth an inclusive share: ours and the libraries on the hot path.
_INCLUSIVE_OF = ("extproc/", "aigw/", "controlplane/", "redis/", "grpc/aio", "grpc/_cython",
                 "asyncpg/")  # fmt: skip
_ENTRY_POINTS = ("__main__.py)", "<module>")


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    local = Path(sys.executable).with_name("py-spy")
    return found or (str(local) if local.exists() else None)


def function_of(frame: str) -> str:
    """`func (dir/file.py)` without the line number; native frames as they are."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    short = "/".join(path.split("/")[-2:])
    return f"{match.group('func')} ({short})"


def kind_of(leaf: str) -> str:
    for marker, name in _LEAF_KINDS:
        if marker in leaf:
            return name
    return "other"


def summarize(collapsed: str) -> dict[str, Any]:
    """Where the busy samples of py-spy's raw output (collapsed stacks) went: top leaf frames
    (self), our and the hot libraries' functions (inclusive), leaf kinds, threads, and who makes
    the system calls (the nearest frame above libc). Samples
    whose leaf is a wait (epoll_wait…) are counted apart as waiting."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    syscalls: Counter[str] = Counter()
    busy = waiting = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw = stack.split(";")
        frames = [function_of(frame) for frame in raw]
        caller = next((f for f in reversed(frames) if "libc.so" not in f), "?")
        if raw[-1].startswith(_WAITING) or ("libc.so" in raw[-1] and _LOCK_WAIT in caller):
            waiting += count
            continue
        busy += count
        own[frames[-1]] += count
        kinds[kind_of(raw[-1])] += count
        background = any("threading.py" in frame for frame in raw)
        threads["other threads (extproc: gRPC's poller)" if background else "event loop"] += count
        for frame in set(frames):
            if any(m in frame for m in _INCLUSIVE_OF) and not any(
                e in frame for e in _ENTRY_POINTS
            ):
                inclusive[frame] += count
        if "libc.so" in raw[-1]:
            syscalls[f"{frames[-1].split(' ')[0]} <- {caller}"] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"frame": frame, "samples": n, "share": n / busy if busy else 0.0}
            for frame, n in counter.most_common(TOP)
        ]

    return {
        "samples": busy + waiting,
        "busy_samples": busy,
        "waiting_share": waiting / (busy + waiting) if busy + waiting else 0.0,
        "self": share(own),
        "inclusive": share(inclusive),
        "kinds": share(kinds),
        "threads": share(threads),
        "syscalls": share(syscalls),
    }


class Recording:
    """py-spy recording some processes for a while (`--native`: C frames too)."""

    def __init__(self, tool: str, pids: list[int], seconds: int, work: Path, label: str) -> None:
        self.seconds = seconds
        self.outputs: list[Path] = []
        self.spies: list[subprocess.Popen[bytes]] = []
        for pid in pids:
            output = work / f"py-spy-{label}-{pid}.txt"
            command = [tool, "record", "--pid", str(pid), "--duration", str(seconds),
                       "--rate", str(SAMPLE_RATE), "--format", "raw", "--output", str(output),
                       "--native"]  # fmt: skip
            with (work / f"py-spy-{label}-{pid}.log").open("wb") as log:
                self.spies.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
            self.outputs.append(output)

    def collapsed(self) -> str:
        """Wait for every py-spy and return their samples together."""
        for spy in self.spies:
            spy.wait(timeout=self.seconds + 60)
        return "\n".join(out.read_text() for out in self.outputs if out.exists())


def profile_extproc(
    gateway: Gateway, target: Target, settings: DataPlaneSettings
) -> dict[str, Any]:
    """Profile the extproc under 32 connections of non-streamed, then streamed, load."""
    tool = py_spy()
    if tool is None:
        return {"skipped": MISSING}
    seconds = settings.profile_s
    results: dict[str, Any] = {"rate_hz": SAMPLE_RATE, "seconds": seconds, "native": True}
    for mode in ("json", "stream"):
        pids = gateway.processes()["extproc"]
        recording = Recording(tool, pids, seconds, settings.work, mode)
        spec = target.requests[mode]
        script = write_script(spec, settings.work / f"profile-{mode}.lua")
        load = run_wrk(spec.url, script, 32, seconds)
        summary = summarize(recording.collapsed())
        results[mode] = {"rps": load.rps, "requests": load.requests, **summary}
    return results
