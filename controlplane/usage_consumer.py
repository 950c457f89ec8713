"""The usage ingester's side of Redis: one consumer over every shard's usage stream
(`aigw.keyspace.usage_streams`), each with its own consumer group `ingest`.

    consumer = UsageConsumer(redis, streams, group, name, batch_size, claim_idle_ms)
    entries = await consumer.next_batch()    # [] when no shard has anything
    ...store them...
    await consumer.ack(entries)               # or consumer.keep_pending(entries) on a failure

Per shard, as one stream's consumer always did: the group is created from id 0 with MKSTREAM
(and again when Redis lost it: NOGROUP); this consumer's own pending entries are read first
after a failure or a start; entries idle longer than `claim_idle_ms` at another consumer are
taken over with XAUTOCLAIM (a scan of the pending list across rounds, restarted every
`claim_idle_ms / 2`); consumers idle for an hour with nothing pending are removed; entries are
acknowledged and deleted together. A Redis Cluster lets a command name keys of one slot only,
so every per-shard command goes into one pipeline (redis-py sends each node its part in
parallel; a single server gets one round trip), and a shard's XACK + XDEL is one small script,
atomic like the MULTI it replaces and pipelinable unlike it. On a single server the read is one
XREADGROUP naming every shard's stream. A batch holds up to `batch_size` entries of each shard.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio
from redis.exceptions import ResponseError

from aigw.redis_client import AsyncRedis, routed

log = logging.getLogger(__name__)

FORGET_CONSUMER_IDLE_MS: Final = 3_600_000

Entry = tuple[str, str, dict[bytes, bytes]]
"""(stream, entry id, fields); the fields are empty for an entry deleted while pending."""

_ACK_AND_DELETE: Final = """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
"""


@dataclass(slots=True)
class _Shard:
    stream: str
    group_ready: bool = False
    own_pending: bool = True  # a fresh consumer may have leftovers under its name
    claim_cursor: str = "0-0"
    next_claim: float = 0.0


class UsageConsumer:
    def __init__(
        self,
        redis: AsyncRedis,
        streams: Sequence[str],
        group: str,
        name: str,
        batch_size: int,
        claim_idle_ms: int,
    ) -> None:
        self._redis = redis
        self._shards = {stream: _Shard(stream) for stream in streams}
        self.group = group
        self.name = name
        self._batch_size = batch_size
        self._claim_idle_ms = claim_idle_ms
        self.claimed = 0
        """Entries taken over from other consumers since start."""

    async def next_batch(self) -> list[Entry]:
        """Own pending entries first, then entries claimed from stopped consumers, then new ones;
        never waits."""
        await self._ensure_groups()
        waiting = [shard for shard in self._shards.values() if shard.own_pending]
        if waiting:
            entries = await self._read(waiting, "0")
            still_pending = {stream for stream, _, _ in entries}
            for shard in waiting:
                shard.own_pending = shard.stream in still_pending
            if entries:
                return entries
        now = time.monotonic()
        due = [shard for shard in self._shards.values() if now >= shard.next_claim]
        if due:
            entries = await self._claim(due)
            if entries:
                return entries
        return await self._read(list(self._shards.values()), ">")

    def keep_pending(self, entries: Sequence[Entry]) -> None:
        """These entries stay pending here (not stored, or not acknowledged): read them first."""
        for stream, _, _ in entries:
            self._shards[stream].own_pending = True

    async def ack(self, entries: Sequence[Entry]) -> None:
        """Acknowledge and delete the entries, each shard's atomically."""
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id, _ in entries:
            by_stream.setdefault(stream, []).append(entry_id)
        pipe = self._redis.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.eval(_ACK_AND_DELETE, 1, stream, self.group, *ids)
        await pipe.execute()

    async def _ensure_groups(self) -> None:
        missing = [shard for shard in self._shards.values() if not shard.group_ready]
        if not missing:
            return
        replies = await self._each(
            missing,
            lambda pipe, shard: pipe.xgroup_create(shard.stream, self.group, id="0", mkstream=True),
            tolerated="BUSYGROUP",
        )
        for shard, reply in zip(missing, replies, strict=True):
            shard.group_ready = True
            shard.own_pending = True
            shard.claim_cursor = "0-0"
            if reply is True:
                log.info("created consumer group %r on %r", self.group, shard.stream)

    async def _read(self, shards: list[_Shard], start: str) -> list[Entry]:
        """XREADGROUP of every shard (without BLOCK): one command naming them all on a single
        server; on a cluster, or when a stream lost its group (NOGROUP fails the whole command),
        one command per shard, sent straight to the shard's node."""
        command = ("GROUP", self.group, self.name, "COUNT", self._batch_size, "STREAMS")
        if len(shards) > 1 and isinstance(self._redis, redis.asyncio.Redis):
            streams = [shard.stream for shard in shards]
            try:
                reply = await self._redis.execute_command(
                    "XREADGROUP", *command, *streams, *[start] * len(streams)
                )
            except ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
            else:
                return [
                    (_text(stream), _text(i), fields or {})
                    for stream, items in reply or []
                    for i, fields in items
                ]
        replies = await self._each(
            shards,
            lambda pipe, shard: pipe.execute_command(
                "XREADGROUP", *command, shard.stream, start, **routed(self._redis, shard.stream)
            ),
        )
        entries: list[Entry] = []
        for shard, reply in zip(shards, replies, strict=True):
            for _stream, items in reply or []:
                entries += [(shard.stream, _text(i), fields or {}) for i, fields in items]
        return entries

    async def _claim(self, shards: list[_Shard]) -> list[Entry]:
        """Entries idle too long at another consumer; scans each pending list across rounds."""
        replies = await self._each(
            shards,
            lambda pipe, shard: pipe.xautoclaim(
                shard.stream,
                self.group,
                self.name,
                self._claim_idle_ms,
                start_id=shard.claim_cursor,
                count=self._batch_size,
            ),
        )
        entries: list[Entry] = []
        scanned: list[_Shard] = []
        for shard, reply in zip(shards, replies, strict=True):
            if reply is None:  # NOGROUP: created again next round
                continue
            cursor, items = reply[0], reply[1]  # Redis 7 adds the ids of deleted entries
            shard.claim_cursor = _text(cursor)
            if shard.claim_cursor == "0-0":  # scanned the whole list: wait before the next scan
                shard.next_claim = time.monotonic() + self._claim_idle_ms / 2000
                scanned.append(shard)
            claimed = [(shard.stream, _text(i), fields or {}) for i, fields in items]
            if claimed:
                shard.own_pending = True
                entries += claimed
        if scanned:
            await self._forget_idle_consumers(scanned)
        if entries:
            self.claimed += len(entries)
            log.info("claimed %d usage entries from a consumer that stopped", len(entries))
        return entries

    async def _forget_idle_consumers(self, shards: list[_Shard]) -> None:
        """Drop consumers of stopped control planes (nothing pending, idle for long), so that
        restarts do not pile up names in the groups. A live one that is dropped is recreated by
        its next read; with nothing pending, nothing is lost."""
        replies = await self._each(
            shards, lambda pipe, shard: pipe.xinfo_consumers(shard.stream, self.group)
        )
        pipe = self._redis.pipeline(transaction=False)
        for shard, consumers in zip(shards, replies, strict=True):
            for consumer in consumers or []:
                name = _text(consumer["name"])
                if (
                    name != self.name
                    and consumer["pending"] == 0
                    and consumer["idle"] > FORGET_CONSUMER_IDLE_MS
                ):
                    pipe.xgroup_delconsumer(shard.stream, self.group, name)
        await pipe.execute()

    async def _each(
        self,
        shards: list[_Shard],
        command: Callable[[Any, _Shard], object],
        tolerated: str = "",
    ) -> list[Any]:
        """One command per shard, all in one pipeline; the replies in order. NOGROUP (Redis lost
        the stream) marks that shard for a new group and answers None; an error starting with
        `tolerated` answers None; any other error is raised."""
        pipe = self._redis.pipeline(transaction=False)
        for shard in shards:
            command(pipe, shard)
        replies = await pipe.execute(raise_on_error=False)
        answers: list[Any] = []
        for shard, reply in zip(shards, replies, strict=True):
            if isinstance(reply, ResponseError) and str(reply).startswith("NOGROUP"):
                shard.group_ready = False
                answers.append(None)
            elif (
                isinstance(reply, ResponseError) and tolerated and str(reply).startswith(tolerated)
            ):
                answers.append(None)
            elif isinstance(reply, Exception):
                raise reply
            else:
                answers.append(reply)
        return answers


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
