"""The processes of a bench run: starting them (each in its own process group, dying with the
bench), waiting until they answer, stopping them, and their CPU time read from `/proc`.

CPU is `utime + stime` of `/proc/<pid>/stat` (all threads of the process), in clock ticks
(`SC_CLK_TCK`, 100/s here: 10 ms resolution, fine over a cell of thousands of requests).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from aigw.embedded import free_port
from aigw.processes import die_with_parent

__all__ = ["Child", "CpuSnapshot", "free_port", "spawn", "stop", "wait_until"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_GRACE_S = 10.0


class BenchError(Exception):
    """A part of the bench could not start or answered wrongly; the message says which."""


@dataclass
class Child:
    """A process the bench started, with its log."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(text)


def spawn(
    name: str,
    command: list[str],
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    without: Collection[str] = (),
    cwd: Path | None = None,
) -> Child:
    """Start `command` with its output in `log_dir/<name>.log`, in our environment plus `env`
    and minus the variables named in `without`."""
    log_path = log_dir / f"{name}.log"
    environment = {**os.environ, **(env or {})}
    for variable in without:
        environment.pop(variable, None)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    return Child(name, process, log_path)


def stop(child: Child, sig: int = signal.SIGTERM, grace_s: float = STOP_GRACE_S) -> None:
    """Signal the child's process group, then SIGKILL it after `grace_s`."""
    process = child.process
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def wait_until(
    ready: Callable[[], bool], what: str, child: Child | None = None, timeout_s: float = 90.0
) -> None:
    """Poll `ready` until it is true; raise BenchError (with the child's log) on timeout or exit."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if child is not None and child.process.poll() is not None:
            raise BenchError(f"{what} exited with {child.process.returncode}\n{child.tail()}")
        if time.monotonic() > deadline:
            tail = child.tail() if child else ""
            raise BenchError(f"{what} not ready within {timeout_s:.0f} s\n{tail}")
        time.sleep(0.1)


def answers(url: str, *, ok: Callable[[int], bool] = lambda status: status < 500) -> bool:
    """Whether `url` answers a GET with a status `ok` accepts."""
    try:
        return ok(httpx.get(url, timeout=2.0, trust_env=False).status_code)
    except httpx.HTTPError:
        return False


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants now."""
    try:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return []


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of one process in clock ticks; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def rss_bytes(pid: int) -> int | None:
    """Resident memory of one process (VmRSS); None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    line = Path("/proc/stat").read_text().split("\n", 1)[0]
    values = [int(v) for v in line.split()[1:9]]  # guest time is already in user time
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass
class CpuSnapshot:
    """CPU ticks of named groups of processes, and of the whole machine, at one moment."""

    groups: dict[str, dict[int, int]]
    machine: tuple[int, int]

    @classmethod
    def take(cls, groups: Mapping[str, Iterable[int]]) -> CpuSnapshot:
        taken: dict[str, dict[int, int]] = {}
        for name, pids in groups.items():
            ticks = {pid: cpu_ticks(pid) for pid in pids}
            taken[name] = {pid: value for pid, value in ticks.items() if value is not None}
        return cls(taken, machine_ticks())

    def seconds_since(self, earlier: CpuSnapshot) -> dict[str, float]:
        """CPU seconds of each group between `earlier` and this snapshot (processes present in
        both only)."""
        spent: dict[str, float] = {}
        for name, now in self.groups.items():
            before = earlier.groups.get(name, {})
            ticks = sum(now[pid] - before[pid] for pid in now if pid in before)
            spent[name] = ticks / CLOCK_TICKS
        return spent

    def machine_busy_seconds_since(self, earlier: CpuSnapshot) -> float:
        """CPU seconds the whole machine was busy between the two snapshots (all CPUs)."""
        return (self.machine[0] - earlier.machine[0]) / CLOCK_TICKS

    def machine_busy_since(self, earlier: CpuSnapshot) -> float:
        """Fraction (0..1) of all CPUs busy between the two snapshots."""
        busy = self.machine[0] - earlier.machine[0]
        total = self.machine[1] - earlier.machine[1]
        return busy / total if total else 0.0


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that ended (wrk runs), so far."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total
