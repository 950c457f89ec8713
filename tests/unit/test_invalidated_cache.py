"""The read-sharing of `InvalidatedCache` (extproc's key policies and BYOK keys): lookups that
miss together share one Redis read, and a change is never hidden behind a read that began
before it was announced."""

from __future__ import annotations

import asyncio

from extproc.invalidated_cache import InvalidatedCache


class Versions(InvalidatedCache[str]):
    """Each read of a key answers `<key>@<how many reads so far>`, once `release` is set."""

    def __init__(self) -> None:
        super().__init__("redis://127.0.0.1:1/0", "test", "version")  # never connected
        self.reads = 0
        self.release = asyncio.Event()

    async def _read(self, key: str) -> str | None:
        self.reads += 1
        number = self.reads
        await self.release.wait()
        return f"{key}@{number}"

    def _invalidate(self, message: bytes) -> None:
        self._forget(message.decode())


async def test_lookups_that_miss_together_share_one_read() -> None:
    cache = Versions()
    lookups = [asyncio.create_task(cache.get("k")) for _ in range(50)]
    await asyncio.sleep(0)
    cache.release.set()
    assert await asyncio.gather(*lookups) == ["k@1"] * 50
    assert cache.reads == 1


async def test_a_lookup_after_an_invalidation_does_not_join_an_earlier_read() -> None:
    cache = Versions()
    before = asyncio.create_task(cache.get("k"))
    await asyncio.sleep(0)
    cache._invalidate(b"k")  # the control plane announced a change of k
    after = asyncio.create_task(cache.get("k"))
    await asyncio.sleep(0)
    cache.release.set()
    assert await before == "k@1"
    assert await after == "k@2"


async def test_a_caller_that_goes_away_leaves_the_read_to_the_others() -> None:
    cache = Versions()
    leaving = asyncio.create_task(cache.get("k"))
    staying = asyncio.create_task(cache.get("k"))
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    cache.release.set()
    assert await staying == "k@1"
    assert leaving.cancelled()
    assert cache.reads == 1
