"""`python -m extproc [--config FILE] [--metrics-port N] [--shutdown-grace S]`: serve Envoy's
ext_proc filter on `server.host:server.extproc_port` until SIGTERM or SIGINT.

Started by `aigw up` (configuration in `$AIGW_CONFIG_JSON`) or by hand (`--config`, else
`$AIGW_CONFIG`, else `config/gateway.yaml`). Several processes may share the port. The same port
answers gRPC health checks (`extproc.health`); `--metrics-port` serves Prometheus metrics.

Stopping (SIGTERM): health turns NOT_SERVING, new streams are refused, open ones get
`--shutdown-grace` seconds to finish (a stream cut off then is settled as aborted), pending
settles are flushed, connections closed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from wsgiref.simple_server import WSGIServer

import uvloop

from aigw import logs
from aigw.config import ConfigError, GatewayConfig, runtime_config
from aigw.redis_client import connect as connect_redis
from aigw.redis_client import warm_up
from aigw.secrets_box import Keyring, SecretsError
from extproc import metrics
from extproc.byok import ProviderKeyCache
from extproc.gateway import Gateway
from extproc.health import Health
from extproc.invalidated_cache import REDIS_TIMEOUT
from extproc.limits import LimitStore
from extproc.policies import PolicyStore
from extproc.server import create_server

log = logging.getLogger("extproc")

DEFAULT_SHUTDOWN_GRACE_SECONDS = 5.0
GC_YOUNG_THRESHOLD = 5_000  # objects; CPython's default is 700


async def serve(config: GatewayConfig, redis_url: str, shutdown_grace: float) -> None:
    """Serve until SIGTERM or SIGINT, then let open streams finish for `shutdown_grace` s."""
    policies = PolicyStore(redis_url)
    policies.start()
    byok = ProviderKeyCache(redis_url, Keyring.from_config(config), config.providers)
    byok.start()
    limits_redis = connect_redis(
        redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
    )
    await warm_up(limits_redis)
    gateway = Gateway.from_config(config, policies, LimitStore(limits_redis), byok=byok)
    host, port = config.server.host, config.server.extproc_port
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    health = Health()
    server, _ = create_server(gateway, address, config.max_request_bytes, health)
    await server.start()
    _settle_garbage_collector()
    log.info("extproc serving on %s", address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("extproc stopping: open streams get %.0f s", shutdown_grace)
    health.serving = False
    await server.stop(shutdown_grace)
    await gateway.settler.drain(shutdown_grace)
    await policies.close()
    await byok.close()
    await limits_redis.aclose()


def _settle_garbage_collector() -> None:
    """Everything built at start-up (modules, protobuf descriptors, the configuration) lives as
    long as the process: move it out of the collector's sight, so that the full collections
    the request path triggers do not walk it again and again, and collect the youngest
    generation less often (a request leaves hundreds of short-lived objects)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extproc", description="aigw's ext_proc server for Envoy."
    )
    parser.add_argument("--config", metavar="FILE", help="the gateway configuration (YAML)")
    parser.add_argument(
        "--metrics-port", type=int, metavar="N",
        help="serve Prometheus metrics on server.host:N (default: none)",
    )  # fmt: skip
    parser.add_argument(
        "--shutdown-grace", type=float, default=DEFAULT_SHUTDOWN_GRACE_SECONDS, metavar="S",
        help="seconds open streams get to finish after SIGTERM (default %(default)s)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logs.configure("text")
    try:
        config = runtime_config(args.config)
        logs.configure(logs.resolve_format(config.log_format))
        Keyring.from_config(config)  # an unreadable data_dir/secrets.key stops us here
    except (ConfigError, SecretsError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    if not config.redis_url:
        log.error("redis_url is not set: start the gateway with `aigw up`, or set redis_url")
        return 2
    exporter: WSGIServer | None = None
    if args.metrics_port is not None:
        exporter, _ = metrics.serve(config.server.host, args.metrics_port)
    try:
        uvloop.run(serve(config, config.redis_url, args.shutdown_grace))
    finally:
        if exporter is not None:
            exporter.shutdown()
            exporter.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
