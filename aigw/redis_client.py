"""Connections to Redis — one server or a Redis Cluster, chosen by the form of `redis_url`.

    redis://[user:password@]host:port[/db]      one server (also rediss:// for TLS, unix://path)
    redis+cluster://[user:password@]host:port[,host:port…][/][?option=value&…]
                                                a Redis Cluster (rediss+cluster:// for TLS)

The cluster form names seed nodes: any nodes of the cluster, one is enough, more survive one
being down; redis-py discovers the rest and follows MOVED / ASK redirections. Its database is 0
(the only one a cluster has); query options are redis-py's URL options (`socket_timeout=…`).
Every process that talks to Redis connects through `connect` (asyncio) or `connect_sync`, so
both forms work everywhere. Pub/sub is the exception: `subscriber_urls` gives one plain URL per
seed node, since a cluster propagates PUBLISH to every node and a subscription to any one of
them hears everything (docs/scaling.md).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.connection import HiredisRespSerializer
from redis.exceptions import RedisClusterException, RedisError

AsyncRedis = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
SyncRedis = redis.Redis | redis.cluster.RedisCluster

REDIS_ERRORS: Final = (RedisError, RedisClusterException, OSError)
"""Everything a Redis call may raise when Redis cannot answer: a server's errors, a cluster's
own (`RedisClusterException` is not a `RedisError`: no reachable node, a slot not covered), and
socket errors."""

_CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_CLUSTER_MAX_CONNECTIONS: Final = 2**31
"""Per node, as a server client's pool (redis-py's default for a cluster, 100, answers the 101st
concurrent command with MaxConnectionsError instead of opening a connection)."""
_SERVER_SCHEMES: Final = ("redis", "rediss", "unix")
_SERVER_MAX_CONNECTIONS: Final = 100
"""Per client of one server. A command that finds them all busy waits for one to come free (as
long as its `socket_timeout`) rather than failing: redis-py's default pool answers the 101st
concurrent command with MaxConnectionsError, which a burst of new requests reaches at once."""


class _HiredisPacking:
    """Commands packed by hiredis (C), as redis-py's blocking client does: its asyncio
    connection packs them in Python, ~50 µs of CPU for the 28 arguments of one admission
    script on the machines we measure on (bench/README.md)."""

    _serializer: Final = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._serializer.pack(*args)


class _Connection(_HiredisPacking, redis.asyncio.Connection):
    pass


class _SSLConnection(_HiredisPacking, redis.asyncio.SSLConnection):
    pass


class _UnixConnection(_HiredisPacking, redis.asyncio.UnixDomainSocketConnection):
    pass


_HIREDIS_PACKING: Final[dict[type, type]] = {
    redis.asyncio.Connection: _Connection,
    redis.asyncio.SSLConnection: _SSLConnection,
    redis.asyncio.UnixDomainSocketConnection: _UnixConnection,
}


@dataclass(frozen=True, slots=True)
class _ClusterUrl:
    scheme: str
    """`redis` or `rediss`: what each node speaks."""
    userinfo: str
    """`user:password@` as written (still percent-encoded), or empty."""
    nodes: tuple[tuple[str, int], ...]
    query: str

    def node_url(self, host: str, port: int) -> str:
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{self.userinfo}{netloc}/0{query}"


def is_cluster(url: str) -> bool:
    """Whether `url` names a Redis Cluster (`redis+cluster://`, `rediss+cluster://`)."""
    return url.partition("://")[0].lower() in _CLUSTER_SCHEMES


def check_url(url: str) -> str:
    """`url` if it is a Redis URL of a form above; ValueError saying what is wrong (never
    repeating the URL, which may hold a password)."""
    if is_cluster(url):
        _parse_cluster(url)
        return url
    parts = urlsplit(url)
    if parts.scheme not in _SERVER_SCHEMES:
        raise ValueError(
            "must be a redis://, rediss:// or unix:// URL, or redis+cluster://host:port[,…] "
            "for a Redis Cluster"
        )
    if parts.scheme == "unix" and not parts.path:
        raise ValueError("a unix:// URL needs the socket's path")
    if parts.scheme != "unix":
        if not parts.hostname:
            raise ValueError("needs a host")
        _port_of(parts.port)
    return url


def connect(url: str, **options: Any) -> AsyncRedis:
    """An asyncio client: `redis.asyncio.Redis`, or `RedisCluster` for a cluster URL.
    `options` are client options both accept (timeouts, `retry`, `client_name`…)."""
    if not is_cluster(url):
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=_SERVER_MAX_CONNECTIONS,
            timeout=options.get("socket_timeout"),
            **options,
        )
        pool.connection_class = _HIREDIS_PACKING.get(pool.connection_class, pool.connection_class)
        return redis.asyncio.Redis.from_pool(pool)
    cluster = _parse_cluster(url)
    (host, port), *others = cluster.nodes
    seeds = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in others]
    options.setdefault("max_connections", _CLUSTER_MAX_CONNECTIONS)
    return redis.asyncio.cluster.RedisCluster.from_url(
        cluster.node_url(host, port), startup_nodes=seeds, **options
    )


def connect_sync(url: str, **options: Any) -> SyncRedis:
    """The blocking twin of `connect` (the command line, the benchmark)."""
    if not is_cluster(url):
        return redis.Redis.from_url(url, **options)
    cluster = _parse_cluster(url)
    (host, port), *others = cluster.nodes
    seeds = [redis.cluster.ClusterNode(h, p) for h, p in others]
    return redis.cluster.RedisCluster.from_url(
        cluster.node_url(host, port), startup_nodes=seeds, **options
    )


def routed(client: AsyncRedis, key: str) -> dict[str, Any]:
    """Options for a command about `key` that send it straight to the node holding the key.
    redis-py's cluster client cannot find the keys of some commands by itself (XREADGROUP: it
    asks the server with COMMAND GETKEYS, one more round trip per command); a single server
    needs nothing (empty). The client must know the cluster's slots (after a first command)."""
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        return {"target_nodes": client.get_node_from_key(key)}
    return {}


async def warm_up(client: AsyncRedis) -> None:
    """Connect now rather than on the first command: a cluster client discovers its nodes and
    slots. redis-py's cluster client can fail commands that race its first discovery (seen as
    an AttributeError under a burst of concurrent first commands), so a process that serves
    concurrently warms its clients up before it serves. A Redis that does not answer is left for
    later: the first command tries again."""
    with contextlib.suppress(*REDIS_ERRORS):
        await client.initialize()


def subscriber_urls(url: str) -> list[str]:
    """Where a SUBSCRIBE may go, to be tried in turn: the server itself, or each seed node of a
    cluster as a plain `redis://` URL (credentials and options kept)."""
    if not is_cluster(url):
        return [url]
    cluster = _parse_cluster(url)
    return [cluster.node_url(host, port) for host, port in cluster.nodes]


def _parse_cluster(url: str) -> _ClusterUrl:
    scheme, _, rest = url.partition("://")
    if "#" in rest:
        raise ValueError("a Redis Cluster URL has no fragment")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0 (leave the path empty)")
    userinfo, at, hosts = netloc.rpartition("@")
    nodes = tuple(_split_node(node) for node in hosts.split(","))
    return _ClusterUrl(_CLUSTER_SCHEMES[scheme.lower()], userinfo + at, nodes, query)


def _split_node(node: str) -> tuple[str, int]:
    host, colon, port = node.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit():
        raise ValueError("each node of a Redis Cluster URL must be host:port")
    return host, _port_of(int(port))


def _port_of(port: int | None) -> int:
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("the port must be between 1 and 65535")
    return port or 6379
