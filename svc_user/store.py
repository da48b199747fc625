"""The user service's data layer: the ``users`` table and the login limits, via asyncpg."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from shopkit.address import ADDRESS_FIELDS
from shopkit.domain import DomainError, country_names, timestamp
from shopkit.postgres import FairPool
from svc_user.schemas import AddressOut, UserOut

log = logging.getLogger("shop.user.store")

_COLUMNS = "id, email, password_hash, first_name, last_name, role, created_at, tokens_valid_from"
# Revoking a user's tokens moves tokens_valid_from to $N: the caller's next second (tokens
# issued this second end too), or one past its last value when that is later, so that each
# of several revocations within a second ends the tokens issued between them; but never
# more than REVOKE_AHEAD_SECONDS ahead, well inside the iat leeway every service allows.
# $N is the user service's clock, the one that stamps iat on the tokens it issues.
REVOKE_AHEAD_SECONDS = 30
_REVOKED = "least(greatest(${n}, tokens_valid_from + 1), ${n} + " + str(REVOKE_AHEAD_SECONDS) + ")"

# The login limits (README "Login limits"; these are the defaults of UserSettings LOGIN_*).
# Why three, and why these numbers:
# - A lock per email alone lets any stranger keep any account locked with one guess per
#   lock period, and lets one client spray a password over unlimited emails. So the tight
#   limit is per email *and client address* (FREE_FAILURES): guesses from one place lock
#   that email for that place only, and its owner elsewhere is not held.
# - Spraying is limited per address over every email (ADDRESS_FREE_FAILURES): high enough
#   for a shared NAT's honest typos, low enough that a sprayer gets a few dozen guesses a
#   window instead of unlimited ones.
# - Guesses spread over many addresses are limited per email from everywhere
#   (ACCOUNT_FREE_FAILURES), far above what one address can reach (5 free plus a few
#   after locks per window), so only distributed guessing meets it.
# - A known pair, an account and an address it logged in or registered from within
#   KNOWN_ADDRESS_SECONDS, is not held by the account-wide limit: a distributed attack costs
#   the owner nothing where it usually logs in. It is held by the address-wide one: letting
#   it through there would tell a sprayer at a shared address which emails are used there
#   (migration 0003 weighs it).
# Past its free failures a limit locks for LOCK_BASE seconds, doubling with each further
# failure up to LOCK_MAX; counts are forgotten WINDOW seconds after their first.
FREE_FAILURES = 5
ADDRESS_FREE_FAILURES = 30
ACCOUNT_FREE_FAILURES = 100
WINDOW_SECONDS = 15 * 60
LOCK_BASE_SECONDS = 30
LOCK_MAX_SECONDS = 15 * 60
KNOWN_ADDRESS_SECONDS = 90 * 24 * 3600
# How often each replica forgets counts whose window has passed.
PRUNE_INTERVAL_SECONDS = 300

# Which limit a refusal names when several hold it for as long: this address's own first.
LIMIT_PRECEDENCE = ("account", "pair", "address")
LoginOutcome = Literal["failed", "succeeded", "unchecked"]


@dataclass(frozen=True)
class LoginLimits:
    """The numbers the login limits run on (UserSettings.login_limits())."""

    free_failures: int = FREE_FAILURES
    address_free_failures: int = ADDRESS_FREE_FAILURES
    account_free_failures: int = ACCOUNT_FREE_FAILURES
    window_seconds: float = WINDOW_SECONDS
    lock_seconds: float = LOCK_BASE_SECONDS
    lock_max_seconds: float = LOCK_MAX_SECONDS
    known_address_seconds: float = KNOWN_ADDRESS_SECONDS

    def free(self, scope: str) -> int:
        return {
            "account": self.account_free_failures,
            "address": self.address_free_failures,
            "pair": self.free_failures,
        }[scope]

    def free_by_scope(self) -> list[int]:
        """The free failures in the order the SQL functions take them."""
        return [self.account_free_failures, self.address_free_failures, self.free_failures]

    def lock_for(self, failures: int, free: int) -> float:
        """How long ``failures`` in a window lock for, past ``free`` of them (as SQL does)."""
        if failures < free:
            return 0.0
        return min(self.lock_max_seconds, self.lock_seconds * 2 ** min(failures - free, 30))


# A btree entry holds at most about 2.7 kB, and NFKC can stretch a 320-character login email
# to 10 kB. No such email belongs to an account (registration takes 254 characters), so it is
# counted under its digest instead.
_LONGEST_EMAIL_KEY = 512


def _email_key(email: str) -> str:
    raw = email.encode()
    if len(raw) <= _LONGEST_EMAIL_KEY:
        return email
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class LoginLimited(Exception):
    """A login refused before its password is checked: ``scope`` is the limit that holds it
    ("pair": this email from this address, "address": this address for every email,
    "account": this email from unknown addresses), for ``seconds``."""

    def __init__(self, scope: str, seconds: float) -> None:
        super().__init__(f"login limited by {scope} for {seconds:.0f} s")
        self.scope = scope
        self.seconds = seconds


def revocation_second() -> int:
    """The first second whose tokens a revocation made now lets live: the next one."""
    return math.floor(time.time()) + 1


class EmailTaken(DomainError):
    """An account with this email exists already."""


class AccountGone(DomainError):
    """The account the caller's token names no longer exists."""


class AddressNotFound(DomainError):
    """No address ``id`` of this customer (another's is not found either)."""


class TooManyAddresses(DomainError):
    """The customer keeps ``limit`` addresses already."""


_ADDRESS_COLUMNS = "id, " + ", ".join(ADDRESS_FIELDS) + ", created_at, updated_at"


def address_out(row: asyncpg.Record) -> AddressOut:
    """A stored address as the API shows it (its shape: schemas.AddressOut)."""
    return {
        "id": row["id"],
        **{field: row[field] for field in ADDRESS_FIELDS},  # type: ignore[typeddict-item]
        "country_name": country_names().get(row["country"], row["country"]),
        "created_at": timestamp(row["created_at"]),
        "updated_at": timestamp(row["updated_at"]),
    }


def user_out(row: asyncpg.Record) -> UserOut:
    """A stored user as the API shows it: never the hash (its shape: schemas.UserOut)."""
    return {
        "id": row["id"],
        "email": row["email"],
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "role": row["role"],
        "created_at": timestamp(row["created_at"]),
    }


class UserStore:
    def __init__(self, pool: FairPool, login_limits: LoginLimits | None = None) -> None:
        self.pool = pool
        self.login_limits = login_limits or LoginLimits()

    async def create(
        self, *, email: str, password_hash: str, first_name: str, last_name: str, address: str
    ) -> asyncpg.Record:
        """A new customer, registered from ``address`` (a limit key). The unique email decides
        a race between two registrations. In the same statement ``address`` becomes a known
        address of the account, as a login from there would make it: otherwise a customer
        who has only registered would have none, and strangers could hold it everywhere
        (README "Login limits")."""
        try:
            return await self.pool.fetchrow(
                f"""WITH created AS (
                        INSERT INTO users (email, password_hash, first_name, last_name)
                        VALUES ($1, $2, $3, $4) RETURNING {_COLUMNS}
                    ), remembered AS (
                        SELECT remember_login_address($5::text, $6::text) FROM created
                    )
                    SELECT created.* FROM created, remembered""",
                email,
                password_hash,
                first_name,
                last_name,
                _email_key(email),
                address,
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
        if not changes and not revoke_tokens:  # nothing to set: the account as it is
            return await self.by_id(user_id)
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
        """Remove the account; its tokens then name no one, at every service. Its known
        addresses go with it: whoever registers the email next must not inherit them."""
        async with self.pool.acquire() as connection, connection.transaction():
            email = await connection.fetchval(
                "DELETE FROM users WHERE id = $1 RETURNING email", user_id
            )
            if email is None:
                return False
            await connection.execute(
                "DELETE FROM login_known_addresses WHERE email = $1", _email_key(email)
            )
            return True

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

    # -- delivery addresses ------------------------------------------------------------------

    async def addresses_of(self, user_id: int) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            f"SELECT {_ADDRESS_COLUMNS} FROM addresses WHERE user_id = $1 ORDER BY id", user_id
        )

    async def address_of(self, user_id: int, address_id: int) -> asyncpg.Record:
        row = await self.pool.fetchrow(
            f"SELECT {_ADDRESS_COLUMNS} FROM addresses WHERE id = $1 AND user_id = $2",
            address_id,
            user_id,
        )
        if row is None:
            raise AddressNotFound(id=address_id)
        return row

    async def add_address(self, user_id: int, fields: dict[str, str], limit: int) -> asyncpg.Record:
        """A new address of the user; or, when it keeps one with every field the same, that
        one (a form sent twice keeps one address); or TooManyAddresses when it keeps
        ``limit`` already. Looked up and counted under the user's row lock, in statements
        after the lock is held (one statement would look from its own snapshot, taken
        before the lock, and let a race past the limit, or in twice)."""
        values = [fields[field] for field in ADDRESS_FIELDS]
        async with self.pool.acquire() as connection, connection.transaction():
            owner = await connection.fetchval(
                "SELECT id FROM users WHERE id = $1 FOR UPDATE", user_id
            )
            if owner is None:
                raise AccountGone()
            same = " AND ".join(f"{field} = ${n}" for n, field in enumerate(ADDRESS_FIELDS, 2))
            kept = await connection.fetchrow(
                f"""SELECT {_ADDRESS_COLUMNS} FROM addresses WHERE user_id = $1 AND {same}
                    ORDER BY id LIMIT 1""",
                user_id,
                *values,
            )
            if kept is not None:
                return kept
            count = await connection.fetchval(
                "SELECT count(*) FROM addresses WHERE user_id = $1", user_id
            )
            if count >= limit:
                raise TooManyAddresses(limit=limit)
            placeholders = ", ".join(f"${n}" for n in range(2, len(values) + 2))
            return await connection.fetchrow(
                f"""INSERT INTO addresses (user_id, {", ".join(ADDRESS_FIELDS)})
                    VALUES ($1, {placeholders}) RETURNING {_ADDRESS_COLUMNS}""",
                user_id,
                *values,
            )

    async def replace_address(
        self, user_id: int, address_id: int, fields: dict[str, str]
    ) -> asyncpg.Record:
        assignments = ", ".join(f"{field} = ${n}" for n, field in enumerate(ADDRESS_FIELDS, 3))
        row = await self.pool.fetchrow(
            f"""UPDATE addresses SET {assignments}, updated_at = now()
                WHERE id = $1 AND user_id = $2 RETURNING {_ADDRESS_COLUMNS}""",
            address_id,
            user_id,
            *(fields[field] for field in ADDRESS_FIELDS),
        )
        if row is None:
            raise AddressNotFound(id=address_id)
        return row

    async def remove_address(self, user_id: int, address_id: int) -> None:
        removed = await self.pool.fetchval(
            "DELETE FROM addresses WHERE id = $1 AND user_id = $2 RETURNING id",
            address_id,
            user_id,
        )
        if removed is None:
            raise AddressNotFound(id=address_id)

    # -- the login limits ---------------------------------------------------------------------

    async def take_login_attempt(self, email: str, address: str) -> None:
        """Take one password check for ``email`` from ``address`` (a limit key: see
        shopkit.client_address.limit_key) before it runs, or raise LoginLimited. One call
        checks every limit and counts the check as a failure until it is finished, under
        row locks in PostgreSQL: N guesses at once, at any replicas, get exactly the checks
        the limits allow. Every taken attempt must be finished (finish_login_attempt)."""
        limits = self.login_limits
        rows = await self.pool.fetch(
            "SELECT * FROM take_login_attempt($1, $2, $3, $4, $5)",
            _email_key(email),
            address,
            limits.free_by_scope(),
            float(limits.window_seconds),
            float(limits.known_address_seconds),
        )
        if rows[0]["taken"]:
            return
        waits = [
            (
                # Locked: until the lock ends. Full of checks under way: as long as the lock
                # they will set if they all fail, the likely case.
                float(row["locked_seconds"])
                or limits.lock_for(row["failures"] + row["pending"], limits.free(row["scope"])),
                LIMIT_PRECEDENCE.index(row["scope"]),
                row["scope"],
            )
            for row in rows
            if row["refused"]
        ]
        seconds, _, scope = max(waits)
        raise LoginLimited(scope, seconds)

    async def finish_login_attempt(self, email: str, address: str, outcome: LoginOutcome) -> None:
        """Finish an attempt taken by take_login_attempt: "failed" keeps it counted (and may
        lock), "succeeded" clears this email's count from this address and remembers the
        address, "unchecked" (no password was checked) gives it back."""
        limits = self.login_limits
        await self.pool.execute(
            "SELECT finish_login_attempt($1, $2, $3, $4, $5, $6)",
            _email_key(email),
            address,
            outcome,
            limits.free_by_scope(),
            float(limits.lock_seconds),
            float(limits.lock_max_seconds),
        )

    async def prune_login_attempts(self) -> int:
        """Forget counts whose window has passed and that lock nothing, and known addresses
        not seen for long; return how many rows went."""
        limits = self.login_limits
        attempts = await self.pool.execute(
            """DELETE FROM login_attempts
               WHERE coalesce(locked_until < now(), true)
                 AND window_started_at < now() - make_interval(secs => $1)""",
            float(limits.window_seconds),
        )
        known = await self.pool.execute(
            """DELETE FROM login_known_addresses
               WHERE last_login_at < now() - make_interval(secs => $1)""",
            float(limits.known_address_seconds),
        )
        return int(attempts.split()[-1]) + int(known.split()[-1])

    async def forget_old_login_counts(self) -> None:
        """prune_login_attempts, said in the log: run every PRUNE_INTERVAL_SECONDS, so that
        a spray over millions of emails does not grow the table for good."""
        forgotten = await self.prune_login_attempts()
        if forgotten:
            log.info("forgot %d login counts past their window", forgotten)
