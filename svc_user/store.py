"""The user service's data layer: the ``users`` table and the login throttle, via asyncpg."""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC
from typing import Any

import asyncpg

from shopkit.errors import Conflict
from shopkit.postgres import FairPool

log = logging.getLogger("shop.user.store")

_COLUMNS = "id, email, password_hash, first_name, last_name, role, created_at, tokens_valid_from"
# Revoking a user's tokens moves tokens_valid_from to $N: the caller's next second (tokens
# issued this second end too), or one past its last value when that is later, so that each
# of several revocations within a second ends the tokens issued between them; but never
# more than REVOKE_AHEAD_SECONDS ahead, well inside the iat leeway every service allows.
# $N is the user service's clock, the one that stamps iat on the tokens it issues.
REVOKE_AHEAD_SECONDS = 30
_REVOKED = "least(greatest(${n}, tokens_valid_from + 1), ${n} + " + str(REVOKE_AHEAD_SECONDS) + ")"

# The throttle: this many failures for one email within WINDOW are free; after that each
# failure locks the email for LOCK_BASE seconds, doubling, up to LOCK_MAX.
FREE_FAILURES = 5
WINDOW_SECONDS = 15 * 60
LOCK_BASE_SECONDS = 30
LOCK_MAX_SECONDS = 15 * 60


def revocation_second() -> int:
    """The first second whose tokens a revocation made now lets live: the next one."""
    return math.floor(time.time()) + 1


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

    async def update(
        self, user_id: int, changes: dict[str, str], *, revoke_tokens: bool = False
    ) -> asyncpg.Record | None:
        """Set the given columns (names from our own model, values as parameters); with
        ``revoke_tokens``, in the same statement end every token issued so far."""
        assignments = [f"{column} = ${n}" for n, column in enumerate(changes, start=2)]
        values: list[object] = list(changes.values())
        if revoke_tokens:
            values.append(revocation_second())
            assignments.append("tokens_valid_from = " + _REVOKED.format(n=len(values) + 1))
        return await self.pool.fetchrow(
            f"""UPDATE users SET {", ".join(assignments)}, updated_at = now()
                WHERE id = $1 RETURNING {_COLUMNS}""",
            user_id,
            *values,
        )

    async def revoke_tokens(self, user_id: int) -> int | None:
        """End every token of the user issued so far; its new tokens_valid_from, or None
        when there is no such user."""
        return await self.pool.fetchval(
            f"""UPDATE users SET tokens_valid_from = {_REVOKED.format(n=2)}
                WHERE id = $1 RETURNING tokens_valid_from""",
            user_id,
            revocation_second(),
        )

    async def tokens_valid_from(self, user_id: int) -> int | None:
        """The first iat the user's tokens may have, or None when there is no such user."""
        return await self.pool.fetchval(
            "SELECT tokens_valid_from FROM users WHERE id = $1", user_id
        )

    async def delete(self, user_id: int) -> bool:
        """Remove the account; its tokens then name no one, at every service."""
        return (
            await self.pool.fetchval("DELETE FROM users WHERE id = $1 RETURNING true", user_id)
            is not None
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
            # A changed password ends the tokens issued with the old one, as a user's would
            # (a new account has none: its tokens_valid_from stays 0).
            await self.pool.execute(
                f"""UPDATE users SET password_hash = $2, updated_at = now(),
                        tokens_valid_from = CASE WHEN password_hash = '' THEN tokens_valid_from
                                                 ELSE {_REVOKED.format(n=3)} END
                    WHERE id = $1""",
                row["id"],
                new_hash,
                revocation_second(),
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
