"""`redis_url` forms (docs/scaling.md): one server or a Redis Cluster, what a bad URL says, the
client each form gets, where a subscription may go; and the key layout's shard arithmetic."""

from __future__ import annotations

import asyncio
import zlib

import pytest
import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster

from aigw import keyspace
from aigw.config import ConfigError, parse_config
from aigw.redis_client import check_url, connect, connect_sync, is_cluster, subscriber_urls


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://user:pw@redis.internal:6380/2",
        "unix:///run/redis.sock",
        "redis+cluster://10.0.0.5:6379",
        "redis+cluster://10.0.0.5:6379,10.0.0.6:6379,[::1]:7000/",
        "rediss+cluster://user:s%40cret@redis.internal:6380/0?socket_timeout=2",
        "rediss+cluster://a:1,b:2?ssl_ca_certs=/etc/ssl/redis-ca.pem",
    ],
)
def test_accepted_urls(url: str) -> None:
    assert check_url(url) == url
    assert parse_config(f"redis_url: '{url}'\n").redis_url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379", "or redis\\+cluster://host:port"),
        ("redis+cluster://10.0.0.5", "host:port"),
        ("redis+cluster://10.0.0.5:6379,", "host:port"),
        ("redis+cluster://10.0.0.5:99999", "between 1 and 65535"),
        ("redis+cluster://10.0.0.5:6379/3", "only database 0"),
        ("redis+cluster://10.0.0.5:6379/#frag", "no fragment"),
        ("redis://", "needs a host"),
        ("unix://", "socket's path"),
    ],
)
def test_a_bad_url_is_a_config_error_naming_the_key(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_url(url)
    with pytest.raises(ConfigError) as raised:
        parse_config(f"redis_url: '{url}'\n", "gw.yaml")
    assert str(raised.value).startswith("gw.yaml: redis_url:")


def test_the_error_never_repeats_the_url() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config("redis_url: 'redis+cluster://admin:hunter2@10.0.0.5'\n", "gw.yaml")
    assert "hunter2" not in str(raised.value)


def test_an_empty_url_means_the_embedded_server() -> None:
    assert parse_config("redis_url: ''\n").redis_url is None


async def test_each_form_gets_its_client() -> None:
    server = connect("redis://127.0.0.1:6379/0")
    cluster = connect("redis+cluster://127.0.0.1:7000,127.0.0.2:7001", socket_timeout=1)
    try:
        assert isinstance(server, redis.asyncio.Redis)
        assert isinstance(cluster, RedisCluster)
        seeds = sorted((node.host, node.port) for node in cluster.startup_nodes)
        assert seeds == [("127.0.0.1", 7000), ("127.0.0.2", 7001)]
    finally:
        await server.aclose()
        await cluster.aclose()
    assert isinstance(connect_sync("redis://127.0.0.1:6379/0"), redis.Redis)
    assert is_cluster("REDIS+CLUSTER://h:1") and not is_cluster("redis://h:1")


def test_a_subscription_goes_to_the_server_or_to_each_seed_node_in_turn() -> None:
    assert subscriber_urls("redis://h:6379/4") == ["redis://h:6379/4"]
    assert subscriber_urls("redis+cluster://a:1?ssl_ca_certs=/etc/ca.pem") == [
        "redis://a:1/0?ssl_ca_certs=/etc/ca.pem"
    ]
    assert subscriber_urls("rediss+cluster://u:p@a:1,[::1]:2/?socket_timeout=2") == [
        "rediss://u:p@a:1/0?socket_timeout=2",
        "rediss://u:p@[::1]:2/0?socket_timeout=2",
    ]


def test_an_owner_and_its_stream_share_the_shards_hash_tag() -> None:
    owner = "sa_9f3kQx"
    shard = zlib.crc32(owner.encode()) % keyspace.USAGE_SHARDS
    assert keyspace.usage_shard(owner) == shard
    assert keyspace.owner_usage_stream(owner) == f"aigw:{{u{shard}}}:usage"
    assert keyspace.owner_spend(owner, "2026-11") == f"aigw:{{u{shard}}}:{owner}:spend:2026-11"
    streams = keyspace.usage_streams()
    assert len(set(streams)) == keyspace.USAGE_SHARDS == 64
    assert keyspace.provider_keys("acct_1") == "aigw:{acct_1}:byok"  # unchanged by sharding


async def test_more_concurrent_commands_than_pooled_connections_wait_instead_of_failing(
    redis_server_url: str,
) -> None:
    client = connect(redis_server_url, socket_timeout=5, client_name="aigw-burst-test")
    try:
        answers = await asyncio.gather(*(client.ping() for _ in range(300)))
        assert answers == [True] * 300
        ours = [c for c in await client.client_list() if c["name"] == "aigw-burst-test"]
        assert 1 <= len(ours) <= 100
    finally:
        await client.aclose()
