"""The user service's data layer: the ``users`` table and the login throttle, via asyncpg."""

from __future__ import annotations

import logging
from datetime import UTC
from typing import Any

import asyncpg

from shopkit.errors import Conflict
from shopkit.postgres import FairPool

log = logging.getLogger("shop.user.store")

_COLUMNS = "id, email, password_hash, first_name, last_name, role, created_at"

# The throttle: this many failures for one email within WINDOW are free; after that each
# failure locks the email for LOCK_BASE seconds, doubling, up to LOCK_MAX.
FREE_FAILURES = 5
WINDOW_SECONDS = 15 * 60
LOCK_BASE_SECONDS = 30
LOCK_MAX_SECONDS = 15 * 60


class EmailTaken(Conflict):
    def __init__(self) -> None:
        super().__init__("An account with this email already exists.", code="email_taken")


def user_out(row: asyncpg.Record) -> dict[str, Any]:
    """A stored user as the API shows it: never the hash (see schemas.UserOut)."""
    return {
        "id": row["id"],
        "email": row["email"],
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "role": row["role"],
        "created_at": row["created_at"]
        .astimezone(UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
    }


class UserStore:
    def __init__(self, pool: FairPool) -> None:
        self.pool = pool

    async def create(
        self, *, email: str, password_hash: str, first_name: str, last_name: str
    ) -> asyncpg.Record:
        """A new customer. The unique email decides a race between two registrations."""
        try:
            return await self.pool.fetchrow(
                f"""INSERT INTO users (email, password_hash, first_name, last_name)
                    VALUES ($1, $2, $3, $4) RETURNING {_COLUMNS}""",
                email,
                password_hash,
                first_name,
                last_name,
            )
        except asyncpg.UniqueViolationError:
            raise EmailTaken() from None

    async def by_email(self, email: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE email = $1", email)

    async def by_id(self, user_id: int) -> asyncpg.Record | None:
        return await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE id = $1", user_id)

    async def update(self, user_id: int, changes: dict[str, str]) -> asyncpg.Record | None:
        """Set the given columns (names from our own model, values as parameters)."""
        assignments = ", ".join(f"{column} = ${n}" for n, column in enumerate(changes, start=2))
        return await self.pool.fetchrow(
            f"""UPDATE users SET {assignments}, updated_at = now()
                WHERE id = $1 RETURNING {_COLUMNS}""",
            user_id,
            *changes.values(),
        )

    async def ensure_admin(self, email: str, password_hash_for: Any) -> None:
        """Make sure ``email`` is an admin whose password is the configured one. Safe when
        replicas run it at once: the upsert decides, and the password is only rewritten
        when it does not match."""
        row = await self.pool.fetchrow(
            f"""INSERT INTO users (email, password_hash, role) VALUES ($1, '', 'admin')
                ON CONFLICT (email) DO UPDATE SET role = 'admin'
                RETURNING {_COLUMNS}""",
            email,
        )
        new_hash = await password_hash_for(row["password_hash"] or None)
        if new_hash is not None:
            await self.pool.execute(
                "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1",
                row["id"],
                new_hash,
            )
            log.info("admin account %s made ready", email)

    # -- the login throttle ------------------------------------------------------------------

    async def failures(self, email: str) -> tuple[float, bool]:
        """Seconds until ``email`` may try to log in again (0: now), and whether it has
        failures on record at all."""
        row = await self.pool.fetchrow(
            """SELECT greatest(extract(epoch FROM locked_until - now()), 0) AS locked
               FROM login_failures WHERE email = $1""",
            email,
        )
        if row is None:
            return 0.0, False
        return float(row["locked"] or 0), True

    async def record_failure(self, email: str) -> float:
        """Count a failed login; return the seconds it is now locked for (0: not locked)."""
        failures = await self.pool.fetchval(
            """INSERT INTO login_failures AS f (email, failures, window_started_at)
               VALUES ($1, 1, now())
               ON CONFLICT (email) DO UPDATE SET
                   failures = CASE WHEN f.window_started_at < now() - make_interval(secs => $2)
                                   THEN 1 ELSE f.failures + 1 END,
                   window_started_at = CASE
                       WHEN f.window_started_at < now() - make_interval(secs => $2)
                       THEN now() ELSE f.window_started_at END
               RETURNING failures""",
            email,
            WINDOW_SECONDS,
        )
        if failures <= FREE_FAILURES:
            return 0.0
        lock = min(LOCK_MAX_SECONDS, LOCK_BASE_SECONDS * 2 ** min(failures - FREE_FAILURES - 1, 10))
        await self.pool.execute(
            """UPDATE login_failures SET locked_until = now() + make_interval(secs => $2)
               WHERE email = $1""",
            email,
            float(lock),
        )
        return float(lock)

    async def clear_failures(self, email: str) -> None:
        await self.pool.execute("DELETE FROM login_failures WHERE email = $1", email)
