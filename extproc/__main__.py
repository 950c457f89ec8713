"""`python -m extproc [--config FILE]`: serve Envoy's ext_proc filter on
`server.host:server.extproc_port` until SIGTERM or SIGINT.

Started by `aigw up` (configuration in `$AIGW_CONFIG_JSON`) or by hand (`--config`, else
`$AIGW_CONFIG`, else `config/gateway.yaml`). Several processes may share the port.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import redis.asyncio as aioredis
import uvloop

from aigw.config import ConfigError, GatewayConfig, runtime_config
from aigw.secrets_box import Keyring, SecretsError
from extproc.byok import ProviderKeyCache
from extproc.gateway import Gateway
from extproc.invalidated_cache import REDIS_TIMEOUT
from extproc.limits import LimitStore
from extproc.policies import PolicyStore
from extproc.server import create_server

log = logging.getLogger("extproc")

_STOP_GRACE_SECONDS = 5.0


async def serve(config: GatewayConfig, redis_url: str) -> None:
    """Serve until SIGTERM or SIGINT, then let open streams finish for a few seconds."""
    policies = PolicyStore(redis_url)
    policies.start()
    byok = ProviderKeyCache(redis_url, Keyring.from_config(config), config.providers)
    byok.start()
    limits_redis = aioredis.from_url(
        redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
    )
    gateway = Gateway.from_config(config, policies, LimitStore(limits_redis), byok=byok)
    host, port = config.server.host, config.server.extproc_port
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    server, _ = create_server(gateway, address, config.max_request_bytes)
    await server.start()
    log.info("extproc serving on %s", address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("extproc stopping")
    await server.stop(_STOP_GRACE_SECONDS)
    await gateway.settler.drain(_STOP_GRACE_SECONDS)
    await policies.close()
    await byok.close()
    await limits_redis.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extproc", description="aigw's ext_proc server for Envoy."
    )
    parser.add_argument("--config", metavar="FILE", help="the gateway configuration (YAML)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s extproc[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = runtime_config(args.config)
        Keyring.from_config(config)  # an unreadable data_dir/secrets.key stops us here
    except (ConfigError, SecretsError) as exc:
        log.error("%s", exc)
        return 2
    if not config.redis_url:
        log.error("redis_url is not set: start the gateway with `aigw up`, or set redis_url")
        return 2
    uvloop.run(serve(config, config.redis_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
