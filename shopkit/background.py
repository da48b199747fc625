"""Work a service repeats in the background for as long as it runs (pruning, recovery)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

log = logging.getLogger("shop.background")


@contextlib.asynccontextmanager
async def repeating(
    name: str,
    job: Callable[[], Awaitable[None]],
    interval: float,
    *,
    first_at_once: bool = False,
) -> AsyncIterator[None]:
    """Run ``job`` every ``interval`` seconds while the block lasts (the first time at once
    with ``first_at_once``, else after one interval). A round that fails is logged and the
    next one runs anyway: one bad round (a datastore away) must not end the loop for the
    life of the process."""

    async def forever() -> None:
        if not first_at_once:
            await asyncio.sleep(interval)
        while True:
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; trying again in %s s", name, interval)
            await asyncio.sleep(interval)

    task = asyncio.create_task(forever(), name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
