"""Fault injection helpers: things a test can break for real and bring back.

- `RedisServer`: a redis-server process of the test's own (append-only file in a folder), to
  stop, kill, pause (SIGSTOP: connections hang instead of failing), resume, or restart empty.
- `TcpProxy`: a TCP relay (its own thread and event loop) in front of PostgreSQL that can cut
  every connection and refuse new ones, then come back on the same port.
- `fault_gateway`: a whole `aigw up` (Envoy, extproc workers, control plane) on a database of
  its own reached through a `TcpProxy` and on its own `RedisServer`.
- `fault_fixtures`: the fixtures of a fault test module: its database, its gateway (2 extproc
  workers) and a parent account per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from aigw.embedded import free_port
from tests.conftest import own_database
from tests.e2e.conftest import Parent
from tests.e2e.harness import Gateway, MockProvider, start_gateway, write_config

REDIS_SERVER = "/usr/bin/redis-server"
_START_TIMEOUT_S = 20.0


class RedisServer:
    """redis-server on a free loopback port with its data (AOF) in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--appendonly", "yes",
            "--save", "",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _port_open(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Shut down cleanly (SIGTERM); its data stays in the folder."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def restart_empty(self) -> None:
        """Kill it, lose every byte of its data, start it again on the same port."""
        self.kill()
        shutil.rmtree(self.folder)
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.send_signal(sig)
        process.wait(timeout=20)


class TcpProxy:
    """A TCP relay to `target_host:target_port` that can go down and come back on one port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> None:
        """Listen (again, on the same port once it has one)."""
        self._call(self._start())

    def stop(self) -> None:
        """Refuse new connections and cut every open one."""
        self._call(self._stop())

    def close(self) -> None:
        with contextlib.suppress(AssertionError):
            self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None, "the proxy is not running"
        server, self._server = self._server, None
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


def proxied_dsn(dsn: str, proxy: TcpProxy) -> str:
    """`dsn` with its host and port replaced by the proxy's."""
    parts = urlsplit(dsn)
    return dsn.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}", 1)


def proxy_for(dsn: str) -> TcpProxy:
    target = urlsplit(dsn)
    return TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)


@dataclass
class FaultGateway:
    """A running `aigw up` whose Redis and PostgreSQL link a test may break."""

    gateway: Gateway
    redis: RedisServer
    postgres: TcpProxy
    database_url: str  # direct, not through the proxy: what the test itself reads

    @property
    def base_url(self) -> str:
        return self.gateway.base_url


@contextlib.contextmanager
def fault_gateway(
    folder: Path, mock_url: str, database_url: str, *args: str
) -> Iterator[FaultGateway]:
    """`aigw up *args` on its own Redis server, with PostgreSQL behind a proxy."""
    redis = RedisServer(folder / "redis")
    redis.start()
    proxy = proxy_for(database_url)
    proxy.start()
    config_path = folder / "gateway.yaml"
    config = write_config(
        config_path,
        mock_url=mock_url,
        database_url=proxied_dsn(database_url, proxy),
        redis_url=redis.url,
        data_dir=folder / "data",
    )
    try:
        gateway = start_gateway(config_path, config, *args)
        running = FaultGateway(gateway, redis, proxy, database_url)
        try:
            yield running
        finally:
            running.gateway.stop()  # the one running now: a test may have restarted it
    finally:
        proxy.close()
        redis.kill()


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def fault_fixtures(name: str) -> tuple[Any, Any, Any]:
    """Module-scoped `fault_database` and `gateway`, and `parent` per test, for a fault test
    module (`name` tells its database and folder apart); assign them to those three names."""

    @pytest.fixture(scope="module", name="fault_database")
    async def fault_database(database_url: str) -> AsyncIterator[str]:
        async with own_database(database_url, f"aigw_faults_{name}_{os.getpid()}") as url:
            yield url

    @pytest.fixture(scope="module", name="gateway")
    def gateway(
        tmp_path_factory: pytest.TempPathFactory, mock_provider: MockProvider, fault_database: str
    ) -> Iterator[FaultGateway]:
        folder = Path(tmp_path_factory.mktemp(f"faults-{name}"))
        with fault_gateway(
            folder, mock_provider.url, fault_database, "--extproc-workers", "2"
        ) as running:
            yield running

    @pytest.fixture(name="parent")
    async def parent(gateway: FaultGateway) -> Parent:
        from controlplane.accounts import create_parent_account

        account_id, key = await create_parent_account(
            gateway.database_url, "acme", gateway.redis.url
        )
        return Parent(account_id, key, gateway.base_url)

    return fault_database, gateway, parent
