"""The pages' defences and failure modes: CSRF, security headers, escaping, static files,
error pages, a backend that is down, and the gateway's session settings."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from support import (
    SHOPPER_PASSWORD,
    add_to_cart_with_form,
    admin_login_headers,
    assert_page_basics,
    call,
    create_product,
    get_page,
    log_in_as_admin_with_form,
    read_page,
    register_with_form,
    set_cookie,
    stock_of,
    submit,
)

from shopkit.settings import SettingsError
from svc_gateway.app import GatewaySettings
from svc_gateway.app import create_app as create_gateway_app

# -- CSRF ---------------------------------------------------------------------------------------


async def cart_lines(client: TestClient) -> str:
    page = await get_page(client, "/cart")
    return "empty" if "Your cart is empty." in page.text else page.text


async def test_a_form_without_the_right_csrf_token_is_refused_and_changes_nothing(
    web_shop: TestClient, aiohttp_client: Any
) -> None:
    admin = await admin_login_headers(web_shop)
    mug = await create_product(web_shop, admin, name="Mug", stock=5)
    await register_with_form(web_shop, "csrf@shop.test")
    page = await get_page(web_shop, f"/products/{mug['id']}")
    good = page.form("/cart/items").fields

    other = await aiohttp_client(web_shop.server)  # another browser, its own cookies
    await register_with_form(other, "mallory@shop.test")
    foreign = (await get_page(other, "/")).form("/logout").fields["csrf_token"]

    attempts = {
        "missing": {k: v for k, v in good.items() if k != "csrf_token"},
        "empty": {**good, "csrf_token": ""},
        "wrong": {**good, "csrf_token": "x" * 43},
        "another browser's": {**good, "csrf_token": foreign},
    }
    for why, data in attempts.items():
        response = await web_shop.post("/cart/items", data=data)
        refused = await read_page(response)
        assert refused.status == 403, why
        assert_page_basics(refused, "This form has expired")
        assert "nothing was changed" in refused.text
    assert await cart_lines(web_shop) == "empty"

    # A token made for one login is no good after logging in again.
    home = await get_page(web_shop, "/")
    old_token = home.form("/logout").fields["csrf_token"]
    await submit(web_shop, home, "/logout")
    await submit(
        web_shop,
        await get_page(web_shop, "/login"),
        "/login",
        email="csrf@shop.test",
        password=SHOPPER_PASSWORD,
    )
    stale = await web_shop.post("/cart/items", data={**good, "csrf_token": old_token})
    assert stale.status == 403

    # A JSON post (no form) to a page is refused the same way; logging out needs a token too.
    assert (await web_shop.post("/cart/items", json=good)).status == 403
    assert (await web_shop.post("/logout")).status == 403
    assert (await get_page(web_shop, "/")).has_form("/logout")  # still logged in
    added = await submit(
        web_shop, await get_page(web_shop, f"/products/{mug['id']}"), "/cart/items"
    )
    assert added.flashes() == ["success: Added 1 unit of Mug to your cart."]


async def test_a_login_form_needs_its_token_too(web_shop: TestClient) -> None:
    await register_with_form(web_shop, "login-csrf@shop.test")
    await submit(web_shop, await get_page(web_shop, "/"), "/logout")
    data = {"email": "login-csrf@shop.test", "password": SHOPPER_PASSWORD}
    response = await web_shop.post("/login", data=data)
    assert response.status == 403
    assert not (await get_page(web_shop, "/")).has_form("/logout")


async def test_admin_changes_need_the_token(web_shop: TestClient) -> None:
    admin = await admin_login_headers(web_shop)
    lamp = await create_product(web_shop, admin, name="Lamp", stock=5)
    await log_in_as_admin_with_form(web_shop)
    response = await web_shop.post(f"/admin/products/{lamp['id']}/stock", data={"quantity": "5"})
    assert response.status == 403
    response = await web_shop.post(f"/admin/products/{lamp['id']}/delete", data={})
    assert response.status == 403
    assert await stock_of(web_shop, lamp["id"]) == 5


# -- headers, escaping, static files ---------------------------------------------------------------


def assert_security_headers(headers: Any) -> None:
    policy = headers["Content-Security-Policy"]
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "frame-ancestors 'none'",
        "form-action 'self'",
        "base-uri 'self'",
    ):
        assert directive in policy, directive
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["X-Frame-Options"] == "DENY"


async def test_every_page_answer_carries_the_security_headers(web_shop: TestClient) -> None:
    home = await web_shop.get("/")
    assert_security_headers(home.headers)
    assert home.headers["Cache-Control"] == "no-store"
    assert_security_headers((await web_shop.get("/no/such/page")).headers)
    redirect = await web_shop.get("/orders", allow_redirects=False)
    assert redirect.status == 303
    assert_security_headers(redirect.headers)
    stylesheet = (await get_page(web_shop, "/")).tags("link")[0].attrs["href"]
    assert_security_headers((await web_shop.get(stylesheet)).headers)
    # The API is left as it was: JSON, no page headers.
    api = await web_shop.get("/api/products")
    assert api.content_type == "application/json"
    assert "Content-Security-Policy" not in api.headers


async def test_everything_a_page_loads_comes_from_the_gateway(web_shop: TestClient) -> None:
    admin = await admin_login_headers(web_shop)
    await create_product(web_shop, admin, name="Far Away", imageUrl="https://cdn.example/x.jpg")
    near = await create_product(web_shop, admin, name="Near By", imageUrl="/static/near.jpg")
    page = await get_page(web_shop, "/")
    sources = [e.attrs.get("src") or e.attrs.get("href") for e in page.elements]
    loaded = [
        e.attrs.get("src") or e.attrs.get("href", "")
        for e in page.elements
        if e.tag in ("img", "script", "link")
    ]
    for source in loaded:
        assert source.startswith(("/", "data:image/svg+xml,")), source
    assert "https://cdn.example/x.jpg" not in sources
    near_image = [e for e in page.tags("img") if e.attrs.get("src") == "/static/near.jpg"]
    assert near_image and near_image[0].attrs["data-fallback"].startswith("data:image/svg+xml,")
    assert near["imageUrl"] == "/static/near.jpg"


async def test_template_output_is_escaped(web_shop: TestClient) -> None:
    admin = await admin_login_headers(web_shop)
    evil = "<script>alert(1)</script>"
    product = await create_product(
        web_shop,
        admin,
        name=evil,
        description='<img src=x onerror="alert(2)">',
        category="<b>bold</b>",
        stock=5,
    )
    await register_with_form(web_shop, "escape@shop.test", first_name=evil)
    added = await add_to_cart_with_form(web_shop, product["id"], 1)
    pages = [
        await get_page(web_shop, "/"),
        await get_page(web_shop, "/?q=" + evil),
        added,
        await get_page(web_shop, "/cart"),
        await get_page(web_shop, "/profile"),
    ]
    for page in pages:
        assert (
            evil not in page.html and "<img src=x" not in page.html and "<b>bold" not in page.html
        )
        assert page.inline_scripts == 0
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0].html
    assert evil in pages[0].text and evil in pages[2].text  # shown as text
    assert "Added 1 unit of <script>alert(1)</script> to your cart." in added.flashes()[0]


async def test_static_files_have_hashed_names_and_cache_for_a_year(web_shop: TestClient) -> None:
    page = await get_page(web_shop, "/")
    urls = {
        e.attrs.get("href") or e.attrs.get("src") for e in page.tags("link") + page.tags("script")
    }
    kinds = {"css": "text/css", "js": "text/javascript", "svg": "image/svg+xml"}
    for url in urls:
        match = re.fullmatch(r"/static/(\w+)\.([0-9a-f]{12})\.(css|js|svg)", url)
        assert match, url
        response = await web_shop.get(url)
        body = await response.read()
        assert response.status == 200
        assert response.content_type == kinds[match[3]]
        assert hashlib.sha256(body).hexdigest()[:12] == match[2]
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        again = await web_shop.get(url, headers={"If-None-Match": response.headers["ETag"]})
        assert again.status == 304 and await again.read() == b""
        unhashed = f"/static/{match[1]}.{match[3]}"
        assert (await web_shop.get(unhashed)).status == 404
    assert {url.rsplit(".", 1)[1] for url in urls} == {"css", "js", "svg"}
    assert (await web_shop.get("/static/shop.000000000000.css")).status == 404


# -- error pages ---------------------------------------------------------------------------------


async def test_pages_answer_html_errors_and_the_api_keeps_its_json(web_shop: TestClient) -> None:
    missing = await get_page(web_shop, "/no/such/page", expected_status=404)
    assert_page_basics(missing, "Page not found")
    assert "There is no page at this address." in missing.text
    not_allowed = await web_shop.delete("/cart")
    assert not_allowed.status == 405 and not_allowed.content_type == "text/html"
    assert "GET" in not_allowed.headers["Allow"]
    await call(web_shop, "GET", "/api/nothing/here", expected_status=404)
    await call(web_shop, "GET", "/api/products/" + "0" * 24, expected_status=404)
    health = await call(web_shop, "GET", "/health", expected_status=200)
    assert health["data"]["service"] == "gateway"


async def test_a_backend_that_is_down_is_a_503_page(
    web_shop: TestClient, shop_services: dict[str, TestServer]
) -> None:
    await register_with_form(web_shop, "down@shop.test")
    await shop_services["product"].close()
    page = await get_page(web_shop, "/", expected_status=503)
    assert_page_basics(page, "Temporarily unavailable")
    assert "The product service is unavailable right now" in page.text
    assert page.headers["Retry-After"] == "5"
    assert '"success"' not in page.html and "Traceback" not in page.html
    await shop_services["cart"].close()
    cart = await get_page(web_shop, "/cart", expected_status=503)
    assert "The cart service is unavailable right now" in cart.text
    await shop_services["order"].close()
    orders = await get_page(web_shop, "/orders", expected_status=503)
    assert "order service" in orders.text
    body = await call(web_shop, "GET", "/api/products", expected_status=503)
    assert body["code"] == "upstream_unavailable"
    assert_page_basics(
        await get_page(web_shop, "/profile"), "Your profile"
    )  # the user service is up


async def test_a_gateway_without_backends_says_so_on_its_pages(aiohttp_client: Any) -> None:
    gateway = await aiohttp_client(create_gateway_app(GatewaySettings.from_env({})))
    page = await get_page(gateway, "/", expected_status=503)
    assert "The product service is not configured on this gateway." in page.text


# -- sessions across gateways ----------------------------------------------------------------------


async def test_a_gateway_without_jwt_secret_still_knows_who_is_logged_in(
    aiohttp_client: Any, gateway_env: dict[str, str]
) -> None:
    env = {name: value for name, value in gateway_env.items() if name != "JWT_SECRET"}
    gateway = await aiohttp_client(create_gateway_app(GatewaySettings.from_env(env)))
    home = await register_with_form(gateway, "nosecret@shop.test")
    assert home.has_form("/logout") and "nosecret@shop.test" in home.text
    assert (await get_page(gateway, "/cart")).title.startswith("Your cart")


async def test_replicas_sharing_session_secret_accept_each_others_forms(
    aiohttp_client: Any, gateway_env: dict[str, str]
) -> None:
    env = {**gateway_env, "SESSION_SECRET": "s" * 40}
    first = await aiohttp_client(create_gateway_app(GatewaySettings.from_env(env)))
    second = await aiohttp_client(create_gateway_app(GatewaySettings.from_env(env)))
    page = await get_page(first, "/register")
    nonce = first.session.cookie_jar.filter_cookies(first.make_url("/"))["shop_csrf"].value
    set_cookie(second, "shop_csrf", nonce)
    data = {
        **page.form("/register").fields,
        "email": "replica@shop.test",
        "password": SHOPPER_PASSWORD,
        "password_confirm": SHOPPER_PASSWORD,
    }
    response = await second.post("/register", data=data, allow_redirects=False)
    assert response.status == 303

    other_env = {**gateway_env, "SESSION_SECRET": "t" * 40}
    third = await aiohttp_client(create_gateway_app(GatewaySettings.from_env(other_env)))
    set_cookie(third, "shop_csrf", nonce)
    assert (await third.post("/register", data=data)).status == 403


def test_a_short_session_secret_stops_the_gateway_without_echoing_it() -> None:
    with pytest.raises(SettingsError) as caught:
        GatewaySettings.from_env({"SESSION_SECRET": "too-short-secret"})
    assert "SESSION_SECRET" in str(caught.value) and "too-short-secret" not in str(caught.value)


async def test_a_flash_cookie_the_gateway_did_not_sign_is_ignored(web_shop: TestClient) -> None:
    payload = base64.urlsafe_b64encode(json.dumps([["error", "Send us your password"]]).encode())
    set_cookie(web_shop, "shop_flash", payload.decode().rstrip("=") + ".forged")
    response = await web_shop.get("/")
    page = await read_page(response)
    assert page.flashes() == [] and "Send us your password" not in page.text
    assert 'shop_flash=""' in response.headers["Set-Cookie"]
