"""The user service's routes: thin handlers over the store and the password hasher."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import asyncpg
from aiohttp import web
from prometheus_client import Counter

from shopkit.auth import Identity, issue_token
from shopkit.client_address import client_from_trusted, limit_key
from shopkit.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Refusal,
    Refusals,
    ServiceBusy,
    TooManyRequests,
    Unauthorized,
)
from shopkit.keys import IDENTITY, SETTINGS
from shopkit.metrics import Family, Metrics
from shopkit.openapi import endpoint
from shopkit.parsing import parse_id
from shopkit.responses import ok
from svc_user.keys import HASHER, LOGIN_COUNTS, STORE
from svc_user.passwords import HasherBusy
from svc_user.schemas import (
    MAX_ADDRESSES,
    AccountRemoval,
    AccountRemoved,
    AddressBody,
    AddressList,
    AddressOut,
    AddressPath,
    AddressRemoved,
    AuthOut,
    LoggedOut,
    LoginBody,
    ProfileChanged,
    ProfileUpdate,
    RegisterBody,
    TokenStatusOut,
    UserAddressPath,
    UserOut,
    UserPath,
)
from svc_user.store import (
    REVOKE_AHEAD_SECONDS,
    AccountGone,
    AddressNotFound,
    EmailTaken,
    LoginLimited,
    TooManyAddresses,
    address_out,
    user_out,
)

routes = web.RouteTableDef()

# How a client hears what the store refuses.
REFUSALS: Refusals = {
    EmailTaken: Refusal(Conflict, "email_taken", "An account with this email already exists."),
    # A valid signature for an account that is gone: the token no longer names anyone.
    AccountGone: Refusal(
        Unauthorized, "invalid_token", "The account this token names no longer exists."
    ),
    AddressNotFound: Refusal(NotFound, "address_not_found", "There is no address {id} of yours."),
    TooManyAddresses: Refusal(
        Conflict,
        "too_many_addresses",
        "You keep {limit} addresses already, the most there can be: change or remove one.",
        keys=("limit",),
    ),
    HasherBusy: Refusal(
        ServiceBusy,
        "busy",
        "Too many passwords are being checked right now; try again in a moment.",
        headers={"Retry-After": "1"},
    ),
}


def _token_for(request: web.Request, row: asyncpg.Record) -> str:
    """A token for the stored user ``row``: issued no earlier than its tokens_valid_from, so
    that a login right after a logout (in the same second) is not born revoked.

    A revocation moves tokens_valid_from past every iat issued so far, but never more than
    REVOKE_AHEAD_SECONDS ahead of now (so logouts in a loop cannot push new tokens past
    every service's iat leeway). So no token is issued with an iat that far ahead: one could
    outlive a revocation made in the same second. Only a burst of dozens of logouts or
    password changes in half a minute gets there; its next login waits a few seconds."""
    ahead = row["tokens_valid_from"] - math.floor(time.time()) - REVOKE_AHEAD_SECONDS
    if ahead > 0:
        raise TooManyRequests(
            f"This account was logged out too many times just now; log in again in {ahead} "
            "seconds.",
            code="too_many_sessions",
            headers={"Retry-After": str(ahead)},
        )
    secret = request.app[SETTINGS].jwt_secret.get_secret_value()
    return issue_token(
        secret,
        sub=str(row["id"]),
        email=row["email"],
        role=row["role"],
        not_before=row["tokens_valid_from"],
    )


def _client_key(request: web.Request) -> str:
    """The key the login limits count this request's client under (README "Login limits")."""
    return limit_key(client_from_trusted(request, request.app[SETTINGS].trusted_proxies))


@routes.post("/api/users/register")
@endpoint(
    "Create a customer account and log it in",
    body=RegisterBody,
    response=AuthOut,
    status=201,
    errors=(409, 503),
)
async def register(request: web.Request, body: RegisterBody) -> web.Response:
    password_hash = await request.app[HASHER].hash(body.password)
    row = await request.app[STORE].create(
        email=body.email,
        password_hash=password_hash,
        first_name=body.first_name,
        last_name=body.last_name,
        # Registering logs in: its address is known to the login limits, as a login's is.
        address=_client_key(request),
    )
    return ok({"user": user_out(row), "token": _token_for(request, row)}, status=201)


# What a person can do about each limit; none says whether the email has an account (the
# limits count unknown emails the same way).
_LIMITED = {
    "pair": "Too many failed logins for this email from your network address",
    "address": "Too many failed logins from your network address, whichever the email",
    "account": "Too many failed logins for this email from many network addresses",
}
_LIMITED_ADVICE = {
    "account": "; try again in {wait} seconds, or from a network address where you have "
    "logged in to this account before.",
}


@dataclass(frozen=True, slots=True)
class LoginCounts:
    """What the login route counts (metrics): failed logins, and logins the limits held."""

    failed: Counter
    throttled: Family[Counter]  # by the limit that held it (LoginLimited.scope)

    @classmethod
    def declare(cls, metrics: Metrics) -> LoginCounts:
        return cls(
            failed=metrics.counter(
                "shop_logins_failed", "Logins refused for a wrong email or password"
            ).labels(),
            throttled=metrics.counter(
                "shop_logins_throttled",
                "Logins refused by a login limit before any password check, by its scope",
                "scope",
                known=_LIMITED,
            ),
        )


def _too_many(limited: LoginLimited) -> TooManyRequests:
    wait = max(1, math.ceil(limited.seconds))
    advice = _LIMITED_ADVICE.get(limited.scope, "; try again in {wait} seconds.")
    return TooManyRequests(
        _LIMITED[limited.scope] + advice.format(wait=wait),
        code="too_many_attempts",
        headers={"Retry-After": str(wait)},
    )


@routes.post("/api/users/login")
@endpoint(
    "Log in with email and password",
    body=LoginBody,
    response=AuthOut,
    errors=(401, 429, 503),
    description="An unknown email and a wrong password answer alike. Failed logins are "
    "limited (429 too_many_attempts, with Retry-After) per email from one client address, "
    "per client address over every email, and per email from every address, across every "
    "replica; each attempt is counted before its password is checked. An address the "
    "account registered or logged in from lately is not held by the last of these "
    "(README: Login limits). 503 busy (with Retry-After): more password checks are under way than "
    "BCRYPT_QUEUE_LIMIT allows; it counts toward no limit.",
)
async def login(request: web.Request, body: LoginBody) -> web.Response:
    store, hasher = request.app[STORE], request.app[HASHER]
    email = body.email.strip().lower()
    address = _client_key(request)
    try:
        await store.take_login_attempt(email, address)
    except LoginLimited as limited:
        request.app[LOGIN_COUNTS].throttled.labels(limited.scope).inc()
        raise _too_many(limited) from None
    try:
        row = await store.by_email(email)
        matches = await hasher.verify(body.password, row["password_hash"] if row else None)
    except BaseException:
        # No password was checked (bcrypt busy, the database gone, the request cancelled):
        # the attempt counts for nothing.
        await store.finish_login_attempt(email, address, "unchecked")
        raise
    if not matches:
        request.app[LOGIN_COUNTS].failed.inc()
        await store.finish_login_attempt(email, address, "failed")
        raise Unauthorized("The email or password is incorrect.", code="invalid_credentials")
    await store.finish_login_attempt(email, address, "succeeded")
    if hasher.outdated(row["password_hash"]):
        # BCRYPT_ROUNDS changed since this hash was made: bring it up to date now that we
        # have the password, so every account costs the same to check (no timing tell).
        await store.update(row["id"], {"password_hash": await hasher.hash(body.password)})
    return ok({"user": user_out(row), "token": _token_for(request, row)})


async def _own_account(request: web.Request, identity: Identity) -> asyncpg.Record:
    if identity.user_number is None:  # a service's token names no user
        raise Forbidden("Only a user's own token reaches a profile.", code="not_a_user")
    row = await request.app[STORE].by_id(identity.user_number)
    if row is None:
        raise AccountGone()
    return row


async def _check_current_password(request: web.Request, row: asyncpg.Record, password: str) -> None:
    """403 unless ``password`` is the account's current one (before changing or removing it)."""
    if not await request.app[HASHER].verify(password, row["password_hash"]):
        raise Forbidden("The current password is incorrect.", code="wrong_password")


@routes.get("/api/users/profile")
@endpoint("The caller's own account", response=UserOut, roles=(), errors=(403,))
async def get_profile(request: web.Request) -> web.Response:
    return ok(user_out(await _own_account(request, request[IDENTITY])))


@routes.put("/api/users/profile")
@endpoint(
    "Change names, or the password (with current_password)",
    body=ProfileUpdate,
    response=ProfileChanged,
    roles=(),
    errors=(403, 503),
    description="A new password ends every token issued before it, at every service within "
    "TOKEN_STATUS_CACHE_SECONDS (this one at once); the answer then carries `token`, a "
    "fresh one for the client that made the change.",
)
async def update_profile(request: web.Request, body: ProfileUpdate) -> web.Response:
    row = await _own_account(request, request[IDENTITY])
    changes = {
        field: getattr(body, field)
        for field in ("first_name", "last_name")
        if field in body.model_fields_set
    }
    new_password = "password" in body.model_fields_set
    if new_password:
        hasher = request.app[HASHER]
        await _check_current_password(request, row, body.current_password)
        changes["password_hash"] = await hasher.hash(body.password)
    updated = await request.app[STORE].update(row["id"], changes, revoke_tokens=new_password)
    if updated is None:
        raise AccountGone()
    if new_password:
        try:
            token = _token_for(request, updated)
        except TooManyRequests:  # the change is made; this client logs in again later
            token = None
        return ok({**user_out(updated), "token": token})
    return ok(user_out(updated))


@routes.post("/api/users/logout")
@endpoint(
    "Log out everywhere: end every token of the caller issued so far",
    response=LoggedOut,
    roles=(),
    errors=(403, 503),
    description="Every token of this user issued before now (this one included) stops "
    "working at every service within TOKEN_STATUS_CACHE_SECONDS (default 2; the user "
    "service at once). A login afterwards, even in the same second, gets a working token.",
)
async def logout(request: web.Request) -> web.Response:
    row = await _own_account(request, request[IDENTITY])
    if await request.app[STORE].revoke_tokens(row["id"]) is None:
        raise AccountGone()
    return ok({"logged_out": True})


@routes.delete("/api/users/profile")
@endpoint(
    "Remove the caller's own account (with current_password)",
    body=AccountRemoval,
    response=AccountRemoved,
    roles=(),
    errors=(403, 503),
    description="Every token naming the account stops working at every service within "
    "TOKEN_STATUS_CACHE_SECONDS. Its orders are kept (they are the shop's records); its "
    "cart expires. 403 wrong_password; 403 admin_account: an admin account is not removed "
    "this way.",
)
async def remove_account(request: web.Request, body: AccountRemoval) -> web.Response:
    row = await _own_account(request, request[IDENTITY])
    if row["role"] == "admin":
        raise Forbidden("An admin account cannot remove itself.", code="admin_account")
    await _check_current_password(request, row, body.current_password)
    if not await request.app[STORE].delete(row["id"]):
        raise AccountGone()
    return ok({"id": row["id"], "deleted": True})


@routes.get("/internal/users/{id}/token-status")
@endpoint(
    "Internal: the first iat a user's tokens may have (service tokens only)",
    path=UserPath,
    response=TokenStatusOut,
    roles=("service",),
    errors=(404,),
    description="How every other service learns whether a user's token was revoked: a token "
    "is good only if its iat >= tokens_valid_from. 404 user_not_found: no such user (its "
    "tokens name no one). Not under /api/, so the gateway never routes it.",
)
async def token_status(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    user_id = parse_id(raw)
    valid_from = None if user_id is None else await request.app[STORE].tokens_valid_from(user_id)
    if valid_from is None:
        raise NotFound(f"There is no user {raw!r}.", code="user_not_found")
    return ok({"user_id": user_id, "tokens_valid_from": valid_from})


# -- delivery addresses --------------------------------------------------------------------


def _own_id(identity: Identity) -> int:
    if identity.user_number is None:  # a service's token names no user
        raise Forbidden("Only a user's own token reaches its addresses.", code="not_a_user")
    return identity.user_number


def _address_id(request: web.Request, key: str = "id") -> int:
    raw = request.match_info[key]
    address_id = parse_id(raw)
    if address_id is None:
        raise NotFound(f"There is no address {raw!r}.", code="address_not_found")
    return address_id


@routes.get("/api/users/addresses")
@endpoint("The caller's delivery addresses", response=AddressList, roles=(), errors=(403,))
async def list_addresses(request: web.Request) -> web.Response:
    rows = await request.app[STORE].addresses_of(_own_id(request[IDENTITY]))
    return ok({"addresses": [address_out(row) for row in rows], "limit": MAX_ADDRESSES})


@routes.post("/api/users/addresses")
@endpoint(
    "Keep a new delivery address",
    body=AddressBody,
    response=AddressOut,
    status=201,
    roles=(),
    errors=(403, 409),
    description=f"409 too_many_addresses: the caller keeps {MAX_ADDRESSES} already (with "
    "`limit`); counted under a lock, so requests at once never pass it. The same address "
    "again (every field equal once tidied: a form sent twice) is kept once: the answer is "
    "the one kept, as a replay would be.",
)
async def add_address(request: web.Request, body: AddressBody) -> web.Response:
    user_id = _own_id(request[IDENTITY])
    row = await request.app[STORE].add_address(user_id, body.model_dump(), MAX_ADDRESSES)
    return ok(address_out(row), status=201)


@routes.put("/api/users/addresses/{id}")
@endpoint(
    "Change one of the caller's addresses (the whole address)",
    path=AddressPath,
    body=AddressBody,
    response=AddressOut,
    roles=(),
    errors=(403, 404),
    description="Orders keep the address as it was when they were placed: changing it "
    "changes none of them. 404 address_not_found: not one of the caller's.",
)
async def replace_address(request: web.Request, body: AddressBody) -> web.Response:
    user_id, address_id = _own_id(request[IDENTITY]), _address_id(request)
    row = await request.app[STORE].replace_address(user_id, address_id, body.model_dump())
    return ok(address_out(row))


@routes.delete("/api/users/addresses/{id}")
@endpoint(
    "Remove one of the caller's addresses",
    path=AddressPath,
    response=AddressRemoved,
    roles=(),
    errors=(403, 404),
    description="404 address_not_found: not one of the caller's (or removed already).",
)
async def remove_address(request: web.Request) -> web.Response:
    user_id, address_id = _own_id(request[IDENTITY]), _address_id(request)
    await request.app[STORE].remove_address(user_id, address_id)
    return ok({"id": address_id, "deleted": True})


@routes.get("/internal/users/{id}/addresses/{address_id}")
@endpoint(
    "Internal: one user's address, for the order service at checkout (service tokens only)",
    path=UserAddressPath,
    response=AddressOut,
    roles=("service",),
    errors=(404,),
    description="404 address_not_found: the user has no such address. Not under /api/, so "
    "the gateway never routes it.",
)
async def user_address(request: web.Request) -> web.Response:
    user_id = parse_id(request.match_info["id"])
    address_id = _address_id(request, "address_id")
    if user_id is None:
        raise AddressNotFound(id=address_id)
    return ok(address_out(await request.app[STORE].address_of(user_id, address_id)))
