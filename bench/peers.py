"""The peers, installed by the bench itself under `bench/.peers/` (gitignored), each in its own
folder, and pointed at the same fake provider:

- LiteLLM proxy, `litellm[proxy]==1.108.7` in its own venv, no database, a random master key
  (it refuses well-known ones such as `sk-1234`);
- Portkey gateway, `@portkey-ai/gateway` from npm on Node (>= 18), as a pure proxy: headers
  `x-portkey-provider: openai` and `x-portkey-custom-host: <fake provider>/v1`.

A peer that cannot be installed (no registry, no Node) raises `PeerUnavailable` with the reason;
the run says so and goes on without it.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from bench.fake_provider import FakeProvider
from bench.procs import Child, answers, free_port, process_tree, spawn, stop, wait_until
from bench.targets import UPSTREAM_MODELS, Target, render, requests_for

PEERS_DIR = Path(__file__).resolve().with_name(".peers")
LITELLM_SPEC = "litellm[proxy]==1.108.7"
PORTKEY_SPEC = "@portkey-ai/gateway@1.15.2"
INSTALL_TIMEOUT_S = 1200
READY_TIMEOUT_S = 180.0
LITELLM_MODELS = {"json": "bench-json", "stream": "bench-sse", "paced": "bench-sse-paced"}
PEERS = ("litellm", "portkey")


class PeerUnavailable(Exception):
    """The peer cannot be installed or started here; the message says why."""


def _run_install(name: str, command: list[str], folder: Path) -> None:
    log = folder / "install.log"
    try:
        with log.open("ab") as output:
            subprocess.run(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=INSTALL_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        lines = log.read_text(errors="replace").splitlines()
        tail = "\n".join(line for line in lines if not line.startswith("WARNING: Location"))
        raise PeerUnavailable(f"installing {name} failed ({exc}); {log}:\n{tail[-1500:]}") from exc


def install_litellm() -> Path:
    """The LiteLLM venv's `litellm` command, installing it on first use."""
    folder = PEERS_DIR / "litellm"
    marker = folder / f".installed-{LITELLM_SPEC}"
    command = folder / "venv" / "bin" / "litellm"
    if marker.exists() and command.exists():
        return command
    folder.mkdir(parents=True, exist_ok=True)
    base_python = getattr(sys, "_base_executable", sys.executable)
    _run_install("LiteLLM", [base_python, "-m", "venv", str(folder / "venv")], folder)
    pip = str(folder / "venv" / "bin" / "pip")
    _run_install(
        "LiteLLM", [pip, "install", "--quiet", "--disable-pip-version-check", LITELLM_SPEC], folder
    )
    marker.touch()
    return command


def install_portkey() -> Path:
    """Portkey's `start-server.js`, installing it with npm on first use."""
    if not shutil.which("node") or not shutil.which("npm"):
        raise PeerUnavailable("Portkey needs Node.js and npm, which are not installed")
    folder = PEERS_DIR / "portkey"
    marker = folder / f".installed-{PORTKEY_SPEC.replace('/', '_')}"
    script = folder / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if marker.exists() and script.exists():
        return script
    folder.mkdir(parents=True, exist_ok=True)
    _run_install(
        "Portkey",
        ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder), PORTKEY_SPEC],
        folder,
    )
    if not script.exists():
        raise PeerUnavailable(f"npm installed {PORTKEY_SPEC} but {script} is missing")
    marker.touch()
    return script


def start_litellm(work: Path, provider: FakeProvider, workers: int = 1) -> Target:
    """LiteLLM proxy on a free port, no database, `workers` uvicorn workers."""
    command = install_litellm()
    master_key = "sk-bench-" + secrets.token_hex(16)
    config = render(
        "litellm.yaml",
        work / "litellm.yaml",
        provider_url=provider.json_url,
        sse_url=provider.sse_url,
        master_key=master_key,
    )
    port = free_port()
    child = spawn(
        "litellm",
        [
            str(command),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            str(workers),
        ],
        work,
        env={"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"},
        without=("DATABASE_URL", "REDIS_URL"),  # LiteLLM would use them (and need prisma)
    )
    _wait_ready(child, f"http://127.0.0.1:{port}/health/liveliness")
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {master_key}"}
    version = _python_package_version(command.with_name("python"), "litellm")
    return Target(
        "litellm",
        requests_for(
            dict.fromkeys(LITELLM_MODELS, url), LITELLM_MODELS, dict.fromkeys(LITELLM_MODELS, auth)
        ),
        [child],
        lambda: {"litellm": process_tree(child.pid), "provider": provider.pids},
        version=f"LiteLLM {version}, {workers} worker(s)",
    )


def start_portkey(work: Path, provider: FakeProvider) -> Target:
    """Portkey's Node gateway on a free port, headless, as a pure proxy."""
    script = install_portkey()
    port = free_port()
    child = spawn(
        "portkey",
        ["node", str(script), f"--port={port}", "--headless"],
        work,
        env={"NODE_ENV": "production"},
    )
    _wait_ready(child, f"http://127.0.0.1:{port}/")
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    common = {"Authorization": "Bearer sk-bench-upstream", "x-portkey-provider": "openai"}
    headers = {
        "json": {**common, "x-portkey-custom-host": f"{provider.json_url}/v1"},
        "stream": {**common, "x-portkey-custom-host": f"{provider.sse_url}/v1"},
        "paced": {**common, "x-portkey-custom-host": f"{provider.sse_url}/v1"},
    }
    package = script.parents[1] / "package.json"
    version = json.loads(package.read_text()).get("version", "?")
    return Target(
        "portkey",
        requests_for(dict.fromkeys(headers, url), UPSTREAM_MODELS, headers),
        [child],
        lambda: {"portkey": process_tree(child.pid), "provider": provider.pids},
        version=f"Portkey gateway {version} (Node {_node_version()})",
    )


def _wait_ready(child: Child, url: str) -> None:
    try:
        wait_until(lambda: answers(url, ok=lambda s: s == 200), child.name, child, READY_TIMEOUT_S)
    except Exception as exc:
        stop(child)
        raise PeerUnavailable(str(exc)) from exc


def _python_package_version(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return result.stdout.strip() or "?"


def _node_version() -> str:
    return subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
