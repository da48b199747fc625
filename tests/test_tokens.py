"""Tokens at every service: one strict claims model (anything off is a 401), and revocation
(a logout, a password change, a removed account end the tokens issued before, everywhere,
within TOKEN_STATUS_CACHE_SECONDS). Real services over HTTP, polled with a deadline."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import (
    ADMIN_PASSWORD,
    JWT_SECRET,
    admin_login_headers,
    bearer,
    call,
    create_product,
    eventually,
    log_in_with_api,
    postgres,
    product_body,
)

from shopkit.auth import TOKEN_LIFETIME, Identity, identity_of, issue_token, service_token
from shopkit.errors import Unauthorized
from svc_user.store import REVOKE_AHEAD_SECONDS

PASSWORD = "first-password-1"
NEW_PASSWORD = "second-password-2"
WITHIN = 15  # seconds: far above TOKEN_STATUS_CACHE_SECONDS (2), for a loaded machine


@pytest.fixture
async def shop(aiohttp_client: Any, shop_services: dict[str, TestServer]) -> dict[str, TestClient]:
    """Clients of the real product, user, cart and order services, by name."""
    return {name: await aiohttp_client(server) for name, server in shop_services.items()}


async def register(users: TestClient, email: str) -> tuple[int, dict[str, str]]:
    body = {"email": email, "password": PASSWORD}
    reply = await call(users, "POST", "/api/users/register", json=body, expected_status=201)
    return reply["data"]["user"]["id"], bearer(reply["data"]["token"])


async def status_of(client: TestClient, method: str, path: str, **kwargs: Any) -> int:
    async with client.request(method, path, **kwargs) as response:
        await response.read()
        return response.status


async def refused_everywhere(
    shop: dict[str, TestClient], user_id: int, headers: dict[str, str], product_id: str
) -> None:
    """The token is refused (401) by the cart and the order service once their memory of the
    user's token state has run out (polled with reads: a write that still worked would
    change what the test checks), then for writes too; the user service refuses it at once."""
    profile = await call(
        shop["user"], "GET", "/api/users/profile", headers=headers, expected_status=401
    )
    assert profile["code"] in ("token_revoked", "invalid_token")

    async def cart_refuses() -> bool:
        return await status_of(shop["cart"], "GET", f"/api/cart/{user_id}", headers=headers) == 401

    async def order_refuses() -> bool:
        return await status_of(shop["order"], "GET", "/api/orders", headers=headers) == 401

    await eventually(cart_refuses, "the cart service refusing the token", within=WITHIN)
    await eventually(order_refuses, "the order service refusing the token", within=WITHIN)
    add = {"product_id": product_id, "quantity": 1}
    reply = await call(
        shop["cart"],
        "POST",
        f"/api/cart/{user_id}/items",
        json=add,
        headers=headers,
        expected_status=401,
    )
    assert reply["code"] in ("token_revoked", "invalid_token")
    checkout = {"items": [{"product_id": product_id, "quantity": 1}]}
    await call(
        shop["order"], "POST", "/api/orders", json=checkout, headers=headers, expected_status=401
    )


async def works_everywhere(
    shop: dict[str, TestClient], user_id: int, headers: dict[str, str], product_id: str
) -> None:
    await call(shop["user"], "GET", "/api/users/profile", headers=headers, expected_status=200)
    add = {"product_id": product_id, "quantity": 1}
    await call(
        shop["cart"],
        "POST",
        f"/api/cart/{user_id}/items",
        json=add,
        headers=headers,
        expected_status=200,
    )
    await call(shop["order"], "GET", "/api/orders", headers=headers, expected_status=200)


async def a_product(shop: dict[str, TestClient], admin_headers: dict[str, str]) -> str:
    return (await create_product(shop["product"], admin_headers, stock=100))["id"]


# -- revocation ----------------------------------------------------------------------------------


async def test_logout_ends_the_token_at_every_service(
    shop: dict[str, TestClient], admin_headers: dict[str, str]
) -> None:
    product_id = await a_product(shop, admin_headers)
    user_id, old = await register(shop["user"], "leaving@shop.test")
    other_session = await log_in_with_api(shop["user"], "leaving@shop.test", PASSWORD)
    await works_everywhere(shop, user_id, old, product_id)  # remembered as good meanwhile

    reply = await call(shop["user"], "POST", "/api/users/logout", headers=old, expected_status=200)
    assert reply["data"] == {"logged_out": True}
    assert reply is not None
    await refused_everywhere(shop, user_id, old, product_id)
    await refused_everywhere(shop, user_id, other_session, product_id)  # "everywhere"
    # A login right after (the same second, most likely) works at once, everywhere.
    fresh = await log_in_with_api(shop["user"], "leaving@shop.test", PASSWORD)
    await works_everywhere(shop, user_id, fresh, product_id)


async def test_a_password_change_ends_the_old_token_and_answers_a_new_one(
    shop: dict[str, TestClient], admin_headers: dict[str, str]
) -> None:
    product_id = await a_product(shop, admin_headers)
    user_id, old = await register(shop["user"], "changing@shop.test")
    await works_everywhere(shop, user_id, old, product_id)
    change = {"current_password": PASSWORD, "password": NEW_PASSWORD}
    reply = await call(
        shop["user"], "PUT", "/api/users/profile", json=change, headers=old, expected_status=200
    )
    new = bearer(reply["data"]["token"])
    assert reply["data"]["email"] == "changing@shop.test"

    # The old token can neither read the profile nor change the password again...
    again = {"current_password": NEW_PASSWORD, "password": "attacker-password"}
    refused = await call(
        shop["user"], "PUT", "/api/users/profile", json=again, headers=old, expected_status=401
    )
    assert refused["code"] == "token_revoked"
    await refused_everywhere(shop, user_id, old, product_id)
    # ...while the token the change answered works, and so does the new password.
    await works_everywhere(shop, user_id, new, product_id)
    await log_in_with_api(shop["user"], "changing@shop.test", NEW_PASSWORD)
    # A name change revokes nothing.
    names = {"first_name": "Ann"}
    await call(
        shop["user"], "PUT", "/api/users/profile", json=names, headers=new, expected_status=200
    )
    await works_everywhere(shop, user_id, new, product_id)


async def test_a_token_for_a_user_that_does_not_exist_fills_no_cart_and_places_no_order(
    shop: dict[str, TestClient], admin_headers: dict[str, str]
) -> None:
    product_id = await a_product(shop, admin_headers)
    ghost = 987_654_321_012
    headers = bearer(issue_token(JWT_SECRET, sub=str(ghost), email="x@shop.test", role="customer"))
    add = {"product_id": product_id, "quantity": 1}
    reply = await call(
        shop["cart"],
        "POST",
        f"/api/cart/{ghost}/items",
        json=add,
        headers=headers,
        expected_status=401,
    )
    assert reply["code"] == "invalid_token"
    checkout = {"items": [{"product_id": product_id, "quantity": 1}]}
    await call(
        shop["order"], "POST", "/api/orders", json=checkout, headers=headers, expected_status=401
    )
    await call(shop["user"], "GET", "/api/users/profile", headers=headers, expected_status=401)
    # An admin's claims naming nobody run no catalogue either.
    nobody_admin = bearer(
        issue_token(JWT_SECRET, sub=str(ghost), email="x@shop.test", role="admin")
    )
    await call(
        shop["product"],
        "POST",
        "/api/products",
        json=product_body(),
        headers=nobody_admin,
        expected_status=401,
    )
    stock = await call(shop["product"], "GET", f"/api/products/{product_id}", expected_status=200)
    assert stock["data"]["stock"] == 100


async def test_a_removed_account_ends_its_tokens_everywhere(
    shop: dict[str, TestClient], admin_headers: dict[str, str]
) -> None:
    product_id = await a_product(shop, admin_headers)
    user_id, token = await register(shop["user"], "removed@shop.test")
    await works_everywhere(shop, user_id, token, product_id)
    wrong = await call(
        shop["user"],
        "DELETE",
        "/api/users/profile",
        json={"current_password": "not-the-password"},
        headers=token,
        expected_status=403,
    )
    assert wrong["code"] == "wrong_password"
    reply = await call(
        shop["user"],
        "DELETE",
        "/api/users/profile",
        json={"current_password": PASSWORD},
        headers=token,
        expected_status=200,
    )
    assert reply["data"] == {"id": user_id, "deleted": True}
    await refused_everywhere(shop, user_id, token, product_id)
    body = {"email": "removed@shop.test", "password": PASSWORD}
    await call(shop["user"], "POST", "/api/users/login", json=body, expected_status=401)


async def test_an_admin_account_is_not_removed_through_its_profile(
    shop: dict[str, TestClient],
) -> None:
    admin = await admin_login_headers(shop["user"])
    reply = await call(
        shop["user"],
        "DELETE",
        "/api/users/profile",
        json={"current_password": ADMIN_PASSWORD},
        headers=admin,
        expected_status=403,
    )
    assert reply["code"] == "admin_account"


async def test_a_logged_out_admin_runs_the_catalogue_no_more(shop: dict[str, TestClient]) -> None:
    admin = await admin_login_headers(shop["user"])
    created = await create_product(shop["product"], admin)
    await call(shop["user"], "POST", "/api/users/logout", headers=admin, expected_status=200)

    async def refused() -> bool:  # a change it would refuse anyway (400): polling changes nothing
        path = f"/api/products/{created['id']}"
        bad = {"price": "free"}
        return await status_of(shop["product"], "PUT", path, json=bad, headers=admin) == 401

    await eventually(refused, "the product service refusing the admin's token", within=WITHIN)
    # Public reads need no token and ask nobody.
    await call(shop["product"], "GET", f"/api/products/{created['id']}", expected_status=200)


async def test_service_tokens_need_no_user(
    shop: dict[str, TestClient], admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    product_id = await a_product(shop, admin_headers)
    await call(
        shop["product"],
        "PATCH",
        f"/api/products/{product_id}/stock",
        json={"quantity": 1},
        headers=service_headers,
        expected_status=200,
    )
    reply = await call(
        shop["user"], "POST", "/api/users/logout", headers=service_headers, expected_status=403
    )
    assert reply["code"] == "not_a_user"


async def test_the_user_service_down_is_503_never_a_pass(
    shop: dict[str, TestClient], shop_services: dict[str, TestServer]
) -> None:
    # Ids no service has been asked about yet: nothing to remember.
    headers = bearer(issue_token(JWT_SECRET, sub="3", email="u3@shop.test", role="customer"))
    await shop_services["user"].close()
    reply = await call(shop["cart"], "GET", "/api/cart/3", headers=headers, expected_status=503)
    assert reply["code"] == "upstream_unavailable"
    reply = await call(shop["order"], "GET", "/api/orders", headers=headers, expected_status=503)
    assert reply["code"] == "upstream_unavailable"


# -- the internal route ---------------------------------------------------------------------------


async def test_token_status_is_for_services_only(
    shop: dict[str, TestClient], service_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    users = shop["user"]
    reply = await call(
        users, "GET", "/internal/users/1/token-status", headers=service_headers, expected_status=200
    )
    assert reply["data"]["user_id"] == 1 and isinstance(reply["data"]["tokens_valid_from"], int)
    for missing in ("424242424242424", "٦٦", "01", "0", "9" * 40):
        reply = await call(
            users,
            "GET",
            f"/internal/users/{missing}/token-status",
            headers=service_headers,
            expected_status=404,
        )
        assert reply["code"] == "user_not_found"
    await call(
        users, "GET", "/internal/users/1/token-status", headers=admin_headers, expected_status=403
    )
    await call(users, "GET", "/internal/users/1/token-status", expected_status=401)
    async with users.get("/openapi.json") as response:
        document = await response.json()
    assert "/internal/users/{id}/token-status" in document["paths"]


async def _requests_to_token_status(users: TestClient) -> float:
    async with users.get("/metrics") as response:
        text = await response.text()
    pattern = re.compile(r"^http_requests_total\{(.*)\} (\S+)$", re.MULTILINE)
    return sum(
        float(value)
        for labels, value in pattern.findall(text)
        if 'route="/internal/users/{id}/token-status"' in labels
    )


async def test_concurrent_requests_ask_the_user_service_once(
    shop: dict[str, TestClient],
) -> None:
    headers = bearer(issue_token(JWT_SECRET, sub="4", email="u4@shop.test", role="customer"))
    before = await _requests_to_token_status(shop["user"])
    statuses = await asyncio.gather(
        *(status_of(shop["cart"], "GET", "/api/cart/4", headers=headers) for _ in range(40))
    )
    assert statuses == [200] * 40
    assert await _requests_to_token_status(shop["user"]) - before == 1


# -- claims ---------------------------------------------------------------------------------------


def signed(**changes: Any) -> str:
    """A token signed with the right secret whose claims are a customer's, changed."""
    now = math.floor(time.time())
    claims = {
        "sub": "2",
        "email": "u2@shop.test",
        "role": "customer",
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(changes)
    for name, value in list(claims.items()):
        if value is ...:
            del claims[name]
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def raw_signed(payload: str) -> str:
    """A token whose payload is exactly this JSON text (non-finite numbers and all)."""
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}').decode()
    body = jwt.utils.base64url_encode(payload.encode()).decode()
    algorithm = jwt.get_algorithm_by_name("HS256")
    signature = algorithm.sign(f"{header}.{body}".encode(), algorithm.prepare_key(JWT_SECRET))
    return f"{header}.{body}.{jwt.utils.base64url_encode(signature).decode()}"


NOW = math.floor(time.time())
BAD_CLAIMS = {
    "role-list": signed(role=["admin"]),
    "role-object": signed(role={"admin": True}),
    "role-unknown": signed(role="superuser"),
    "sub-superscript": signed(sub="²"),
    "sub-arabic-indic": signed(sub="٦٦"),
    "sub-40-digits": signed(sub="1" * 40),
    "sub-leading-zero": signed(sub="02"),
    "sub-signed": signed(sub="+2"),
    "sub-zero": signed(sub="0"),
    "sub-over-bigint": signed(sub=str(2**63)),
    "sub-number": signed(sub=2),
    "sub-service-form-as-customer": signed(sub="service:order"),
    "service-with-user-sub": signed(sub="2", role="service"),
    "email-list": signed(email=["a@b.c"]),
    "email-missing": signed(email=...),
    "exp-missing": signed(exp=...),
    "exp-string": signed(exp=str(NOW + 3600)),
    "exp-bool": signed(exp=True),
    "exp-float": signed(exp=NOW + 3600.5),
    "exp-huge": signed(exp=10**30),
    "exp-beyond-lifetime": signed(exp=NOW + int(TOKEN_LIFETIME.total_seconds()) + 10),
    "exp-infinity": raw_signed(
        f'{{"sub":"2","email":"a@b.c","role":"customer","iat":{NOW},"exp":Infinity}}'
    ),
    "exp-nan": raw_signed(f'{{"sub":"2","email":"a@b.c","role":"customer","iat":{NOW},"exp":NaN}}'),
    "iat-far-future": signed(iat=NOW + 3600, exp=NOW + 7200),
    "extra-claim": signed(admin=True),
    "payload-list": raw_signed("[1, 2]"),
}


@pytest.mark.parametrize("token", list(BAD_CLAIMS.values()), ids=list(BAD_CLAIMS))
async def test_claims_not_exactly_as_issued_are_401_at_every_service(
    shop: dict[str, TestClient], token: str
) -> None:
    headers = bearer(token)
    for name, method, path in (
        ("user", "GET", "/api/users/profile"),
        ("cart", "GET", "/api/cart/2"),
        ("cart", "GET", "/api/cart/66"),
        ("order", "GET", "/api/orders"),
        ("order", "GET", "/api/orders/user/2"),
        ("product", "DELETE", "/api/products/0123456789abcdef01234567"),
    ):
        reply = await call(shop[name], method, path, headers=headers, expected_status=401)
        assert reply["code"] in ("invalid_token", "token_expired"), (name, reply)


@given(
    claims=st.dictionaries(
        st.sampled_from(["sub", "email", "role", "iat", "exp", "nbf", "x"]),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats()
            | st.text(max_size=30)
            | st.sampled_from(["customer", "admin", "service", "service:order", "²", "٦٦"]),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=5,
        ),
    )
    | st.recursive(st.none() | st.integers() | st.text(), lambda inner: st.lists(inner, max_size=3))
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_claims_are_an_identity_or_a_401(claims: Any) -> None:
    try:
        identity = identity_of(claims)
    except Unauthorized as refused:
        assert refused.status == 401 and refused.code == "invalid_token"
        return
    assert isinstance(identity, Identity)
    assert identity.role in ("customer", "admin", "service")
    assert (identity.user_number is None) == (identity.role == "service")
    if identity.user_number is not None:
        assert str(identity.user_number) == identity.user_id
        assert 1 <= identity.user_number <= 2**63 - 1
    json.dumps(claims)  # only JSON values ever reach a model


def test_well_formed_claims_make_the_identity_they_say() -> None:
    identity = identity_of(
        {"sub": "66", "email": "a@b.c", "role": "customer", "iat": NOW, "exp": NOW + 60}
    )
    assert identity.user_number == 66 and identity.issued_at == NOW
    assert identity.may_act_for(66) and identity.may_act_for("66")
    assert not identity.may_act_for("٦٦") and not identity.may_act_for("066")
    service = identity_of(
        {"sub": "service:order", "email": "o@s", "role": "service", "iat": NOW, "exp": NOW + 60}
    )
    assert service.user_number is None and service.may_act_for("66")
    assert identity_of(jwt.decode(service_token(JWT_SECRET, "cart"), JWT_SECRET, ["HS256"]))


# -- the gateway ----------------------------------------------------------------------------------


async def test_the_gateway_never_routes_the_internal_route(
    web_shop: TestClient, service_headers: dict[str, str]
) -> None:
    for path in (
        "/internal/users/1/token-status",
        "/api/users/../../internal/users/1/token-status",
        "/api/users/%2e%2e/%2e%2e/internal/users/1/token-status",
        "/api/users/internal/users/1/token-status",
    ):
        assert await status_of(web_shop, "GET", path, headers=service_headers) == 404, path


@pytest.mark.parametrize(
    "name", ["role-list", "sub-superscript", "sub-arabic-indic", "exp-infinity", "extra-claim"]
)
async def test_a_cookie_with_claims_not_as_issued_is_logged_out(
    web_shop: TestClient, name: str
) -> None:
    web_shop.session.cookie_jar.update_cookies(
        {"shop_session": BAD_CLAIMS[name]}, response_url=web_shop.make_url("/")
    )
    async with web_shop.get("/", allow_redirects=False) as response:
        assert response.status == 200
        assert 'shop_session=""' in response.headers.get("Set-Cookie", "")
        assert 'action="/logout"' not in await response.text()


async def test_no_token_outlives_a_revocation_at_the_ceiling(
    shop: dict[str, TestClient], user_settings: Any
) -> None:
    """Logouts in a loop walk tokens_valid_from ahead of the clock, up to a ceiling
    (REVOKE_AHEAD_SECONDS); a token issued with an iat at the ceiling would outlive a
    logout in the same second (which cannot move it further). So none is issued there: the
    login waits (429), and a token issued just below it is ended by the next logout."""
    user_id, _ = await register(shop["user"], "ceiling@shop.test")

    async def valid_from(ahead: int) -> None:
        async with postgres(user_settings.database_url) as connection:
            await connection.execute(
                "UPDATE users SET tokens_valid_from = $2 WHERE id = $1",
                user_id,
                math.floor(time.time()) + ahead,
            )

    await valid_from(REVOKE_AHEAD_SECONDS + 1)  # as after ~31 logouts in a second
    body = {"email": "ceiling@shop.test", "password": PASSWORD}
    refused = await call(shop["user"], "POST", "/api/users/login", json=body, expected_status=429)
    assert refused["code"] == "too_many_sessions" and int(refused["error"].split()[-2]) >= 1
    await valid_from(REVOKE_AHEAD_SECONDS - 5)
    token = await log_in_with_api(shop["user"], "ceiling@shop.test", PASSWORD)
    await call(shop["user"], "POST", "/api/users/logout", headers=token, expected_status=200)
    await call(shop["user"], "GET", "/api/users/profile", headers=token, expected_status=401)
