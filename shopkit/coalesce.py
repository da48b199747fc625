"""One datastore call shared by every caller that is waiting for it, without staleness."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def _retrieved(future: asyncio.Future[object]) -> None:
    # Every waiter may have gone (cancelled); the outcome is still looked at, so an error
    # is not reported as "never retrieved".
    if not future.cancelled():
        future.exception()


class FreshRun(Generic[T]):
    """Calls ``run`` for its callers, each caller getting the result of a call that
    *started after it asked*: so the answer is as fresh as a call of its own (a read sees
    every write finished before it asked; a bump counts every write finished before it),
    yet one call serves every caller that asked while the previous one ran. Under load a
    thousand callers a second cost a few calls, not a thousand."""

    def __init__(self, run: Callable[[], Awaitable[T]], name: str) -> None:
        self._run = run
        self._name = name
        self._next: asyncio.Future[T] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def __call__(self) -> T:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            self._next.add_done_callback(_retrieved)
        waiting = self._next
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._serve(), name=self._name)
        return await asyncio.shield(waiting)

    async def _serve(self) -> None:
        while self._next is not None:
            # Everyone who asked before this point asked before the call below starts.
            waiting, self._next = self._next, None
            try:
                result = await self._run()
            except asyncio.CancelledError:
                waiting.cancel()
                raise
            except Exception as exc:  # each waiter gets it, as from a call of its own
                waiting.set_exception(exc)
            else:
                waiting.set_result(result)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._next is not None:
            self._next.cancel()
