"""The shop's pages, server side: a client of the gateway in front of every real service,
driving the pages through their forms as a browser would (cookies kept, redirects followed,
the CSRF token read from the HTML)."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import unquote, urlencode

from aiohttp.test_utils import TestClient
from support import (
    CHECKOUT_DETAILS,
    JWT_SECRET,
    SHOPPER_PASSWORD,
    Page,
    add_to_cart_with_form,
    admin_login_headers,
    assert_page_basics,
    change_stock,
    check_out_with_form,
    checkout_form,
    cookie_flags,
    cookie_header,
    create_product,
    eventually,
    get_page,
    log_in_as_admin_with_form,
    log_in_with_form,
    read_page,
    register_with_form,
    set_cookie,
    stock_of,
    submit,
)

from shopkit.auth import issue_token

# -- every page renders --------------------------------------------------------------------------


async def test_every_page_renders_with_its_title_and_landmarks(web_shop: TestClient) -> None:
    admin = await admin_login_headers(web_shop)
    mug = await create_product(web_shop, admin, name="Enamel Mug", price=12.5, stock=10)
    anonymous = {
        "/": "Catalogue",
        f"/products/{mug['id']}": "Enamel Mug",
        "/login": "Log in",
        "/register": "Create an account",
        "/?q=mug": "Search: mug",
        "/?category=kitchen": "Kitchen",
    }
    for path, title in anonymous.items():
        assert_page_basics(await get_page(web_shop, path), title)

    await register_with_form(web_shop, "ann@shop.test")
    await add_to_cart_with_form(web_shop, mug["id"], 2)
    cart = await get_page(web_shop, "/cart")
    assert_page_basics(cart, "Your cart")
    assert_page_basics(await get_page(web_shop, "/checkout"), "Checkout")
    placed = await check_out_with_form(web_shop)
    order_id = re.fullmatch(r"/orders/(\d+)/confirmation", placed.path)[1]
    shopper = {
        f"/orders/{order_id}/confirmation": "Thank you for your order",
        "/orders": "My orders",
        f"/orders/{order_id}": f"Order #{order_id}",
        "/profile": "Your profile",
        "/cart": "Your cart",  # empty now
    }
    for path, title in shopper.items():
        assert_page_basics(await get_page(web_shop, path), title)

    await submit(web_shop, await get_page(web_shop, "/"), "/logout")
    await log_in_as_admin_with_form(web_shop)
    admin_pages = {
        "/admin/products": "Manage products",
        "/admin/products/new": "New product",
        f"/admin/products/{mug['id']}/edit": "Edit Enamel Mug",
        "/admin/orders": "Manage orders",
        "/admin/orders?status=pending": "Manage orders",
        f"/orders/{order_id}": f"Order #{order_id}",
    }
    for path, title in admin_pages.items():
        assert_page_basics(await get_page(web_shop, path), title)


async def test_prices_and_totals_are_exact(web_shop: TestClient) -> None:
    admin = await admin_login_headers(web_shop)
    shirt = await create_product(web_shop, admin, name="Shirt", price=19.99, stock=9)
    clip = await create_product(web_shop, admin, name="Clip", price=0.1, stock=9)
    await register_with_form(web_shop, "exact@shop.test")
    await add_to_cart_with_form(web_shop, shirt["id"], 3)
    await add_to_cart_with_form(web_shop, clip["id"], 3)
    cart = await get_page(web_shop, "/cart")
    assert "$59.97" in cart.text and "$0.30" in cart.text and "$60.27" in cart.text
    confirmation = await check_out_with_form(web_shop, delivery="express")
    assert "$70.22" in confirmation.text  # 60.27 + 9.95 express delivery
    # The order as kept: each line's subtotal and the total, to the cent, with no float's
    # trail (0.1 * 3 is 0.30000000000000004 in binary floating point).
    order = await get_page(web_shop, confirmation.path.removesuffix("/confirmation"))
    # The total, and what the card holds.
    assert re.findall(r"\$\d[\d,]*\.\d+", order.text).count("$70.22") == 2
    assert "$59.97" in order.text and "$0.30" in order.text and "$60.27" in order.text
    assert "0000" not in order.text


# -- browsing --------------------------------------------------------------------------------------


async def test_search_filters_sort_and_pages_that_keep_the_filters(web_shop: TestClient) -> None:
    admin = await admin_login_headers(web_shop)
    for number in range(15):
        await create_product(
            web_shop, admin, name=f"Kettle {number:02}", price=10 + number, category="kitchen"
        )
    await create_product(web_shop, admin, name="Empty Kettle", price=5, stock=0, category="kitchen")
    await create_product(web_shop, admin, name="Rake", price=20, category="garden")

    home = await get_page(web_shop, "/")
    assert "Kitchen (16 products)" in home.text and "Garden (1 product)" in home.text
    assert "17 products" in home.text

    searched = await get_page(web_shop, "/?q=kettle")
    assert "16 products" in searched.text and "Rake" not in searched.text
    assert searched.form("/", "Filter products").fields["q"] == "kettle"  # kept by the filters

    path = "/?category=kitchen&minPrice=12&maxPrice=30&inStock=true&sort=-price"
    filtered = await get_page(web_shop, path)
    names = re.findall(r'class="product-card__name"><a href="[^"]+">([^<]+)</a>', filtered.html)
    assert names[:3] == ["Kettle 14", "Kettle 13", "Kettle 12"]
    assert "Empty Kettle" not in filtered.text and "13 products" in filtered.text
    fields = filtered.form("/", "Filter products").fields
    assert fields == {
        "category": "kitchen",
        "minPrice": "12",
        "maxPrice": "30",
        "inStock": "true",
        "sort": "-price",
    }
    next_links = [a.attrs["href"] for a in filtered.tags("a") if a.attrs.get("rel") == "next"]
    assert next_links, "no link to the next page"
    second = await get_page(web_shop, next_links[0].replace("&amp;", "&"))
    for kept in ("category=kitchen", "minPrice=12", "maxPrice=30", "inStock=true", "sort=-price"):
        assert kept in second.path
    assert "page=2" in second.path and "Kettle 02" in second.text
    assert "page 2 of 2" in second.text


async def test_a_filter_the_api_refuses_is_a_message_not_an_error(web_shop: TestClient) -> None:
    page = await get_page(web_shop, "/?minPrice=cheap&maxPrice=1")
    assert 'role="alert"' in page.html and "Lowest price" in page.text
    assert '"success"' not in page.html  # no raw JSON
    page = await get_page(web_shop, "/?minPrice=9&maxPrice=1")
    assert "minPrice must not be above maxPrice" in page.text


async def test_a_product_page_offers_a_quantity_picker_while_in_stock(
    web_shop: TestClient,
) -> None:
    admin = await admin_login_headers(web_shop)
    lamp = await create_product(web_shop, admin, name="Lamp", price=30, stock=4)
    gone = await create_product(web_shop, admin, name="Vase", price=30, stock=0)
    anonymous = await get_page(web_shop, f"/products/{lamp['id']}")
    assert anonymous.has_form("/cart/items")  # a guest fills a cart too
    await register_with_form(web_shop, "picker@shop.test")
    page = await get_page(web_shop, f"/products/{lamp['id']}")
    quantity = next(e for e in page.tags("input") if e.attrs.get("name") == "quantity")
    assert (quantity.attrs["min"], quantity.attrs["max"]) == ("1", "4")
    assert "$30.00" in page.text and "Only 4 left" in page.text
    sold_out = await get_page(web_shop, f"/products/{gone['id']}")
    assert not sold_out.has_form("/cart/items") and "out of stock" in sold_out.text
    missing = await get_page(web_shop, "/products/" + "0" * 24, expected_status=404)
    assert "could not find that product" in missing.text
    await get_page(web_shop, "/products/not-an-id", expected_status=404)


# -- accounts -------------------------------------------------------------------------------------


async def test_register_log_out_and_log_in_set_and_clear_the_cookie(web_shop: TestClient) -> None:
    page = await get_page(web_shop, "/register")
    data = {
        **page.form("/register").fields,
        "email": "Cookie@Shop.test",
        "first_name": "Ann",
        "password": SHOPPER_PASSWORD,
        "password_confirm": SHOPPER_PASSWORD,
    }
    response = await web_shop.post("/register", data=data, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/"
    session = cookie_header(response, "shop_session")
    assert {"httponly", "samesite", "path", "max-age"} <= cookie_flags(session)
    assert "SameSite=Lax" in session and "Path=/" in session and "Max-Age=86400" in session
    assert "secure" not in cookie_flags(session)  # plain HTTP here
    home = await get_page(web_shop, "/")
    assert home.flashes() == ["success: Welcome, Ann! Your account is ready."]
    assert home.has_form("/logout") and "cookie@shop.test" in home.text

    response = await web_shop.post(
        "/logout", data=home.form("/logout").fields, allow_redirects=False
    )
    assert response.status == 303
    cleared = cookie_header(response, "shop_session")
    assert cleared.startswith('shop_session=""') and "Max-Age=0" in cleared
    home = await get_page(web_shop, "/")
    assert not home.has_form("/logout") and "You have logged out" in home.text

    wrong = await log_in_page_post(web_shop, "cookie@shop.test", "not the password", 401)
    assert "The email or password is incorrect." in wrong.text
    assert not wrong.has_form("/logout")
    back = await log_in_with_form(web_shop, "  COOKIE@shop.test ", SHOPPER_PASSWORD)
    assert back.flashes() == ["success: Welcome back, Ann."] and back.has_form("/logout")


async def log_in_page_post(
    client: TestClient, email: str, password: str, expected_status: int
) -> Page:
    page = await get_page(client, "/login")
    return await submit(
        client, page, "/login", email=email, password=password, expected_status=expected_status
    )


async def test_cookies_are_secure_behind_an_https_proxy(web_shop: TestClient) -> None:
    https = {"X-Forwarded-Proto": "https"}
    response = await web_shop.get("/register", headers=https)
    nonce_cookie = cookie_header(response, "shop_csrf")
    assert {"secure", "httponly", "samesite"} <= cookie_flags(nonce_cookie)
    # The client, on plain HTTP, keeps Secure cookies to itself: hand the nonce back as the
    # browser would over HTTPS.
    nonce = nonce_cookie.split(";")[0].split("=", 1)[1]
    set_cookie(web_shop, "shop_csrf", nonce)
    page = await read_page(response)
    data = {
        **page.form("/register").fields,
        "email": "secure@shop.test",
        "password": SHOPPER_PASSWORD,
        "password_confirm": SHOPPER_PASSWORD,
    }
    response = await web_shop.post("/register", data=data, headers=https, allow_redirects=False)
    assert response.status == 303
    for name in ("shop_session", "shop_csrf", "shop_flash"):
        assert "secure" in cookie_flags(cookie_header(response, name)), name


async def test_registration_problems_are_shown_next_to_the_fields(web_shop: TestClient) -> None:
    page = await get_page(web_shop, "/register")
    short = await submit(
        web_shop,
        page,
        "/register",
        email="not-an-email",
        password="short",
        password_confirm="short",
        expected_status=400,
    )
    assert 'id="f-email-error"' in short.html and 'aria-invalid="true"' in short.html
    assert "such as ann@example.com" in short.text
    assert short.form("/register").fields["email"] == "not-an-email"  # kept for correcting
    assert short.form("/register").fields["password"] == ""  # passwords never echoed
    mismatch = await submit(
        web_shop,
        page,
        "/register",
        email="twin@shop.test",
        password=SHOPPER_PASSWORD,
        password_confirm=SHOPPER_PASSWORD + "!",
        expected_status=400,
    )
    assert "The two passwords are not the same." in mismatch.text
    await register_with_form(web_shop, "taken@shop.test")
    await submit(web_shop, await get_page(web_shop, "/"), "/logout")
    taken = await submit(
        web_shop,
        await get_page(web_shop, "/register"),
        "/register",
        email="taken@shop.test",
        password=SHOPPER_PASSWORD,
        password_confirm=SHOPPER_PASSWORD,
        expected_status=400,
    )
    assert "An account with this email already exists." in taken.text


async def test_pages_that_need_a_login_send_you_back_after_it(web_shop: TestClient) -> None:
    await register_with_form(web_shop, "later@shop.test")
    await submit(web_shop, await get_page(web_shop, "/"), "/logout")
    response = await web_shop.get("/orders", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/login?next=%2Forders"
    login = await get_page(web_shop, "/orders")
    assert unquote(login.path) == "/login?next=/orders"
    assert "Log in to see your orders." in login.text
    orders = await submit(
        web_shop, login, "/login", email="later@shop.test", password=SHOPPER_PASSWORD
    )
    assert orders.path == "/orders" and orders.title.startswith("My orders")


async def test_after_login_only_paths_on_this_site_are_followed(web_shop: TestClient) -> None:
    await register_with_form(web_shop, "nowhere@shop.test")
    await submit(web_shop, await get_page(web_shop, "/"), "/logout")
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        page = await get_page(web_shop, "/login?" + urlencode({"next": target}))
        data = {
            **page.form("/login").fields,
            "email": "nowhere@shop.test",
            "password": SHOPPER_PASSWORD,
        }
        response = await web_shop.post("/login", data=data, allow_redirects=False)
        assert response.headers["Location"] == "/", target
        home = await get_page(web_shop, "/")
        await submit(web_shop, home, "/logout")


async def test_a_cookie_that_is_not_a_valid_token_means_logged_out(web_shop: TestClient) -> None:
    set_cookie(web_shop, "shop_session", "not.a.token")
    response = await web_shop.get("/", allow_redirects=False)
    assert response.status == 200
    assert cookie_header(response, "shop_session").startswith('shop_session=""')
    assert "Log in" in (await read_page(response)).text


async def test_a_token_whose_account_is_gone_ends_the_session(web_shop: TestClient) -> None:
    token = issue_token(JWT_SECRET, sub="424242424242", email="gone@shop.test", role="customer")
    set_cookie(web_shop, "shop_session", token)
    page = await get_page(web_shop, "/profile")
    assert unquote(page.path) == "/login?next=/profile"
    assert "Your session has ended; please log in again." in page.text


async def test_profile_names_and_password(web_shop: TestClient) -> None:
    await register_with_form(web_shop, "profile@shop.test")
    profile = await get_page(web_shop, "/profile")
    assert profile.form("/profile").fields == {
        "csrf_token": profile.form("/profile").fields["csrf_token"],
        "first_name": "Ann",
        "last_name": "Shopper",
    }
    saved = await submit(web_shop, profile, "/profile", first_name="Annie", last_name="Smith")
    assert saved.flashes() == ["success: Your name is saved."]
    assert saved.form("/profile").fields["first_name"] == "Annie"

    wrong = await submit(
        web_shop,
        saved,
        "/profile/password",
        current_password="not it",
        password="brand-new-secret",
        password_confirm="brand-new-secret",
        expected_status=400,
    )
    assert "This is not your current password." in wrong.text
    too_short = await submit(
        web_shop,
        saved,
        "/profile/password",
        current_password=SHOPPER_PASSWORD,
        password="short",
        password_confirm="short",
        expected_status=400,
    )
    assert 'id="pw-password-error"' in too_short.html
    changed = await submit(
        web_shop,
        saved,
        "/profile/password",
        current_password=SHOPPER_PASSWORD,
        password="brand-new-secret",
        password_confirm="brand-new-secret",
    )
    assert changed.flashes() == ["success: Your password is changed."]
    await submit(web_shop, changed, "/logout")
    await log_in_page_post(web_shop, "profile@shop.test", SHOPPER_PASSWORD, 401)
    assert (await log_in_with_form(web_shop, "profile@shop.test", "brand-new-secret")).has_form(
        "/logout"
    )


async def test_the_address_book_through_its_forms(web_shop: TestClient) -> None:
    await register_with_form(web_shop, "addresses@shop.test")
    book = await get_page(web_shop, "/profile/addresses")
    assert_page_basics(book, "Your addresses")
    assert "You have no addresses yet." in book.text
    form = book.form("/profile/addresses")
    assert form.fields["country"] == ""  # chosen by the shopper, never guessed
    assert '<option value="GB">United Kingdom</option>' in book.html

    # A mistake is shown next to its field, with what was typed kept.
    typed = {"recipient": "Ann Lee", "line1": "10 Downing Street", "city": "London"}
    wrong = await submit(
        web_shop,
        book,
        "/profile/addresses",
        **typed,
        postal_code="SW1A!",
        country="GB",
        expected_status=400,
    )
    assert 'id="address-postal_code-error"' in wrong.html
    assert wrong.form("/profile/addresses").fields["line1"] == "10 Downing Street"
    saved = await submit(
        web_shop, wrong, "/profile/addresses", **typed, postal_code="sw1a 2aa", country="GB"
    )
    assert saved.path == "/profile/addresses"
    assert saved.flashes() == ["success: Your address “10 Downing Street” is saved."]
    assert "SW1A 2AA" in saved.text and "United Kingdom" in saved.text

    [change] = [a for a in saved.tags("a") if a.attrs.get("href", "").endswith("/edit")]
    edit = await get_page(web_shop, change.attrs["href"])
    assert_page_basics(edit, "Change an address")
    action = change.attrs["href"].removesuffix("/edit")
    fields = {k: v for k, v in edit.form(action).fields.items() if k != "csrf_token"}
    assert fields["postal_code"] == "SW1A 2AA" and fields["country"] == "GB"
    changed = await submit(web_shop, edit, action, **{**fields, "label": "Home"})
    assert changed.flashes() == ["success: Your address “Home” is changed."]

    removed = await submit(web_shop, changed, f"{action}/remove")
    assert removed.flashes() == ["success: The address is removed."]
    assert "You have no addresses yet." in removed.text
    # Gone, or never an address: the 404 page, as for an order.
    for path in (f"{action}/edit", "/profile/addresses/x/edit", "/profile/addresses/0/edit"):
        gone = await get_page(web_shop, path, expected_status=404)
        assert "We could not find that address" in gone.text


# -- the cart, checkout and orders ----------------------------------------------------------------


async def test_the_whole_shopper_flow_through_the_forms(web_shop: TestClient) -> None:
    admin = await admin_login_headers(web_shop)
    shirt = await create_product(
        web_shop, admin, name="Linen Shirt", price=19.99, stock=5, category="clothing"
    )
    socks = await create_product(
        web_shop, admin, name="Wool Socks", price=4.5, stock=10, category="clothing"
    )
    await create_product(web_shop, admin, name="Teapot", price=25, stock=3, category="kitchen")

    await register_with_form(web_shop, "flow@shop.test")
    found = await get_page(web_shop, "/?q=shirt")
    assert "Linen Shirt" in found.text and "Wool Socks" not in found.text
    clothing = await get_page(web_shop, "/?category=clothing")
    assert "Linen Shirt" in clothing.text and "Teapot" not in clothing.text

    added = await add_to_cart_with_form(web_shop, shirt["id"], 1)
    assert added.flashes() == ["success: Added 1 unit of Linen Shirt to your cart."]
    await add_to_cart_with_form(web_shop, socks["id"], 2)
    cart = await get_page(web_shop, "/cart")
    assert "$28.99" in cart.text  # 19.99 + 2 x 4.50

    changed = await submit(web_shop, cart, f"/cart/items/{shirt['id']}", quantity=3)
    assert changed.flashes() == ["success: You now have 3 of Linen Shirt in your cart."]
    assert "$59.97" in changed.text and "$68.97" in changed.text  # 3 x 19.99 + 9.00
    removed = await submit(web_shop, changed, f"/cart/items/{socks['id']}/remove")
    assert "Wool Socks" not in removed.text.replace("Removed it", "")
    await add_to_cart_with_form(web_shop, socks["id"], 1)

    confirmation = await check_out_with_form(web_shop)
    order_id = re.fullmatch(r"/orders/(\d+)/confirmation", confirmation.path)[1]
    assert "Thank you for your order!" in confirmation.text
    assert "$64.47" in confirmation.text  # 59.97 + 4.50, delivery free from 50.00
    assert "Visa ending 4242" in confirmation.text and "1 High Street" in confirmation.text
    assert await stock_of(web_shop, shirt["id"]) == 2
    assert await stock_of(web_shop, socks["id"]) == 9
    assert "Your cart is empty." in (await get_page(web_shop, "/cart")).text

    orders = await get_page(web_shop, "/orders")
    assert f"Order #{order_id}" in orders.text and "Pending" in orders.text
    detail = await get_page(web_shop, f"/orders/{order_id}")
    assert "Linen Shirt" in detail.text and "$59.97" in detail.text and "History" in detail.text
    cancelled = await submit(web_shop, detail, f"/orders/{order_id}/cancel")
    assert cancelled.flashes() == [f"success: Order #{order_id} is cancelled."]
    assert "Cancelled" in cancelled.text and not cancelled.has_form(f"/orders/{order_id}/cancel")
    assert len(re.findall(r'class="status status--', cancelled.html)) == 3  # badge + 2 steps
    assert await stock_of(web_shop, shirt["id"]) == 5
    assert await stock_of(web_shop, socks["id"]) == 10

    emptied = await submit(
        web_shop, await add_to_cart_with_form(web_shop, socks["id"], 1), "/logout"
    )
    await log_in_with_form(web_shop, "flow@shop.test", SHOPPER_PASSWORD)
    cart = await get_page(web_shop, "/cart")
    cleared = await submit(web_shop, cart, "/cart/clear")
    assert cleared.flashes() == ["success: Your cart is empty now."] and emptied.status == 200


async def test_a_double_submitted_checkout_buys_once(web_shop: TestClient) -> None:
    admin = await admin_login_headers(web_shop)
    mug = await create_product(web_shop, admin, name="Mug", price=8, stock=10)
    await register_with_form(web_shop, "twice@shop.test")
    await add_to_cart_with_form(web_shop, mug["id"], 2)
    data = await checkout_form(web_shop)
    assert len(data["idempotency_key"]) >= 16

    # Two clicks at once, then the refresh of the POST: one order, bought once.
    first, second = await asyncio.gather(
        web_shop.post("/checkout", data=data, allow_redirects=False),
        web_shop.post("/checkout", data=data, allow_redirects=False),
    )
    again = await web_shop.post("/checkout", data=data, allow_redirects=False)
    locations = {first.headers["Location"], second.headers["Location"], again.headers["Location"]}
    assert len(locations) == 1 and locations.pop().endswith("/confirmation")
    assert await stock_of(web_shop, mug["id"]) == 8
    assert (await get_page(web_shop, "/orders")).text.count("Order #") == 1

    # The new address was kept once; a new showing of the checkout is a new checkout.
    book = await get_page(web_shop, "/profile/addresses")
    kept = [a for a in book.tags("a") if a.attrs.get("href", "").endswith("/edit")]
    assert len(kept) == 1 and "1 High Street" in book.text
    await add_to_cart_with_form(web_shop, mug["id"], 1)
    fresh = await checkout_form(web_shop)
    assert fresh["idempotency_key"] != data["idempotency_key"]
    placed = await read_page(await web_shop.post("/checkout", data=fresh))
    assert placed.path.endswith("/confirmation")
    assert (await get_page(web_shop, "/orders")).text.count("Order #") == 2


async def test_two_tabs_checking_out_one_cart_buy_it_once(web_shop: TestClient) -> None:
    """Each tab's showing of the cart has its own key, so the key cannot tell the two apart:
    the cart's claim does. One tab gets the confirmation, the other a sentence."""
    admin = await admin_login_headers(web_shop)
    lamp = await create_product(web_shop, admin, name="Desk Lamp", price=40, stock=10)
    await register_with_form(web_shop, "tabs@shop.test")
    await add_to_cart_with_form(web_shop, lamp["id"], 3)
    tabs = [await checkout_form(web_shop) for _ in range(2)]
    assert tabs[0]["idempotency_key"] != tabs[1]["idempotency_key"]

    answers = await asyncio.gather(
        *(web_shop.post("/checkout", data=data, allow_redirects=False) for data in tabs)
    )
    confirmation, refusal = sorted(
        (answer.headers["Location"] for answer in answers), key=lambda to: to == "/cart"
    )
    assert confirmation.endswith("/confirmation") and refusal == "/cart"
    told = (await get_page(web_shop, "/cart")).flashes()
    assert told in (
        [
            "error: Your cart is already being checked out, in another tab or window perhaps. "
            "Look at your orders before you try again: nothing more was bought."
        ],
        ["error: Your cart is empty: add something first."],  # the first tab was done
    )
    assert await stock_of(web_shop, lamp["id"]) == 7
    assert (await get_page(web_shop, "/orders")).text.count("Order #") == 1


async def test_short_stock_is_said_plainly_and_buys_nothing(web_shop: TestClient) -> None:
    admin = await admin_login_headers(web_shop)
    lamp = await create_product(web_shop, admin, name="Desk Lamp", price=40, stock=3)
    await register_with_form(web_shop, "short@shop.test")
    await add_to_cart_with_form(web_shop, lamp["id"], 3)
    too_many = await add_to_cart_with_form(web_shop, lamp["id"], 1)
    assert too_many.flashes() == ["error: Not enough stock: 3 left, and your cart already holds 3."]
    await change_stock(web_shop, admin, lamp["id"], -2)
    cart = await get_page(web_shop, "/cart")
    assert "Some items are short of stock." in cart.text and "Only 1 left in stock." in cart.text
    assert 'href="/checkout"' not in cart.html
    sent_back = await get_page(web_shop, "/checkout")
    assert sent_back.path == "/cart"
    assert sent_back.flashes() == [
        "error: Some items are short of stock: lower their quantities first."
    ]
    # Stock that runs short while the checkout form is open: refused, nothing bought.
    fixed = await submit(web_shop, sent_back, f"/cart/items/{lamp['id']}", quantity=1)
    assert "short of stock" not in fixed.text
    form = await checkout_form(web_shop)
    await change_stock(web_shop, admin, lamp["id"], -1)
    refused = await read_page(await web_shop.post("/checkout", data=form))
    assert refused.path == "/cart"
    assert refused.flashes() == ["error: Not enough stock of 'Desk Lamp': 0 left, 1 asked for."]
    assert await stock_of(web_shop, lamp["id"]) == 0
    assert "not ordered anything yet" in (await get_page(web_shop, "/orders")).text
    await change_stock(web_shop, admin, lamp["id"], 1)
    assert (await check_out_with_form(web_shop)).path.endswith("/confirmation")


async def test_an_empty_cart_cannot_be_checked_out(web_shop: TestClient) -> None:
    await register_with_form(web_shop, "empty@shop.test")
    home = await get_page(web_shop, "/")
    token = home.form("/logout").fields["csrf_token"]
    assert (await get_page(web_shop, "/checkout")).flashes() == [
        "info: Your cart is empty: add something to check out."
    ]
    data = {"csrf_token": token, "idempotency_key": "k" * 32, **CHECKOUT_DETAILS}
    page = await read_page(await web_shop.post("/checkout", data=data))
    assert page.path == "/cart"
    assert page.flashes() == ["error: Your cart is empty: add something first."]


async def test_other_peoples_orders_are_not_found(
    web_shop: TestClient, aiohttp_client: Any
) -> None:
    admin = await admin_login_headers(web_shop)
    mug = await create_product(web_shop, admin, stock=5)
    await register_with_form(web_shop, "owner@shop.test")
    await add_to_cart_with_form(web_shop, mug["id"], 1)
    placed = await check_out_with_form(web_shop)
    order_path = placed.path.removesuffix("/confirmation")

    other = await aiohttp_client(web_shop.server)
    await register_with_form(other, "other@shop.test")
    page = await get_page(other, order_path, expected_status=404)
    assert "We could not find that order." in page.text
    token = page.form("/logout").fields["csrf_token"]
    response = await other.post(f"{order_path}/cancel", data={"csrf_token": token})
    assert response.status == 404
    assert "Pending" in (await get_page(web_shop, order_path)).text


# -- revocation: a login cookie ends everywhere it was copied ------------------------------------


async def browser_with(aiohttp_client: Any, web_shop: TestClient, cookie: str) -> TestClient:
    """Another browser on the same gateway, holding a copy of a login cookie."""
    other = await aiohttp_client(web_shop.server)
    set_cookie(other, "shop_session", cookie)
    return other


def session_cookie(client: TestClient) -> str:
    return next(c.value for c in client.session.cookie_jar if c.key == "shop_session")


async def shows_logged_out(client: TestClient) -> bool:
    """The home page shows this browser as logged out."""
    home = await get_page(client, "/")
    return not home.has_form("/logout")


async def test_logging_out_ends_every_copy_of_the_cookie(
    web_shop: TestClient, aiohttp_client: Any
) -> None:
    await register_with_form(web_shop, "copied@shop.test")
    old = session_cookie(web_shop)
    copy = await browser_with(aiohttp_client, web_shop, old)
    assert not await shows_logged_out(copy)  # the copy works, for now
    out = await submit(web_shop, await get_page(web_shop, "/"), "/logout")
    assert out.flashes() == ["info: You have logged out. See you soon!"]

    # Every page treats the old cookie as logged out: the profile at once (the user service
    # checks it), the others once the gateway's memory of the user's token state runs out.
    profile = await get_page(copy, "/profile")
    assert unquote(profile.path) == "/login?next=/profile"
    assert "Your session has ended; please log in again." in profile.text
    stale = await browser_with(aiohttp_client, web_shop, old)
    await eventually(lambda: shows_logged_out(stale), "the copied cookie logged out", within=15)
    again = await browser_with(aiohttp_client, web_shop, old)
    response = await again.get("/orders", allow_redirects=False)
    assert response.status == 303 and cookie_header(response, "shop_session").startswith(
        'shop_session=""'
    )
    # The browser that logged out logs in again at once.
    assert (await log_in_with_form(web_shop, "copied@shop.test", SHOPPER_PASSWORD)).has_form(
        "/logout"
    )


async def test_a_password_change_keeps_this_browser_and_ends_the_others(
    web_shop: TestClient, aiohttp_client: Any
) -> None:
    await register_with_form(web_shop, "rotating@shop.test")
    other = await browser_with(aiohttp_client, web_shop, session_cookie(web_shop))
    profile = await get_page(web_shop, "/profile")
    changed = await submit(
        web_shop,
        profile,
        "/profile/password",
        current_password=SHOPPER_PASSWORD,
        password="rotated-secret-1",
        password_confirm="rotated-secret-1",
    )
    assert changed.flashes() == ["success: Your password is changed."]
    assert changed.has_form("/logout")  # still logged in, with a fresh token
    assert (await get_page(web_shop, "/cart")).has_form("/logout")
    await eventually(lambda: shows_logged_out(other), "the other browser logged out", within=15)
    assert (await get_page(web_shop, "/orders")).has_form("/logout")
