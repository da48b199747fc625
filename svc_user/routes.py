"""The user service's routes: thin handlers over the store and the password hasher."""

from __future__ import annotations

import math

from aiohttp import web

from shopkit.auth import Identity, issue_token
from shopkit.errors import Forbidden, TooManyRequests, Unauthorized
from shopkit.keys import IDENTITY, SETTINGS
from shopkit.openapi import endpoint
from shopkit.responses import ok
from svc_user.keys import HASHER, STORE
from svc_user.schemas import AuthOut, LoginBody, ProfileUpdate, RegisterBody, UserOut
from svc_user.store import user_out

routes = web.RouteTableDef()


def _token_for(request: web.Request, user: dict) -> str:
    secret = request.app[SETTINGS].jwt_secret.get_secret_value()
    return issue_token(secret, sub=str(user["id"]), email=user["email"], role=user["role"])


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
    )
    user = user_out(row)
    return ok({"user": user, "token": _token_for(request, user)}, status=201)


def _too_many(seconds: float) -> TooManyRequests:
    wait = max(1, math.ceil(seconds))
    return TooManyRequests(
        f"Too many failed logins for this email; try again in {wait} seconds.",
        code="too_many_attempts",
        headers={"Retry-After": str(wait)},
    )


@routes.post("/api/users/login")
@endpoint(
    "Log in with email and password",
    body=LoginBody,
    response=AuthOut,
    errors=(401, 429, 503),
    description="An unknown email and a wrong password answer alike. Repeated failures for "
    "one email are throttled (429 with Retry-After), across every replica. 503 busy (with "
    "Retry-After): more password checks are under way than BCRYPT_QUEUE_LIMIT allows.",
)
async def login(request: web.Request, body: LoginBody) -> web.Response:
    store, hasher = request.app[STORE], request.app[HASHER]
    email = body.email.strip().lower()
    locked, failed_before = await store.failures(email)
    if locked:
        raise _too_many(locked)
    row = await store.by_email(email)
    if not await hasher.verify(body.password, row["password_hash"] if row else None):
        locked = await store.record_failure(email)
        if locked:
            raise _too_many(locked)
        raise Unauthorized("The email or password is incorrect.", code="invalid_credentials")
    if failed_before:
        await store.clear_failures(email)
    if hasher.outdated(row["password_hash"]):
        # BCRYPT_ROUNDS changed since this hash was made: bring it up to date now that we
        # have the password, so every account costs the same to check (no timing tell).
        await store.update(row["id"], {"password_hash": await hasher.hash(body.password)})
    user = user_out(row)
    return ok({"user": user, "token": _token_for(request, user)})


async def _own_account(request: web.Request, identity: Identity):
    if not identity.user_id.isdigit():
        raise Forbidden("Only a user's own token reaches a profile.", code="not_a_user")
    row = await request.app[STORE].by_id(int(identity.user_id))
    if row is None:
        # A valid signature for an account that is gone: the token no longer names anyone.
        raise Unauthorized("The account this token names no longer exists.", code="invalid_token")
    return row


@routes.get("/api/users/profile")
@endpoint("The caller's own account", response=UserOut, roles=())
async def get_profile(request: web.Request) -> web.Response:
    return ok(user_out(await _own_account(request, request[IDENTITY])))


@routes.put("/api/users/profile")
@endpoint(
    "Change names, or the password (with current_password)",
    body=ProfileUpdate,
    response=UserOut,
    roles=(),
    errors=(403, 503),
)
async def update_profile(request: web.Request, body: ProfileUpdate) -> web.Response:
    row = await _own_account(request, request[IDENTITY])
    changes = {
        field: getattr(body, field)
        for field in ("first_name", "last_name")
        if field in body.model_fields_set
    }
    if "password" in body.model_fields_set:
        hasher = request.app[HASHER]
        if not await hasher.verify(body.current_password, row["password_hash"]):
            raise Forbidden("The current password is incorrect.", code="wrong_password")
        changes["password_hash"] = await hasher.hash(body.password)
    updated = await request.app[STORE].update(row["id"], changes)
    if updated is None:
        raise Unauthorized("The account this token names no longer exists.", code="invalid_token")
    return ok(user_out(updated))
