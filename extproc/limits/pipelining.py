"""Scripts run one at a time, and the ones that arrive meanwhile go to Redis together.

Under load, most of the extproc's cost of a Redis round trip is the round trip itself: packing
the command, a write that wakes Redis, the read that wakes us. A script call that finds no other
in flight is sent at once, alone (one request at a time pays nothing extra). Calls that arrive
while one is in flight queue up; when it returns they all go as one pipeline, and the calls
arriving during that pipeline make the next one (natural batching: no call ever waits for
company, only for the call ahead of it). Each call still gets its own reply or its own error.
`run_many` hands over several calls at once (the settles gathered by `extproc.settlement`), and
may let them wait a little for company: with `may_wait_s`, calls that find Redis free wait that
long for the next `run` and go in its batch, ahead of it. That is how one request's settle
rides with the next request's admission when requests come one at a time: one round trip per
request instead of two, and the settle still lands before the admission that follows it.

Since only one batch is ever in flight, the batches share one connection, taken from the
client's pool once and held: each is written and read on it directly (redis-py's connection
layer) rather than through a redis-py pipeline, whose pool check-out, connection check and
per-command bookkeeping cost more than the round trip itself (about 0.2 ms of CPU per batch,
bench/README.md). The pool's socket timeout bounds each batch as a whole, instead of each write
(a task per write) and each reply. A batch whose held connection fails (most often: Redis closed
it, restarting, since the last batch) is sent once more on a new connection. Should a script
have run before its connection broke, it runs twice, which both scripts take: an admission
replaces its own reservation (keyed by request id; its rate windows may count the request
twice) and a settle is settled once (its `settled` marker).

A queued call whose caller has gone (a cancelled stream) is not sent. A batch that finds a
script missing (Redis restarted empty: NOSCRIPT) loads it and runs the affected calls again.
A Redis Cluster client runs every call on its own (its pipelines split by node, and each owner's
keys may live on another node): there, nothing is batched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis.asyncio
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aigw.redis_client import AsyncRedis


@dataclass(slots=True)
class _Call:
    script: AsyncScript
    keys: Sequence[str]
    args: Sequence[Any]
    reply: asyncio.Future[Any]


class PipelinedScripts:
    def __init__(self, client: AsyncRedis) -> None:
        self._client = client
        self._batching = isinstance(client, redis.asyncio.Redis)
        self._busy = False
        self._queue: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None
        self._connection: redis.asyncio.Connection | None = None
        self._deadline_s: float | None = None
        self._waiting: asyncio.TimerHandle | None = None

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """`script`'s reply to `keys` and `args`; raises what redis-py raises for it."""
        if not self._batching:
            return await script(keys, args)
        call = _Call(script, keys, args, asyncio.get_running_loop().create_future())
        if self._busy:
            self._queue.append(call)
        else:
            self._busy = True
            batch = [waiting for waiting in self._queue if not waiting.reply.done()]
            batch.append(call)
            self._queue = []
            try:
                await self._send(batch)
            finally:
                self._hand_over()
        return await call.reply

    async def run_many(
        self,
        script: AsyncScript,
        calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
        may_wait_s: float = 0.0,
    ) -> list[Any]:
        """`script`'s reply to each `(keys, args)` of `calls`, in order, as one pipeline (or with
        the next one, when a call is in flight, or with the next `run` within `may_wait_s`); a
        call that failed gives its exception in its place instead of raising."""
        if not self._batching:
            return await asyncio.gather(
                *(script(keys, args) for keys, args in calls), return_exceptions=True
            )
        loop = asyncio.get_running_loop()
        batch = [_Call(script, keys, args, loop.create_future()) for keys, args in calls]
        if self._busy or may_wait_s > 0:
            self._queue.extend(batch)
            if not self._busy and self._waiting is None:
                self._waiting = loop.call_later(may_wait_s, self._stop_waiting)
        else:
            self._busy = True
            try:
                await self._send(batch)
            finally:
                self._hand_over()
        try:
            await asyncio.wait([call.reply for call in batch])
        except asyncio.CancelledError:
            for call in batch:
                call.reply.cancel()
            raise
        return [_outcome(call.reply) for call in batch]

    def _stop_waiting(self) -> None:
        """The calls that waited for company go on their own, unless a `run` took them along or
        a batch in flight will hand them over."""
        self._waiting = None
        if not self._busy:
            self._busy = True
            self._hand_over()

    def _hand_over(self) -> None:
        """After a call: the queued ones go next, from a task of their own (the caller that
        just finished does not wait for them), or Redis is free again."""
        if self._queue:
            self._sender = asyncio.get_running_loop().create_task(self._send_queued())
        else:
            self._busy = False

    async def _send_queued(self) -> None:
        try:
            while self._queue:
                batch = [call for call in self._queue if not call.reply.done()]
                self._queue = []
                if batch:
                    await self._send(batch)
        finally:
            for call in self._queue:  # left behind only when this task was cancelled
                call.reply.cancel()
            self._queue = []
            self._busy = False
            self._sender = None

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self._pipeline(batch)
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                for script in {batch[i].script for i in missing}:
                    await self._client.script_load(script.script)
                again = await self._pipeline([batch[i] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except asyncio.CancelledError:
            for call in batch:
                call.reply.cancel()
            raise
        except Exception as exc:  # the pipeline failed as a whole (Redis gone, …): so did each call
            replies = [exc] * len(batch)
        for call, reply in zip(batch, replies, strict=True):
            if call.reply.done():
                continue
            if isinstance(reply, BaseException):
                call.reply.set_exception(reply)
            else:
                call.reply.set_result(reply)

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        """Each call's reply, or its script's error in its place."""
        commands = b"".join(
            [
                hiredis.pack_command(
                    ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
                )
                for call in calls
            ]
        )
        try:
            return await self._exchange(commands, len(calls))
        except RedisConnectionError:
            if self._connection is None:
                raise
            return await self._exchange(commands, len(calls))

    async def _exchange(self, commands: bytes, count: int) -> list[Any]:
        """`count` commands, packed by hiredis, written at once on the held connection, and
        their replies read in order, within one deadline for the whole batch: the pool's socket
        timeout. redis-py disconnects the connection on any failure or cancellation (so no reply
        is left unread on it) and connects it again on the next write."""
        connection = self._connection
        if connection is None:
            connection = await self._client.connection_pool.get_connection()
            self._deadline_s = connection.socket_timeout
            connection.socket_timeout = None
            self._connection = connection
        if self._deadline_s is None:
            return await _write_and_read(connection, commands, count)
        try:
            async with asyncio.timeout(self._deadline_s):
                return await _write_and_read(connection, commands, count)
        except TimeoutError:
            raise RedisTimeoutError(f"Redis did not answer within {self._deadline_s} s") from None


async def _write_and_read(
    connection: redis.asyncio.Connection, commands: bytes, count: int
) -> list[Any]:
    await connection.send_packed_command(commands, False)
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await connection.read_response())
        except ResponseError as error:
            replies.append(error)
    return replies


def _outcome(reply: asyncio.Future[Any]) -> Any:
    """A finished call's reply or exception; one that was never sent (its pipeline's task was
    cancelled, at shutdown) is a connection error, which the caller may retry."""
    if reply.cancelled():
        return ConnectionError("not sent: the pipeline carrying it was cancelled")
    return reply.exception() or reply.result()
