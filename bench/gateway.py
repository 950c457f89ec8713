"""The full gateway as a bench target: `aigw up --config <rendered templates/gateway.yaml>` on
real Redis and PostgreSQL (a database of the bench's own, created fresh and dropped after), a
parent account, and one sub-account whose cap (10^9 cents) and RPM/RPD/TPM limits are set but
far out of reach: every request runs the admission script, is metered and settled, and none is
refused.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import psutil

from aigw import keyspace
from aigw.redis_client import connect_sync as connect_redis
from bench.procs import BenchError, Child, answers, free_port, spawn, stop, wait_until
from bench.targets import Target, envoy_version, render, requests_for

GENEROUS_CAP_CENTS = 10**9
GENEROUS_RATE = 10**9
QUIESCE_TIMEOUT_S = 30.0
_HELD_LOCKS: list[IO[str]] = []
GATEWAY_MODELS = {
    "json": "openai/gpt-5.4-mini",
    "stream": "sse/gpt-5.4-mini",
    "paced": "sse/gpt-5.4-mini-paced",
}


@dataclass(frozen=True)
class Backends:
    """Where the gateway keeps its state during the bench."""

    postgres_url: str  # the server, any database the bench can connect to as admin
    database: str  # the bench's own database, created fresh and dropped after
    redis_url: str  # with the Redis database number, e.g. redis://127.0.0.1:6379/15

    @property
    def database_url(self) -> str:
        return urlunsplit(urlsplit(self.postgres_url)._replace(path=f"/{self.database}"))

    def reset(self) -> None:
        """A new empty database and an empty Redis database."""
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)',
                                f'CREATE DATABASE "{self.database}"'))  # fmt: skip
        connect_redis(self.redis_url).flushdb()

    def drop(self) -> None:
        """Drop the database and empty the Redis database."""
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
        connect_redis(self.redis_url).flushdb()

    async def _admin(self, *statements: str) -> None:
        admin = await asyncpg.connect(self.postgres_url)
        try:
            for statement in statements:
                await admin.execute(statement)
        finally:
            await admin.close()

    def claim(self) -> None:
        """Hold locks on the database and the Redis database for the life of this process: two
        bench runs sharing either would wipe each other's state."""
        for resource in (self.redis_url, f"{self.postgres_url}|{self.database}"):
            digest = hashlib.sha1(resource.encode()).hexdigest()[:12]
            handle = (Path(tempfile.gettempdir()) / f"aigw-bench-{digest}.lock").open("w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                raise BenchError(
                    f"another bench run uses database {self.database} or {self.redis_url}; "
                    "give this one a --database and a --redis-url of its own"
                ) from None
            _HELD_LOCKS.append(handle)

    def redis_pid(self) -> list[int]:
        """The Redis server's pid, when it runs on this machine."""
        pid = int(connect_redis(self.redis_url).info("server")["process_id"])
        return [pid] if psutil.pid_exists(pid) else []

    def postgres_backends(self) -> list[int]:
        """The PostgreSQL backends serving the bench's database (by their process title)."""
        marker = f" {self.database} "
        pids = []
        for process in psutil.process_iter(["cmdline"]):
            title = " ".join(process.info["cmdline"] or [])
            if title.startswith("postgres: ") and marker in title:
                pids.append(process.pid)
        return pids


@dataclass
class Gateway:
    """A running `aigw up` with its parent account and the bench's sub-account."""

    url: str
    supervisor: Child
    backends: Backends
    parent_id: str
    parent_key: str
    sub_account_id: str
    sub_account_key: str

    def processes(self) -> dict[str, list[int]]:
        """The gateway's own processes by role: envoy, extproc (every worker), controlplane."""
        roles: dict[str, list[int]] = {"envoy": [], "extproc": [], "controlplane": []}
        for process in psutil.Process(self.supervisor.pid).children(recursive=True):
            command = " ".join(process.cmdline())
            if "-m extproc" in command:
                roles["extproc"].append(process.pid)
            elif "-m controlplane" in command:
                roles["controlplane"].append(process.pid)
            elif Path(process.cmdline()[0]).name == "envoy":
                roles["envoy"].append(process.pid)
        return roles

    def cpu_groups(self) -> dict[str, list[int]]:
        return {
            **self.processes(),
            "redis": self.backends.redis_pid(),
            "postgres": self.backends.postgres_backends(),
        }

    def usage_backlog(self) -> int:
        """Usage events not yet in the ledger (entries are deleted once ingested)."""
        client = connect_redis(self.backends.redis_url)
        return sum(int(client.xlen(stream)) for stream in keyspace.usage_streams())

    def quiesce(self) -> None:
        """Wait until the ingester has caught up, so that its work does not spill into the next
        configuration's measurement."""
        deadline = time.monotonic() + QUIESCE_TIMEOUT_S
        while self.usage_backlog() and time.monotonic() < deadline:
            time.sleep(0.1)

    async def ledger_rows(self) -> int:
        connection = await asyncpg.connect(self.backends.database_url)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM usage_ledger"))
        finally:
            await connection.close()


def start_gateway(
    work: Path,
    backends: Backends,
    provider_url: str,
    sse_url: str,
    *,
    extproc_workers: int = 1,
) -> Gateway:
    """Reset the backends, start `aigw up`, create the parent and the sub-account."""
    backends.claim()
    backends.reset()
    port = free_port()
    config = render(
        "gateway.yaml",
        work / "gateway.yaml",
        port=port,
        controlplane_port=free_port(),
        extproc_port=free_port(),
        admin_port=free_port(),
        redis_url=backends.redis_url,
        database_url=backends.database_url,
        data_dir=work / "gateway-data",
        provider_url=provider_url,
        sse_url=sse_url,
    )
    aigw = str(Path(sys.executable).with_name("aigw"))
    supervisor = spawn(
        "gateway",
        [aigw, "up", "--config", str(config), "--extproc-workers", str(extproc_workers)],
        work,
        env={"PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: answers(f"{url}/healthz", ok=lambda status: status == 200),
            "aigw up",
            supervisor,
        )
        parent_id, parent_key = asyncio.run(_create_parent(backends))
        sub = _create_sub_account(url, parent_key)
    except BaseException:
        stop(supervisor, signal.SIGINT)
        raise
    return Gateway(url, supervisor, backends, parent_id, parent_key, sub["id"], sub["key"])


def gateway_target(gateway: Gateway) -> Target:
    """The gateway as a configuration: every mode on /v1/chat/completions with the sub-account's
    key."""
    url = f"{gateway.url}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {gateway.sub_account_key}"}
    target = Target(
        "gateway",
        requests_for(
            dict.fromkeys(("json", "stream", "paced"), url),
            GATEWAY_MODELS,
            dict.fromkeys(("json", "stream", "paced"), auth),
        ),
        [],
        gateway.cpu_groups,
        version=f"aigw (Envoy {envoy_version()})",
        quiesce=gateway.quiesce,
    )
    check_answers(target)
    return target


def check_answers(target: Target, timeout_s: float = 60.0) -> None:
    """One request of each mode must answer 200 before any load is sent (a 503 while the
    gateway still loads its keys is waited out)."""
    deadline = time.monotonic() + timeout_s
    for mode, spec in target.requests.items():
        while True:
            response = httpx.post(
                spec.url, content=spec.body, headers=spec.headers, timeout=30, trust_env=False
            )
            if response.status_code == 200:
                break
            if response.status_code != 503 or time.monotonic() > deadline:
                raise BenchError(
                    f"{target.name}: a {mode} request answered {response.status_code}: "
                    f"{response.text[:500]}"
                )
            time.sleep(0.2)


async def _create_parent(backends: Backends) -> tuple[str, str]:
    from controlplane.accounts import create_parent_account

    return await create_parent_account(backends.database_url, "bench", backends.redis_url)


def _create_sub_account(url: str, parent_key: str) -> dict[str, Any]:
    body = {
        "name": "bench-tenant",
        "spend_cap_cents": GENEROUS_CAP_CENTS,
        "budget_period": "monthly",
        "rate_limit_rpm": GENEROUS_RATE,
        "rate_limit_rpd": GENEROUS_RATE,
        "rate_limit_tpm": GENEROUS_RATE,
        "allowed_models": ["*"],
        "default_tag": "tenant:bench",
    }
    response = httpx.post(
        f"{url}/v1/sub-accounts",
        headers={"Authorization": f"Bearer {parent_key}"},
        json=body,
        timeout=30,
        trust_env=False,
    )
    if response.status_code != 201:
        raise BenchError(
            f"creating the sub-account answered {response.status_code}: {response.text}"
        )
    return dict(response.json())
