"""The gateway's TCP ports: checked free before `aigw up` starts anything, polled for readiness.

A conflict is reported with the port, the address and the configuration key that chose it, so
the fix is obvious ("server.port in config/gateway.yaml").
"""

from __future__ import annotations

import contextlib
import socket

from aigw.config import ConfigError, GatewayConfig

LOOPBACK = "127.0.0.1"


class PortInUse(Exception):
    """A configured port is taken by another process."""


def probe_host(host: str) -> str:
    """The address to connect to for a server listening on `host` (a wildcard means loopback)."""
    return {"0.0.0.0": LOOPBACK, "::": "::1", "": LOOPBACK}.get(host, host)


def configured_ports(config: GatewayConfig) -> dict[str, tuple[str, int]]:
    """`{config key: (address, port)}` of every port the gateway listens on."""
    server = config.server
    return {
        "server.port": (server.host, server.port),
        "server.controlplane_port": (LOOPBACK, server.controlplane_port),
        "server.extproc_port": (LOOPBACK, server.extproc_port),
        "server.envoy_admin_port": (LOOPBACK, server.envoy_admin_port),
    }


def check_ports(config: GatewayConfig, source: str) -> None:
    """Raise ConfigError if two keys name one port, PortInUse if a port is taken."""
    seen: dict[int, str] = {}
    for key, (_, port) in configured_ports(config).items():
        if port in seen:
            raise ConfigError(f"{source}: {key}: port {port} is also {seen[port]}")
        seen[port] = key
    for key, (host, port) in configured_ports(config).items():
        if not _bindable(host, port):
            raise PortInUse(
                f"port {port} ({key} in {source}) is already in use on {host}: stop whatever "
                f"listens there (another `aigw up`?) or choose another {key}"
            )


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((probe_host(host), port), timeout):
        return True
    return False


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As servers do: a socket of a previous run in TIME_WAIT is no conflict.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
