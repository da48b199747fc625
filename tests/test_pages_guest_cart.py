"""A guest's cart on the pages: filled without an account, counted in every page's header,
merged into the account's cart at login or registration (also when logins and adds race,
at two gateways in front of two cart replicas), out of reach of anyone else, and pages
that still render when the cart service is down."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from support import (
    SHOPPER_PASSWORD,
    add_to_cart_with_form,
    admin_login_headers,
    assert_page_basics,
    call,
    change_stock,
    check_out_with_form,
    cookie_flags,
    cookie_header,
    create_product,
    get_page,
    raw,
    set_cookie,
    submit,
)

from shopctl import processes
from svc_cart.app import CartSettings
from svc_cart.app import create_app as create_cart_app
from svc_gateway.app import GatewaySettings
from svc_gateway.app import create_app as create_gateway_app
from svc_gateway.session import GUEST_COOKIE


async def register_with_api(client: TestClient, email: str) -> tuple[int, dict[str, str]]:
    """An account made through the gateway's API: its id and headers."""
    body = {"email": email, "password": SHOPPER_PASSWORD, "first_name": "Ann"}
    reply = await call(client, "POST", "/api/users/register", json=body, expected_status=201)
    return reply["data"]["user"]["id"], {"Authorization": f"Bearer {reply['data']['token']}"}


async def account_cart(client: TestClient, user_id: int, headers: dict[str, str]) -> dict[str, int]:
    reply = await call(client, "GET", f"/api/cart/{user_id}", headers=headers, expected_status=200)
    return {item["name"]: item["quantity"] for item in reply["data"]["items"]}


async def log_in_from_cart(client: TestClient, email: str) -> Any:
    """A guest on the cart page follows "Log in to check out" and logs in."""
    cart = await get_page(client, "/cart")
    assert any(a.attrs.get("href") == "/login?next=%2Fcart" for a in cart.tags("a")), cart.text
    login = await get_page(client, "/login?next=%2Fcart")
    return await submit(client, login, "/login", email=email, password=SHOPPER_PASSWORD)


def guest_cookie(client: TestClient) -> str | None:
    for cookie in client.session.cookie_jar:
        if cookie.key == GUEST_COOKIE:
            return cookie.value
    return None


@pytest.fixture
async def products_for_sale(web_shop: TestClient) -> dict[str, str]:
    """A mug (5 in stock), a lamp and a rug, by name: their ids."""
    admin = await admin_login_headers(web_shop)
    return {
        name: (await create_product(web_shop, admin, name=name, price=price, stock=stock))["id"]
        for name, price, stock in (("Mug", 12.5, 5), ("Lamp", 30, 50), ("Rug", 99.99, 50))
    }


async def test_a_guest_fills_a_cart_and_sees_the_count_on_every_page(
    web_shop: TestClient, products_for_sale: dict[str, str]
) -> None:
    home = await get_page(web_shop, "/")
    assert "(0 items in your cart)" in home.text
    assert guest_cookie(web_shop) is None  # nothing made before something is added

    product = await get_page(web_shop, f"/products/{products_for_sale['Mug']}")
    response = await web_shop.post(
        "/cart/items",
        data={**product.form("/cart/items").fields, "quantity": "2"},
        allow_redirects=False,
    )
    assert response.status == 303
    assert {"httponly", "samesite", "path", "max-age"} <= cookie_flags(
        cookie_header(response, GUEST_COOKIE)
    )
    added = await add_to_cart_with_form(web_shop, products_for_sale["Lamp"], 1)
    assert "success: Added 1 unit of Lamp to your cart." in added.flashes()
    for path in ("/", f"/products/{products_for_sale['Rug']}", "/login", "/register"):
        assert "(3 items in your cart)" in (await get_page(web_shop, path)).text, path

    cart = await get_page(web_shop, "/cart")
    assert_page_basics(cart, "Your cart")
    assert "Mug" in cart.text and "Lamp" in cart.text and "$55.00" in cart.text
    assert "Free standard delivery on this order." in cart.text  # from $50.00 of goods
    assert 'href="/checkout"' not in cart.html  # an order needs an account
    assert "Log in to check out" in cart.text

    changed = await submit(web_shop, cart, f"/cart/items/{products_for_sale['Mug']}", quantity=1)
    assert "(2 items in your cart)" in changed.text
    assert "Spend $7.50 more for free standard delivery ($4.95 until then)." in changed.text
    removed = await submit(web_shop, changed, f"/cart/items/{products_for_sale['Lamp']}/remove")
    assert "(1 item in your cart)" in removed.text
    # A form refused and shown again keeps the header's count.
    login = await get_page(web_shop, "/login")
    refused = await submit(
        web_shop, login, "/login", email="nobody@example.com", password="not the password",
        expected_status=401,
    )  # fmt: skip
    assert "(1 item in your cart)" in refused.text

    # Checking out as a guest leads to the login, and back to the cart.
    checkout = await web_shop.post("/checkout", data={"csrf_token": "x"}, allow_redirects=False)
    assert checkout.status in (303, 403)


async def test_logging_in_merges_the_guest_cart_into_the_account_cart(
    web_shop: TestClient, products_for_sale: dict[str, str]
) -> None:
    user_id, headers = await register_with_api(web_shop, "merge@shop.test")
    body = {"product_id": products_for_sale["Mug"], "quantity": 1}
    await call(
        web_shop,
        "POST",
        f"/api/cart/{user_id}/items",
        json=body,
        headers=headers,
        expected_status=200,
    )
    await add_to_cart_with_form(web_shop, products_for_sale["Mug"], 2)
    await add_to_cart_with_form(web_shop, products_for_sale["Rug"], 1)

    cart = await log_in_from_cart(web_shop, "merge@shop.test")
    assert cart.path == "/cart"
    assert "success: Welcome back, Ann." in cart.flashes()
    assert (
        "success: The 3 items you put in your cart before logging in are in it now."
        in cart.flashes()
    )
    assert await account_cart(web_shop, user_id, headers) == {"Mug": 3, "Rug": 1}
    assert "(4 items in your cart)" in cart.text and 'href="/checkout"' in cart.html
    assert guest_cookie(web_shop) is None

    # Logging out starts afresh: an empty guest cart, the account's untouched.
    await submit(web_shop, cart, "/logout")
    assert "(0 items in your cart)" in (await get_page(web_shop, "/")).text
    assert await account_cart(web_shop, user_id, headers) == {"Mug": 3, "Rug": 1}


async def test_a_merge_is_capped_at_the_stock_and_the_shopper_is_told(
    web_shop: TestClient, products_for_sale: dict[str, str]
) -> None:
    user_id, headers = await register_with_api(web_shop, "capped@shop.test")
    body = {"product_id": products_for_sale["Mug"], "quantity": 4}
    await call(
        web_shop,
        "POST",
        f"/api/cart/{user_id}/items",
        json=body,
        headers=headers,
        expected_status=200,
    )
    await add_to_cart_with_form(web_shop, products_for_sale["Mug"], 3)  # 5 in stock
    await add_to_cart_with_form(web_shop, products_for_sale["Lamp"], 2)

    cart = await log_in_from_cart(web_shop, "capped@shop.test")
    assert (
        "success: The 3 items you put in your cart before logging in are in it now."
        in cart.flashes()
    )
    assert (
        "info: Not everything from before you logged in could be added to your cart: "
        "Mug: 1 of 3 (that is all the stock)." in cart.flashes()
    )
    assert await account_cart(web_shop, user_id, headers) == {"Mug": 5, "Lamp": 2}


async def test_registering_merges_the_guest_cart(
    web_shop: TestClient, products_for_sale: dict[str, str]
) -> None:
    await add_to_cart_with_form(web_shop, products_for_sale["Lamp"], 2)
    cart = await get_page(web_shop, "/cart")
    register = await get_page(web_shop, "/register?next=%2Fcart")
    assert any(a.attrs.get("href") == "/register?next=%2Fcart" for a in cart.tags("a"))
    landed = await submit(
        web_shop,
        register,
        "/register",
        email="new@shop.test",
        first_name="Nia",
        last_name="Shopper",
        password=SHOPPER_PASSWORD,
        password_confirm=SHOPPER_PASSWORD,
    )
    assert landed.path == "/cart"
    assert (
        "success: The 2 items you put in your cart before logging in are in it now."
        in landed.flashes()
    )
    assert "Lamp" in landed.text and 'href="/checkout"' in landed.html
    placed = await check_out_with_form(web_shop)
    assert placed.path.endswith("/confirmation"), placed.text
    assert "(0 items in your cart)" in placed.text


# -- races: two gateways in front of two cart replicas, one browser's cookies at both ---------


@pytest.fixture
async def two_gateways(
    aiohttp_client: Any,
    aiohttp_server: Any,
    cart_settings: CartSettings,
    gateway_env: dict[str, str],
) -> list[TestClient]:
    """Two gateways, each in front of a cart replica of its own (one Redis)."""
    second_cart: TestServer = await aiohttp_server(create_cart_app(cart_settings))
    envs = [gateway_env, {**gateway_env, "CART_SERVICE_URL": str(second_cart.make_url(""))}]
    return [await aiohttp_client(create_gateway_app(GatewaySettings.from_env(env))) for env in envs]


def same_browser(source: TestClient, target: TestClient) -> None:
    """``target`` holds ``source``'s cookies (one browser whose requests reach two gateways)."""
    target.session.cookie_jar.clear()
    for cookie in source.session.cookie_jar:
        set_cookie(target, cookie.key, cookie.value)


async def login_form_fields(client: TestClient) -> dict[str, str]:
    return (await get_page(client, "/login?next=%2Fcart")).form("/login").fields


async def test_two_logins_at_once_from_one_browser_merge_its_cart_once(
    two_gateways: list[TestClient], products_for_sale: dict[str, str]
) -> None:
    first, second = two_gateways
    for attempt in range(3):
        email = f"twice{attempt}@shop.test"
        user_id, headers = await register_with_api(first, email)
        body = {"product_id": products_for_sale["Lamp"], "quantity": 1}
        await call(
            first,
            "POST",
            f"/api/cart/{user_id}/items",
            json=body,
            headers=headers,
            expected_status=200,
        )
        first.session.cookie_jar.clear()
        await add_to_cart_with_form(first, products_for_sale["Lamp"], 2)
        await add_to_cart_with_form(first, products_for_sale["Rug"], 1)
        fields = await login_form_fields(first)
        same_browser(first, second)
        credentials = {**fields, "email": email, "password": SHOPPER_PASSWORD}
        answers = await asyncio.gather(
            first.post("/login", data=credentials, allow_redirects=False),
            second.post("/login", data=credentials, allow_redirects=False),
        )
        assert [answer.status for answer in answers] == [303, 303], [
            (await answer.text())[-3000:] for answer in answers
        ]
        assert await account_cart(first, user_id, headers) == {"Lamp": 3, "Rug": 1}


async def test_an_add_racing_the_login_is_neither_lost_nor_counted_twice(
    two_gateways: list[TestClient], products_for_sale: dict[str, str]
) -> None:
    first, second = two_gateways
    for attempt in range(4):
        email = f"race{attempt}@shop.test"
        user_id, headers = await register_with_api(first, email)
        first.session.cookie_jar.clear()
        await add_to_cart_with_form(first, products_for_sale["Lamp"], 1)
        product = await get_page(first, f"/products/{products_for_sale['Rug']}")
        fields = await login_form_fields(first)
        same_browser(first, second)
        credentials = {**fields, "email": email, "password": SHOPPER_PASSWORD}
        adding = {**product.form("/cart/items").fields, "quantity": "2"}
        # The add's page was shown to the guest: its CSRF token is the guest's.
        answers = await asyncio.gather(
            first.post("/login", data=credentials, allow_redirects=False),
            second.post("/cart/items", data=adding, allow_redirects=False),
            second.post("/cart/items", data={**adding, "quantity": "3"}, allow_redirects=False),
        )
        assert [answer.status for answer in answers] == [303, 303, 303]
        assert await account_cart(first, user_id, headers) == {"Lamp": 1, "Rug": 5}


# -- nobody else reaches a guest cart ----------------------------------------------------------


async def test_a_guest_cart_is_not_reachable_from_another_browser_or_the_api(
    web_shop: TestClient, aiohttp_client: Any, products_for_sale: dict[str, str]
) -> None:
    await add_to_cart_with_form(web_shop, products_for_sale["Lamp"], 2)
    cookie = guest_cookie(web_shop)
    assert cookie is not None
    guest_id = cookie.split(".")[0]

    stranger = await aiohttp_client(web_shop.server)
    assert "(0 items in your cart)" in (await get_page(stranger, "/cart")).text
    set_cookie(stranger, GUEST_COOKIE, guest_id)  # the id without the shop's signature
    assert "(0 items in your cart)" in (await get_page(stranger, "/cart")).text
    set_cookie(stranger, GUEST_COOKIE, f"{'0' * 32}.{cookie.split('.')[1]}")  # another id
    assert "(0 items in your cart)" in (await get_page(stranger, "/cart")).text

    _, headers = await register_with_api(stranger, "stranger@shop.test")
    for path in (
        f"/api/cart/guest:{guest_id}",
        f"/api/cart/{guest_id}",
        f"/api/cart/guest%3A{guest_id}",
        f"/api/cart/%2e%2e/internal/guest-carts/{guest_id}",
        f"/api/cart/../internal/guest-carts/{guest_id}",
    ):
        answer = await raw(stranger, path, headers=headers)
        assert answer.status == 404, (path, answer.status, answer.text)
    page = await raw(stranger, f"/internal/guest-carts/{guest_id}", headers=headers)
    assert page.status == 404 and "Lamp" not in page.text
    assert "(2 items in your cart)" in (await get_page(web_shop, "/")).text


# -- the cart service down -------------------------------------------------------------------


async def test_pages_render_without_the_count_when_the_cart_service_is_down(
    web_shop: TestClient, shop_services: dict[str, TestServer], products_for_sale: dict[str, str]
) -> None:
    await add_to_cart_with_form(web_shop, products_for_sale["Lamp"], 2)
    await shop_services["cart"].close()
    for path in ("/", f"/products/{products_for_sale['Lamp']}", "/login"):
        page = await get_page(web_shop, path)
        assert "Cart" in page.text and "in your cart" not in page.text, path
    assert (await get_page(web_shop, "/cart", expected_status=503)).status == 503
    # A login then keeps the guest cart for later, and says so; the login itself works.
    _, _ = await register_with_api(web_shop, "down@shop.test")
    login = await get_page(web_shop, "/login")
    landed = await submit(
        web_shop, login, "/login", email="down@shop.test", password=SHOPPER_PASSWORD
    )
    assert "Welcome back" in landed.text
    assert any("could not be added to it just now" in flash for flash in landed.flashes())
    assert guest_cookie(web_shop) is not None


async def test_a_merge_that_failed_at_login_is_made_on_a_later_page(
    web_shop: TestClient,
    shop_services: dict[str, TestServer],
    products_for_sale: dict[str, str],
    aiohttp_server: Any,
    cart_settings: CartSettings,
) -> None:
    user_id, headers = await register_with_api(web_shop, "later@shop.test")
    await add_to_cart_with_form(web_shop, products_for_sale["Rug"], 1)
    cart_server = shop_services["cart"]
    port = cart_server.port
    await cart_server.close()
    login = await get_page(web_shop, "/login")
    await submit(web_shop, login, "/login", email="later@shop.test", password=SHOPPER_PASSWORD)

    # The cart service is back (same port): the next page merges, once.
    await aiohttp_server(create_cart_app(cart_settings), port=port)
    home = await get_page(web_shop, "/")
    assert (
        "success: The 1 item you put in your cart before logging in is in it now." in home.flashes()
    )
    assert "(1 item in your cart)" in home.text
    assert guest_cookie(web_shop) is None
    await get_page(web_shop, "/")
    assert await account_cart(web_shop, user_id, headers) == {"Rug": 1}


async def test_stock_checks_hold_for_a_guest(
    web_shop: TestClient, products_for_sale: dict[str, str]
) -> None:
    await add_to_cart_with_form(web_shop, products_for_sale["Mug"], 5)
    refused = await add_to_cart_with_form(web_shop, products_for_sale["Mug"], 1)
    assert any("Not enough stock" in flash for flash in refused.flashes()), refused.flashes()
    admin = await admin_login_headers(web_shop)
    await change_stock(web_shop, admin, products_for_sale["Mug"], -3)
    cart = await get_page(web_shop, "/cart")
    assert "Only 2 left in stock." in cart.text


async def test_the_cart_page_goes_on_without_the_delivery_line_when_orders_are_away(
    web_shop: TestClient,
    aiohttp_client: Any,
    gateway_env: dict[str, str],
    products_for_sale: dict[str, str],
) -> None:
    """The line on free delivery is the order service's to price: with that service away,
    the cart is shown all the same, without it."""
    await add_to_cart_with_form(web_shop, products_for_sale["Mug"], 1)
    nowhere = f"http://127.0.0.1:{processes.free_port()}"  # nothing listens
    without_orders = await aiohttp_client(
        create_gateway_app(GatewaySettings.from_env({**gateway_env, "ORDER_SERVICE_URL": nowhere}))
    )
    same_browser(web_shop, without_orders)
    cart = await get_page(without_orders, "/cart")
    assert "Mug" in cart.text and "(1 item in your cart)" in cart.text
    assert "delivery" not in cart.text.lower()
    assert "Spend $37.50 more" in (await get_page(web_shop, "/cart")).text
