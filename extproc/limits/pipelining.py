"""Scripts run one at a time, and the ones that arrive meanwhile go to Redis together.

Under load, most of the extproc's cost of a Redis round trip is the round trip itself: packing
the command, a write that wakes Redis, the read that wakes us. A script call that finds no other
in flight is sent at once, alone, as before (one request at a time pays nothing extra). Calls
that arrive while one is in flight queue up; when it returns they all go as one pipeline, and
the calls arriving during that pipeline make the next one (natural batching: no call ever waits
for company, only for the call ahead of it). Each call still gets its own reply or its own error.
`run_many` hands over several calls at once (the settles gathered by `extproc.settlement`).

A queued call whose caller has gone (a cancelled stream) is not sent. A pipeline that finds a
script missing (Redis restarted empty: NOSCRIPT) loads it and runs the affected calls again.
A Redis Cluster client runs every call on its own (its pipelines split by node, and each owner's
keys may live on another node): there, nothing is batched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

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

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """`script`'s reply to `keys` and `args`; raises what redis-py raises for it."""
        if not self._batching:
            return await script(keys, args)
        if self._busy:
            reply = asyncio.get_running_loop().create_future()
            self._queue.append(_Call(script, keys, args, reply))
            return await reply
        self._busy = True
        try:
            return await script(keys, args)
        finally:
            self._hand_over()

    async def run_many(
        self, script: AsyncScript, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """`script`'s reply to each `(keys, args)` of `calls`, in order, as one pipeline (or with
        the next one, when a call is in flight); a call that failed gives its exception in its
        place instead of raising."""
        if not self._batching:
            return await asyncio.gather(
                *(script(keys, args) for keys, args in calls), return_exceptions=True
            )
        loop = asyncio.get_running_loop()
        batch = [_Call(script, keys, args, loop.create_future()) for keys, args in calls]
        if self._busy:
            self._queue.extend(batch)
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
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        return await pipe.execute(raise_on_error=False)


def _outcome(reply: asyncio.Future[Any]) -> Any:
    """A finished call's reply or exception; one that was never sent (its pipeline's task was
    cancelled, at shutdown) is a connection error, which the caller may retry."""
    if reply.cancelled():
        return ConnectionError("not sent: the pipeline carrying it was cancelled")
    return reply.exception() or reply.result()
