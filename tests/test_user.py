"""The user service over HTTP against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr
from support import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    JWT_SECRET,
    bearer,
    call,
    forged,
    postgres,
    unsigned,
)

from shopkit.auth import service_token
from shopkit.errors import ServiceBusy, refusal_error
from shopkit.postgres import load_migrations
from svc_user.app import UserSettings
from svc_user.app import create_app as create_user_app
from svc_user.passwords import HasherBusy, PasswordHasher
from svc_user.routes import REFUSALS
from svc_user.store import FREE_FAILURES

PASSWORD = "s3cret-enough"


async def register(client: TestClient, email: str = "ann@shop.test", **extra: Any) -> dict:
    body = {"email": email, "password": PASSWORD, **extra}
    reply = await call(client, "POST", "/api/users/register", json=body, expected_status=201)
    return reply["data"]


async def login(
    client: TestClient, email: str, password: str = PASSWORD, expected_status: int = 200
) -> dict:
    body = {"email": email, "password": password}
    return await call(
        client, "POST", "/api/users/login", json=body, expected_status=expected_status
    )


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, JWT_SECRET, algorithms=["HS256"])


# -- registration -------------------------------------------------------------------------


async def test_register_makes_a_customer_and_logs_it_in(user: TestClient) -> None:
    data = await register(user, "  Ann@Shop.TEST ", first_name=" Ann ", last_name="Lee")
    account = data["user"]
    assert account["email"] == "ann@shop.test"
    assert (account["first_name"], account["last_name"], account["role"]) == (
        "Ann",
        "Lee",
        "customer",
    )
    assert set(account) == {"id", "email", "first_name", "last_name", "role", "created_at"}
    token = claims(data["token"])
    assert token["sub"] == str(account["id"])
    assert (token["email"], token["role"]) == ("ann@shop.test", "customer")
    assert token["exp"] - token["iat"] == 24 * 3600


async def test_register_ignores_a_role_in_the_body(user: TestClient) -> None:
    data = await register(user, "mallory@shop.test", role="admin")
    assert data["user"]["role"] == "customer"
    assert claims(data["token"])["role"] == "customer"


async def test_a_taken_email_is_409_whatever_its_case(user: TestClient) -> None:
    await register(user, "ann@shop.test")
    body = {"email": " ANN@shop.test", "password": "another-password"}
    reply = await call(user, "POST", "/api/users/register", json=body, expected_status=409)
    assert reply["code"] == "email_taken"
    await login(user, "ann@shop.test")  # the first account's password still works


async def test_concurrent_registrations_of_one_email_make_one_account(
    user: TestClient, users_postgres_uri: str
) -> None:
    async def attempt() -> int:
        body = {"email": "race@shop.test", "password": PASSWORD}
        response = await user.post("/api/users/register", json=body)
        await response.read()
        return response.status

    statuses = await asyncio.gather(*(attempt() for _ in range(10)))
    assert sorted(statuses) == [201] + [409] * 9
    async with postgres(users_postgres_uri) as connection:
        count = await connection.fetchval(
            "SELECT count(*) FROM users WHERE email = 'race@shop.test'"
        )
    assert count == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"password": PASSWORD}, "email"),
        ({"email": "not-an-email", "password": PASSWORD}, "email"),
        ({"email": ["a@b.co"], "password": PASSWORD}, "email"),
        ({"email": 42, "password": PASSWORD}, "email"),
        ({"email": "a" * 300 + "@b.co", "password": PASSWORD}, "email"),
        ({"email": "a@b.co"}, "password"),
        ({"email": "a@b.co", "password": "seven77"}, "password"),
        ({"email": "a@b.co", "password": "x" * 73}, "password"),
        ({"email": "a@b.co", "password": "🔑" * 19}, "password"),  # 76 bytes
        ({"email": "a@b.co", "password": "pass\x00word"}, "password"),
        ({"email": "a@b.co", "password": 12345678}, "password"),
        ({"email": "a@b.co", "password": PASSWORD, "first_name": "x" * 101}, "first_name"),
        ({"email": "a@b.co", "password": PASSWORD, "last_name": ["x"]}, "last_name"),
        ({"email": "a@b.co", "password": PASSWORD, "is_admin": True}, "is_admin"),
    ],
)
async def test_bad_registrations_are_400_and_make_nothing(
    user: TestClient, body: dict[str, Any], field: str
) -> None:
    reply = await call(user, "POST", "/api/users/register", json=body, expected_status=400)
    assert field in [detail["field"] for detail in reply["details"]], reply
    await login(user, "a@b.co", expected_status=401)


async def test_passwords_are_counted_in_bytes(user: TestClient) -> None:
    emoji = "🔑" * 18  # 72 bytes: the most bcrypt reads
    await call(
        user,
        "POST",
        "/api/users/register",
        json={"email": "key@shop.test", "password": emoji},
        expected_status=201,
    )
    await login(user, "key@shop.test", emoji)
    await login(user, "key@shop.test", "🔑" * 17, expected_status=401)


@pytest.mark.parametrize("raw", [b"{", b"[]", b'"x"', b"\xff", b"null"])
async def test_malformed_json_is_400(user: TestClient, raw: bytes) -> None:
    reply = await call(
        user,
        "POST",
        "/api/users/register",
        data=raw,
        headers={"Content-Type": "application/json"},
        expected_status=400,
    )
    assert reply["code"] == "invalid_json"


# -- login and its throttle ---------------------------------------------------------------


async def test_login_matches_the_email_as_registration_stored_it(user: TestClient) -> None:
    registered = await register(user, "ann@shop.test")
    reply = await login(user, "  ANN@Shop.test ")
    assert reply["data"]["user"] == registered["user"]
    assert claims(reply["data"]["token"])["sub"] == str(registered["user"]["id"])


async def test_unknown_email_and_wrong_password_answer_alike(user: TestClient) -> None:
    await register(user, "ann@shop.test")
    wrong = await login(user, "ann@shop.test", "not-the-password", expected_status=401)
    unknown = await login(user, "nobody@shop.test", "not-the-password", expected_status=401)
    assert (
        wrong
        == unknown
        == {
            "success": False,
            "error": "The email or password is incorrect.",
            "code": "invalid_credentials",
        }
    )


async def test_repeated_failures_are_throttled_even_with_the_right_password(
    user: TestClient,
) -> None:
    await register(user, "ann@shop.test")
    for _ in range(FREE_FAILURES):
        await login(user, "ann@shop.test", "guess-guess", expected_status=401)
    response = await user.post(
        "/api/users/login", json={"email": "ann@shop.test", "password": "guess-guess"}
    )
    assert response.status == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert (await response.json())["code"] == "too_many_attempts"
    locked = await login(user, "ANN@shop.test", PASSWORD, expected_status=429)
    assert "try again in" in locked["error"]
    await login(user, "other@shop.test", expected_status=401)  # other emails are unaffected


async def test_unknown_emails_are_throttled_the_same_way(user: TestClient) -> None:
    for _ in range(FREE_FAILURES):
        await login(user, "ghost@shop.test", "guess-guess", expected_status=401)
    await login(user, "ghost@shop.test", "guess-guess", expected_status=429)


async def test_a_success_forgets_earlier_failures(user: TestClient) -> None:
    await register(user, "ann@shop.test")
    for _ in range(FREE_FAILURES - 1):
        await login(user, "ann@shop.test", "guess-guess", expected_status=401)
    await login(user, "ann@shop.test")
    for _ in range(FREE_FAILURES):
        await login(user, "ann@shop.test", "guess-guess", expected_status=401)


async def test_the_throttle_holds_across_replicas(
    user: TestClient, aiohttp_client: Any, user_settings: UserSettings
) -> None:
    other_replica = await aiohttp_client(create_user_app(user_settings))
    await register(user, "ann@shop.test")
    for attempt in range(FREE_FAILURES):
        replica = (user, other_replica)[attempt % 2]
        await login(replica, "ann@shop.test", "guess-guess", expected_status=401)
    await login(other_replica, "ann@shop.test", "guess-guess", expected_status=429)
    await login(user, "ann@shop.test", PASSWORD, expected_status=429)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"email": "a@b.co"},
        {"password": "x"},
        {"email": "", "password": "x"},
        {"email": "a@b.co", "password": ""},
        {"email": 1, "password": "x"},
        {"email": "a@b.co", "password": "x", "remember": True},
    ],
)
async def test_malformed_logins_are_400(user: TestClient, body: dict[str, Any]) -> None:
    await call(user, "POST", "/api/users/login", json=body, expected_status=400)


async def test_a_very_long_wrong_password_is_just_wrong(user: TestClient) -> None:
    await register(user, "ann@shop.test")
    await login(user, "ann@shop.test", PASSWORD + "x" * 200, expected_status=401)


# -- profile ------------------------------------------------------------------------------


async def test_profile_is_the_callers_own(user: TestClient) -> None:
    ann = await register(user, "ann@shop.test", first_name="Ann")
    bob = await register(user, "bob@shop.test", first_name="Bob")
    mine = await call(
        user, "GET", "/api/users/profile", headers=bearer(ann["token"]), expected_status=200
    )
    assert mine["data"] == ann["user"]
    theirs = await call(
        user, "GET", "/api/users/profile", headers=bearer(bob["token"]), expected_status=200
    )
    assert theirs["data"]["first_name"] == "Bob"


async def test_token_attacks_are_401(user: TestClient, users_postgres_uri: str) -> None:
    ann = await register(user, "ann@shop.test")
    sub = str(ann["user"]["id"])
    attacks = {
        "none": {},
        "garbage": bearer("a.b.c"),
        "alg-none": bearer(unsigned({"sub": sub})),
        "wrong-secret": bearer(forged({"sub": sub}, secret="guessed-" + "z" * 60)),
        "expired": bearer(forged({"sub": sub, "exp": datetime.now(UTC) - timedelta(seconds=1)})),
        "no-exp": bearer(
            jwt.encode(
                {"sub": sub, "email": "a", "role": "customer", "iat": 1},
                JWT_SECRET,
                algorithm="HS256",
            )
        ),
    }
    for name, headers in attacks.items():
        reply = await call(user, "GET", "/api/users/profile", headers=headers, expected_status=401)
        assert reply["code"] in {"unauthorized", "invalid_token", "token_expired"}, name

    async with postgres(users_postgres_uri) as connection:
        await connection.execute("DELETE FROM users WHERE id = $1", ann["user"]["id"])
    await call(user, "GET", "/api/users/profile", headers=bearer(ann["token"]), expected_status=401)


async def test_a_service_token_has_no_profile(user: TestClient) -> None:
    headers = bearer(service_token(JWT_SECRET, "order"))
    await call(user, "GET", "/api/users/profile", headers=headers, expected_status=403)


async def test_update_names(user: TestClient) -> None:
    ann = await register(user, "ann@shop.test", first_name="Ann", last_name="Lee")
    reply = await call(
        user,
        "PUT",
        "/api/users/profile",
        json={"last_name": " Smith "},
        headers=bearer(ann["token"]),
        expected_status=200,
    )
    assert (reply["data"]["first_name"], reply["data"]["last_name"]) == ("Ann", "Smith")


async def test_password_changes_need_the_current_one(user: TestClient) -> None:
    ann = await register(user, "ann@shop.test")
    headers = bearer(ann["token"])
    await call(
        user,
        "PUT",
        "/api/users/profile",
        json={"password": "brand-new-pass"},
        headers=headers,
        expected_status=400,
    )
    wrong = await call(
        user,
        "PUT",
        "/api/users/profile",
        json={"password": "brand-new-pass", "current_password": "not-it-at-all"},
        headers=headers,
        expected_status=403,
    )
    assert wrong["code"] == "wrong_password"
    await login(user, "ann@shop.test")
    await call(
        user,
        "PUT",
        "/api/users/profile",
        json={"password": "brand-new-pass", "current_password": PASSWORD},
        headers=headers,
        expected_status=200,
    )
    await login(user, "ann@shop.test", PASSWORD, expected_status=401)
    await login(user, "ann@shop.test", "brand-new-pass")


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"first_name": None},
        {"email": "new@shop.test"},
        {"role": "admin"},
        {"password": "short", "current_password": PASSWORD},
        {"first_name": "x" * 101},
    ],
)
async def test_bad_profile_updates_are_400_and_change_nothing(
    user: TestClient, change: dict[str, Any]
) -> None:
    ann = await register(user, "ann@shop.test", first_name="Ann")
    headers = bearer(ann["token"])
    await call(user, "PUT", "/api/users/profile", json=change, headers=headers, expected_status=400)
    reply = await call(user, "GET", "/api/users/profile", headers=headers, expected_status=200)
    assert reply["data"] == ann["user"]


async def test_no_answer_and_no_log_line_holds_a_password_or_hash(
    user: TestClient, json_logs: Any
) -> None:
    texts = []
    for path, body in [
        ("/api/users/register", {"email": "ann@shop.test", "password": PASSWORD}),
        ("/api/users/login", {"email": "ann@shop.test", "password": PASSWORD}),
        ("/api/users/login", {"email": "ann@shop.test", "password": "wrong-" + PASSWORD}),
        ("/api/users/register", {"email": "bad", "password": PASSWORD}),
    ]:
        response = await user.post(path, json=body)
        texts.append(await response.text())
    logs = str(json_logs())
    for text in [*texts, logs]:
        assert PASSWORD not in text
        assert "$2b$" not in text and "password_hash" not in text


# -- the bootstrap admin ------------------------------------------------------------------


async def test_the_bootstrap_admin_can_log_in_as_admin(user: TestClient) -> None:
    reply = await login(user, ADMIN_EMAIL, ADMIN_PASSWORD)
    assert reply["data"]["user"]["role"] == "admin"
    assert claims(reply["data"]["token"])["role"] == "admin"


async def test_the_bootstrap_is_idempotent_across_replicas_and_restarts(
    aiohttp_client: Any, user_settings: UserSettings, users_postgres_uri: str
) -> None:
    # Two replicas starting at once on a fresh database, then a restart with a new password.
    first, second = await asyncio.gather(
        aiohttp_client(create_user_app(user_settings)),
        aiohttp_client(create_user_app(user_settings)),
    )
    await login(first, ADMIN_EMAIL, ADMIN_PASSWORD)
    await login(second, ADMIN_EMAIL, ADMIN_PASSWORD)
    changed = user_settings.model_copy(update={"admin_password": SecretStr("rotated-password")})
    third = await aiohttp_client(create_user_app(changed))
    await login(third, ADMIN_EMAIL, "rotated-password")
    async with postgres(users_postgres_uri) as connection:
        admins = await connection.fetch("SELECT role FROM users WHERE email = $1", ADMIN_EMAIL)
        versions = await connection.fetch("SELECT version FROM schema_migrations ORDER BY 1")
    assert [row["role"] for row in admins] == ["admin"]
    # Each migration applied once, whichever replica got there first.
    every = [migration.version for migration in load_migrations("svc_user.migrations")]
    assert [row["version"] for row in versions] == every


async def test_an_existing_customer_with_the_admin_email_becomes_the_admin(
    user: TestClient, aiohttp_client: Any, user_settings: UserSettings
) -> None:
    settings = user_settings.model_copy(update={"admin_email": "ann@shop.test"})
    await register(user, "ann@shop.test")
    restarted = await aiohttp_client(create_user_app(settings))
    reply = await login(restarted, "ann@shop.test", ADMIN_PASSWORD)
    assert reply["data"]["user"]["role"] == "admin"
    await login(restarted, "ann@shop.test", PASSWORD, expected_status=401)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"ADMIN_EMAIL": "boss@shop.test"}, "ADMIN_PASSWORD must be set together"),
        ({"ADMIN_EMAIL": "boss", "ADMIN_PASSWORD": "long-enough"}, "ADMIN_EMAIL is malformed"),
        (
            {"ADMIN_EMAIL": "boss@shop.test", "ADMIN_PASSWORD": "short"},
            "ADMIN_PASSWORD is malformed",
        ),
        ({"BCRYPT_ROUNDS": "3"}, "BCRYPT_ROUNDS is malformed"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL is malformed"),
    ],
)
def test_bad_user_settings_name_the_variable(environ: dict[str, str], message: str) -> None:
    from shopkit.settings import SettingsError

    base = {"JWT_SECRET": JWT_SECRET, "DATABASE_URL": "postgresql://db/users"}
    with pytest.raises(SettingsError) as caught:
        UserSettings.from_env({**base, **environ})
    assert message in str(caught.value)
    assert "long-enough" not in str(caught.value) and "short" not in str(caught.value)


async def test_a_login_brings_an_old_hash_up_to_the_configured_cost(
    user: TestClient, aiohttp_client: Any, user_settings: UserSettings, users_postgres_uri: str
) -> None:
    await register(user, "ann@shop.test")
    stronger = user_settings.model_copy(update={"bcrypt_rounds": 5})
    restarted = await aiohttp_client(create_user_app(stronger))
    await login(restarted, "ann@shop.test")
    async with postgres(users_postgres_uri) as connection:
        stored = await connection.fetchval(
            "SELECT password_hash FROM users WHERE email = 'ann@shop.test'"
        )
    assert stored.startswith("$2b$05$")
    await login(restarted, "ann@shop.test")


async def test_password_checks_past_the_queue_limit_are_refused_at_once() -> None:
    hasher = PasswordHasher(rounds=4, workers=1, queue_limit=2)
    await hasher.start()
    try:
        hashed = await hasher.hash("correct horse")
        outcomes = await asyncio.gather(
            *(hasher.verify("correct horse", hashed) for _ in range(3)), return_exceptions=True
        )
        # The first two are taken on (one runs, one waits); the third is refused, not queued.
        assert outcomes[:2] == [True, True]
        assert isinstance(outcomes[2], HasherBusy)
        answer = refusal_error(outcomes[2], REFUSALS)  # as the service answers it
        assert isinstance(answer, ServiceBusy)
        assert answer.headers == {"Retry-After": "1"}
        assert await hasher.verify("correct horse", hashed)  # room again once they are done
    finally:
        hasher.close()


async def test_a_login_flood_gets_503_busy_and_records_no_failure(
    aiohttp_client: Any, user_settings: UserSettings
) -> None:
    # Costly hashes and room for one: while one login's check runs, the others are refused.
    settings = user_settings.model_copy(update={"bcrypt_rounds": 14, "bcrypt_queue_limit": 1})
    client = await aiohttp_client(create_user_app(settings))
    login = {"email": ADMIN_EMAIL, "password": "not the password"}
    answers = await asyncio.gather(*(client.post("/api/users/login", json=login) for _ in range(4)))
    statuses = sorted(answer.status for answer in answers)
    assert statuses[0] == 401 and 503 in statuses, statuses
    for answer in answers:
        if answer.status == 503:
            body = await answer.json()
            assert body["code"] == "busy" and body["success"] is False
            assert answer.headers["Retry-After"] == "1"
    # Only the check that ran counts toward the throttle: the admin can still log in.
    good = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    await call(client, "POST", "/api/users/login", json=good, expected_status=200)
