"""`python -m controlplane [--config FILE]`: serve the control plane on
`server.host:server.controlplane_port` until SIGINT/SIGTERM (graceful shutdown).

Started by `aigw up`, which fills in `database_url` and `redis_url` (embedded ones included)
and hands the resolved configuration down in `$AIGW_CONFIG_JSON`. Never logs a key: the access
log shows the request line only, and keys never travel in URLs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import uvicorn

from aigw.config import ConfigError, runtime_config
from controlplane.app import create_app
from controlplane.migrate import migrate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controlplane", description=__doc__)
    parser.add_argument(
        "--config", help="configuration file (default: $AIGW_CONFIG, else config/gateway.yaml)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = runtime_config(args.config)
    except ConfigError as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return 2
    if not config.database_url or not config.redis_url:
        print(
            "controlplane: database_url and redis_url must be set (`aigw up` sets them)",
            file=sys.stderr,
        )
        return 2
    asyncio.run(migrate(config.database_url))
    app = create_app(config, config.database_url, config.redis_url)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.server.host,
            port=config.server.controlplane_port,
            loop="uvloop",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=10,
            log_config=None,
        )
    )
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
