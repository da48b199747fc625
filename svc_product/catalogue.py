"""What catalogue reads are answered from: a version that every write to the catalogue
bumps, kept in MongoDB so that every replica sees it, and the answers already encoded for
the version they were made at.

A read asks the version (one small read by id, shared by every request that arrives while
it runs: shopkit.coalesce.FreshRun) and, if it has the answer made at that version, sends
it, or a 304 when the client holds it already, without querying or counting anything. A
write bumps the version after it is done and before it answers, so whoever asks after a
write's answer is answered from the write on. An answer is made again after
MAX_AGE_SECONDS anyway: a writer that died between its write and its bump cannot leave a
stale answer for longer than that.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from shopkit.coalesce import FreshRun
from shopkit.responses import Encoded

VERSION_ID = "catalogue"
MAX_AGE_SECONDS = 30.0
BUDGET_BYTES = 32 * 1024 * 1024  # of encoded answers kept, per process


class CatalogueVersion:
    """The catalogue's version: a counter in the ``meta`` collection."""

    def __init__(self, meta: AsyncCollection) -> None:
        self.meta = meta
        self.read = FreshRun(self._read, "catalogue-version-read")
        self.bump = FreshRun(self._bump, "catalogue-version-bump")

    async def _read(self) -> int:
        doc = await self.meta.find_one({"_id": VERSION_ID})
        return int(doc["version"]) if doc else 0

    async def _bump(self) -> None:
        await self.meta.update_one({"_id": VERSION_ID}, {"$inc": {"version": 1}}, upsert=True)

    async def close(self) -> None:
        await self.read.close()
        await self.bump.close()


@dataclass(slots=True)
class _Answer:
    version: int
    made_at: float
    encoded: Encoded


class CatalogueAnswers:
    """Encoded answers by what was asked, each for the version it was made at; the least
    recently used go first once they hold more than ``budget`` bytes."""

    def __init__(
        self,
        version: CatalogueVersion,
        *,
        budget: int = BUDGET_BYTES,
        max_age: float = MAX_AGE_SECONDS,
    ) -> None:
        self.version = version
        self.budget = budget
        self.max_age = max_age
        self._answers: OrderedDict[Hashable, _Answer] = OrderedDict()
        self._size = 0
        self._making: dict[tuple[int, Hashable], asyncio.Task[Encoded]] = {}
        self.made = 0  # answers made: one query each (tests count them)

    async def get(self, key: Hashable, make: Callable[[], Awaitable[Any]]) -> Encoded:
        """The answer to ``key`` at the current version; ``make`` gives its body when
        there is none yet (one call however many ask at once)."""
        version = await self.version.read()
        now = asyncio.get_running_loop().time()
        kept = self._answers.get(key)
        if kept is not None and kept.version == version and now - kept.made_at < self.max_age:
            self._answers.move_to_end(key)
            return kept.encoded
        making = self._making.get((version, key))
        if making is None:
            # Its own task: a request that goes away does not take the answer from the
            # others waiting for it.
            making = asyncio.create_task(self._make(version, key, make, now))
            self._making[(version, key)] = making
            making.add_done_callback(lambda done: self._made(version, key, done))
        return await asyncio.shield(making)

    async def _make(
        self, version: int, key: Hashable, make: Callable[[], Awaitable[Any]], now: float
    ) -> Encoded:
        self.made += 1
        encoded = Encoded.of(await make())
        self._keep(key, _Answer(version, now, encoded))
        return encoded

    def _made(self, version: int, key: Hashable, done: asyncio.Task[Encoded]) -> None:
        del self._making[(version, key)]
        if not done.cancelled():
            done.exception()  # looked at, even when every waiter went away

    def _keep(self, key: Hashable, answer: _Answer) -> None:
        old = self._answers.pop(key, None)
        if old is not None:
            self._size -= len(old.encoded.raw)
            if old.version > answer.version:  # made by a slower reader of an older version
                answer = old
        self._answers[key] = answer
        self._size += len(answer.encoded.raw)
        while self._size > self.budget and self._answers:
            _, dropped = self._answers.popitem(last=False)
            self._size -= len(dropped.encoded.raw)
