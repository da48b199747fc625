"""Work a service repeats in the background for as long as it runs (pruning, recovery, settling)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

log = logging.getLogger("shop.background")


@contextlib.asynccontextmanager
async def repeating(
    name: str,
    job: Callable[[], Awaitable[None]],
    interval: float,
    *,
    first_at_once: bool = False,
    passing: tuple[type[Exception], ...] = (),
) -> AsyncIterator[None]:
    """Run ``job`` every ``interval`` seconds while the block lasts (the first time at once
    with ``first_at_once``, else after one interval). A round that fails is logged and the
    next one runs anyway: one bad round (a datastore away) must not end the loop for the
    life of the process. A ``passing`` error (the datastore away) is one warning line, any
    other a traceback."""

    async def forever() -> None:
        if not first_at_once:
            await asyncio.sleep(interval)
        while True:
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except passing as exc:
                log.warning("%s failed (%s); trying again in %s s", name, exc, interval)
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


def every(
    interval: float,
    name: str,
    job: Callable[[web.Application], Awaitable[object]],
    *,
    first_at_once: bool = False,
    passing: tuple[type[Exception], ...] = (),
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx that runs ``job(app)`` every ``interval`` seconds while the app lives
    (see ``repeating``); added after the contexts that open what the job uses."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async def round_() -> None:
            await job(app)

        async with repeating(name, round_, interval, first_at_once=first_at_once, passing=passing):
            yield

    ctx.__name__ = f"every_{name.replace('-', '_')}"
    return ctx
