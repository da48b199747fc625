"""bcrypt, off the event loop: hashing on a pool of as many threads as there are cores, with
a bound on how much may wait for it."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import bcrypt

from shopkit.domain import DomainError
from shopkit.metrics import Level

T = TypeVar("T")


class HasherBusy(DomainError):
    """``taken`` hashes are queued or running already: the most the hasher takes on."""


class PasswordHasher:
    """bcrypt releases the GIL, so one thread per core hashes in parallel while the event
    loop keeps answering; more threads than cores would only queue inside the CPU.

    At most ``queue_limit`` hashes are taken on at once (running or waiting): each costs a
    quarter of a second of a core, so a flood of logins (say, for unknown emails) would
    otherwise queue without end and every login would wait behind it. Past the limit the
    answer is at once a 503 ``busy`` with Retry-After, and nothing is recorded. ``taken``
    counts them (a gauge: the bcrypt queue)."""

    def __init__(
        self,
        rounds: int,
        workers: int | None = None,
        queue_limit: int = 32,
        taken: Level | None = None,
    ) -> None:
        self.rounds = rounds
        self.queue_limit = queue_limit
        self._executor = ThreadPoolExecutor(
            max_workers=workers or os.cpu_count() or 2, thread_name_prefix="bcrypt"
        )
        self._dummy_hash: bytes | None = None
        self.taken = taken or Level()

    async def _run(self, function: Callable[..., T], *args: bytes) -> T:
        if self.taken.value >= self.queue_limit:
            raise HasherBusy(taken=self.taken.value)
        self.taken.up()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, function, *args)
        finally:
            self.taken.down()

    async def start(self) -> None:
        # A real hash of nothing anyone knows, to check unknown emails against, so that an
        # unknown email takes as long to refuse as a wrong password.
        self._dummy_hash = (await self.hash(secrets.token_urlsafe(24))).encode()

    async def hash(self, password: str) -> str:
        salt = bcrypt.gensalt(self.rounds)
        hashed = await self._run(bcrypt.hashpw, password.encode(), salt)
        return hashed.decode()

    async def verify(self, password: str, hashed: str | None) -> bool:
        """True when ``password`` matches ``hashed``; with no hash, spend the same time and
        say no."""
        candidate = password.encode()
        if len(candidate) > 72:  # bcrypt refuses these; no stored password is that long
            candidate = candidate[:72]
            hashed = None
        target = hashed.encode() if hashed is not None else self._dummy_hash
        assert target is not None, "start() first"
        matches = await self._run(bcrypt.checkpw, candidate, target)
        return matches and hashed is not None

    def outdated(self, hashed: str) -> bool:
        """True when ``hashed`` was made with another cost than the configured one."""
        # A bcrypt hash reads $2b$<cost>$<salt and hash>.
        parts = hashed.split("$")
        return len(parts) < 4 or parts[2] != f"{self.rounds:02d}"

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
