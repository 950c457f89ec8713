"""The `aigw` command line (API.md §8).

    aigw up [--demo] [--extproc-workers N]    the whole gateway in the foreground
    aigw accounts create NAME [--json]        a parent account: its id and key
    aigw envoy-config                         the Envoy configuration `up` would run
    aigw mock-provider [--port N]             the built-in OpenAI/Anthropic mock provider

Every command takes `--config FILE` (else `$AIGW_CONFIG`, else `config/gateway.yaml`). A bad
configuration prints its message (file and key) and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson

from aigw.config import ConfigError, GatewayConfig, config_path, load_config

DEFAULT_MOCK_PORT = 8090


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="gateway configuration (default: $AIGW_CONFIG, else config/gateway.yaml)",
    )
    parser = argparse.ArgumentParser(
        prog="aigw",
        parents=[common],
        description="Self-hosted multi-tenant AI gateway on Envoy.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    up = commands.add_parser(
        "up", parents=[common], help="run the whole gateway in the foreground (Ctrl-C stops it)"
    )
    up.add_argument(
        "--demo", action="store_true", help="route every provider to the built-in mock provider"
    )
    up.add_argument(
        "--extproc-workers", type=_positive, default=len(os.sched_getaffinity(0)), metavar="N",
        help="external processor processes sharing the port (default: the CPUs we may use)",
    )  # fmt: skip
    up.set_defaults(handler=_up)

    accounts = commands.add_parser("accounts", parents=[common], help="parent accounts")
    account_commands = accounts.add_subparsers(metavar="COMMAND", required=True)
    create = account_commands.add_parser(
        "create", parents=[common], help="create a parent account and print its id and key"
    )
    create.add_argument("name", metavar="NAME")
    create.add_argument("--json", action="store_true", help='print {"id": …, "key": …}')
    create.set_defaults(handler=_accounts_create)

    envoy_config = commands.add_parser(
        "envoy-config", parents=[common], help="print the Envoy configuration `up` would run"
    )
    envoy_config.set_defaults(handler=_envoy_config)

    mock = commands.add_parser(
        "mock-provider",
        parents=[common],
        help="run a local OpenAI/Anthropic-compatible provider with deterministic answers",
    )
    mock.add_argument("--port", type=int, default=DEFAULT_MOCK_PORT, metavar="N")
    mock.add_argument("--host", default="127.0.0.1")
    mock.set_defaults(handler=_mock_provider)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _config_file(args: argparse.Namespace) -> str | None:
    return getattr(args, "config", None)


def _up(args: argparse.Namespace) -> int:
    from aigw.supervisor import Supervisor

    config = load_config(_config_file(args))
    source = str(config_path(_config_file(args)))
    supervisor = Supervisor(
        config, source, _Console(), demo=args.demo, extproc_workers=args.extproc_workers
    )
    return supervisor.run()


class _Console:
    """`aigw up`'s messages on stdout: the parent key on the first start (once, nowhere else),
    the demo warning, providers without a key, the base URL."""

    def first_parent(self, account_id: str, key: str) -> None:
        rule = "=" * 72
        self._say(
            rule,
            "  First start: your parent account was created.",
            f"    id:  {account_id}",
            f"    key: {key}",
            "  Keep this key now: it is shown only this once (only its hash is stored).",
            "  More parent accounts: aigw accounts create NAME",
            rule,
        )

    def demo(self, config: GatewayConfig, mock_url: str) -> None:
        loud = "!" * 72
        self._say(
            loud,
            f"  DEMO MODE: every provider ({', '.join(config.providers)}) is routed",
            f"  to the built-in MOCK provider at {mock_url}.",
            "  No request reaches a real provider; answers are canned text.",
            loud,
        )

    def ready(self, config: GatewayConfig, base_url: str, log_dir: Path) -> None:
        keyless = [name for name, provider in config.providers.items() if not provider.api_key]
        if keyless:
            self._say(
                f"No platform key for: {', '.join(keyless)} (their requests answer 400 "
                "provider_not_configured unless the parent attaches its own key)."
            )
        host = config.server.host
        listening = "" if host in base_url else f" (listening on {host})"
        self._say(
            f"aigw is up. Base URL: {base_url}{listening}",
            f"  control-plane docs: {base_url.removesuffix('/v1')}/docs",
            f"  logs: {log_dir}/",
            "Press Ctrl-C to stop.",
        )

    @staticmethod
    def _say(*lines: str) -> None:
        print("\n" + "\n".join(lines), flush=True)


def _envoy_config(args: argparse.Namespace) -> int:
    from aigw.envoy_config import render_envoy_yaml

    config = load_config(_config_file(args))
    try:
        sys.stdout.write(render_envoy_yaml(config))
    except ConfigError as exc:  # a provider Envoy cannot use, e.g. a missing ca_file
        raise ConfigError(f"{config_path(_config_file(args))}: {exc}") from None
    return 0


def _mock_provider(args: argparse.Namespace) -> int:
    from aigw.mock import serve

    serve(args.port, args.host)
    return 0


def _accounts_create(args: argparse.Namespace) -> int:
    config = load_config(_config_file(args))
    with _stdout_to_stderr(), _database(config) as (dsn, redis_url):
        account_id, key = asyncio.run(_create_parent(dsn, args.name, redis_url))
    if args.json:
        print(orjson.dumps({"id": account_id, "key": key}).decode())
    else:
        print(f"Created parent account {args.name!r}\n  id:  {account_id}\n  key: {key}\n"
              "Keep the key: it is shown only this once.")  # fmt: skip
    return 0


async def _create_parent(dsn: str, name: str, redis_url: str | None) -> tuple[str, str]:
    from controlplane.accounts import create_parent_account
    from controlplane.migrate import migrate

    await migrate(dsn)
    return await create_parent_account(dsn, name, redis_url)


@contextlib.contextmanager
def _database(config: GatewayConfig) -> Iterator[tuple[str, str | None]]:
    """`(dsn, redis_url)`: the configured servers, else those of a running `aigw up`, else the
    data dir's embedded PostgreSQL, started for the duration and stopped after."""
    from aigw.supervisor import read_run_state

    running = read_run_state(config.data_path) or {}
    redis_url = config.redis_url or running.get("redis_url")
    dsn = config.database_url or running.get("database_url")
    if dsn:
        yield dsn, redis_url
        return
    from aigw.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(config.data_path / "postgres")
    try:
        yield server.start(), redis_url
    finally:
        server.stop()


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Keep stdout clean for `--json`: whatever the database start-up prints goes to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


if __name__ == "__main__":
    sys.exit(main())
