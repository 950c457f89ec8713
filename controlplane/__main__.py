"""`python -m controlplane [--config FILE]`: serve the control plane on
`server.host:server.controlplane_port` until SIGINT/SIGTERM (graceful shutdown).

Started by `aigw up`, which fills in `database_url` and `redis_url` (embedded ones included)
and hands the resolved configuration down in `$AIGW_CONFIG_JSON`. Never logs a key: the access
log shows the request line only, and keys never travel in URLs. Logs are text or JSON lines
(`log_format`, `$AIGW_LOG_FORMAT`; `aigw.logs`), each with the request's `x-request-id`.

On SIGTERM uvicorn stops accepting connections, lets open requests finish (10 s at most), then
the lifespan stops the workers (the ingester finishes its batch; see `controlplane.app`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvicorn

from aigw import logs
from aigw.config import ConfigError, runtime_config
from controlplane.app import create_app
from controlplane.migrate import migrate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controlplane", description=__doc__)
    parser.add_argument(
        "--config", help="configuration file (default: $AIGW_CONFIG, else config/gateway.yaml)"
    )
    args = parser.parse_args(argv)
    logs.configure("text")
    try:
        config = runtime_config(args.config)
        logs.configure(logs.resolve_format(config.log_format))
    except (ConfigError, ValueError) as exc:
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
            http="httptools",
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
