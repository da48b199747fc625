"""The shop's pages, server side: a client of the gateway in front of every real service,
driving the pages through their forms as a browser would (cookies kept, redirects followed,
the CSRF token read from the HTML). The helpers here are shared by tests/test_pages_*.py."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from decimal import Decimal
from html import unescape
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote, urlencode

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from support import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    JWT_SECRET,
    call,
    change_stock,
    create_product,
    eventually,
    stock_of,
)

from shopkit.auth import issue_token
from svc_gateway.pages.rendering import SHOP_NAME

PASSWORD = "s3cret-enough"

# -- reading pages -------------------------------------------------------------------------------


@dataclass
class Form:
    action: str
    method: str
    attrs: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[tuple[str, str, str]] = field(default_factory=list)  # name, value, text


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self.elements: list[Element] = []
        self.title = ""
        self.inline_scripts = 0
        self._form: Form | None = None
        self._text_target: tuple[str, Any] | None = None
        self._select: str | None = None
        self._button: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        self.elements.append(Element(tag, values))
        form = self._form
        if tag == "form":
            self._form = Form(values.get("action", ""), values.get("method", "get").lower(), values)
            self.forms.append(self._form)
        elif tag == "title":
            self._text_target = ("title", None)
        elif tag == "script" and "src" not in values:
            self.inline_scripts += 1
        elif form is None:
            return
        elif tag == "input" and values.get("name"):
            kind = values.get("type", "text")
            if kind in ("checkbox", "radio") and "checked" not in values:
                return
            form.fields[values["name"]] = values.get("value", "")
        elif tag == "select":
            self._select = values.get("name")
        elif tag == "option" and self._select and "selected" in values:
            form.fields[self._select] = values.get("value", "")
        elif tag == "textarea" and values.get("name"):
            form.fields[values["name"]] = ""
            self._text_target = ("textarea", values["name"])
        elif tag == "button":
            self._button = [values.get("name", ""), values.get("value", ""), ""]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag in ("title", "textarea"):
            self._text_target = None
        elif tag == "select":
            self._select = None
        elif tag == "button" and self._button is not None and self._form is not None:
            name, value, text = self._button
            self._form.buttons.append((name, value, " ".join(text.split())))
            self._button = None

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button[2] += data
        if self._text_target is None:
            return
        kind, name = self._text_target
        if kind == "title":
            self.title += data
        elif self._form is not None:
            self._form.fields[name] += data


@dataclass
class Page:
    status: int
    path: str  # where the client ended up, after redirects
    html: str
    headers: Any
    forms: list[Form]
    elements: list[Element]
    title: str
    inline_scripts: int

    def form(self, action: str, label: str | None = None) -> Form:
        """The (first) form sending to ``action``; ``label``: the one with this aria-label."""
        for form in self.forms:
            if form.action == action and (label is None or form.attrs.get("aria-label") == label):
                return form
        raise AssertionError(f"no form sending to {action} ({label}) on {self.path}")

    def has_form(self, action: str) -> bool:
        return any(form.action == action for form in self.forms)

    def tags(self, tag: str) -> list[Element]:
        return [element for element in self.elements if element.tag == tag]

    @property
    def text(self) -> str:
        """The visible words, tags taken out (for looking for sentences)."""
        inline_gone = re.sub(r"</?(?:a|span|strong|em|time|b)\b[^>]*>", "", self.html)
        without_tags = re.sub(r"<[^>]+>", " ", inline_gone)
        return unescape(" ".join(without_tags.split()))

    def flashes(self) -> list[str]:
        found = re.findall(r'<p class="flash flash--(\w+)">(.*?)</p>', self.html, re.S)
        return [f"{level}: {unescape(' '.join(text.split()))}" for level, text in found]


async def read_page(response: ClientResponse) -> Page:
    html = await response.text()
    parser = _PageParser()
    parser.feed(html)
    return Page(
        response.status,
        response.url.path_qs,
        html,
        response.headers,
        parser.forms,
        parser.elements,
        " ".join(parser.title.split()),
        parser.inline_scripts,
    )


async def get_page(
    client: TestClient, path: str, *, expected_status: int = 200, **kwargs: Any
) -> Page:
    response = await client.get(path, **kwargs)
    page = await read_page(response)
    assert page.status == expected_status, f"{path}: {page.status}\n{page.text[:2000]}"
    assert response.content_type == "text/html", page.html[:500]
    return page


async def submit(
    client: TestClient,
    page: Page,
    action: str,
    *,
    expected_status: int = 200,
    button: str | None = None,
    **values: Any,
) -> Page:
    """Fill in the form posting to ``action`` on ``page`` and send it, following redirects.
    ``button`` picks a submit button by its text (its name and value are sent)."""
    form = page.form(action)
    data = {**form.fields, **{name: str(value) for name, value in values.items()}}
    if button is not None:
        chosen = [b for b in form.buttons if b[2].startswith(button)]
        assert chosen, f"no button {button!r} in {form.buttons}"
        name, value, _ = chosen[0]
        if name:
            data[name] = value
    response = await client.post(action, data=data)
    result = await read_page(response)
    assert result.status == expected_status, f"{action}: {result.status}\n{result.text[:2000]}"
    return result


# -- shoppers and admins -------------------------------------------------------------------------


async def register(
    client: TestClient, email: str, *, first_name: str = "Ann", password: str = PASSWORD
) -> Page:
    page = await get_page(client, "/register")
    return await submit(
        client,
        page,
        "/register",
        email=email,
        first_name=first_name,
        last_name="Shopper",
        password=password,
        password_confirm=password,
    )


async def log_in(client: TestClient, email: str, password: str) -> Page:
    page = await get_page(client, "/login")
    return await submit(client, page, "/login", email=email, password=password)


async def log_in_as_admin(client: TestClient) -> Page:
    return await log_in(client, ADMIN_EMAIL, ADMIN_PASSWORD)


async def admin_token(client: TestClient) -> dict[str, str]:
    body = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    reply = await call(client, "POST", "/api/users/login", json=body, expected_status=200)
    return {"Authorization": f"Bearer {reply['data']['token']}"}


async def add_to_cart(client: TestClient, product_id: str, quantity: int) -> Page:
    page = await get_page(client, f"/products/{product_id}")
    return await submit(client, page, "/cart/items", quantity=quantity)


def cookie_header(response: ClientResponse, name: str) -> str:
    """The Set-Cookie header for ``name`` (the last one, if set more than once)."""
    found = [
        value for value in response.headers.getall("Set-Cookie", []) if value.startswith(f"{name}=")
    ]
    assert found, f"no Set-Cookie for {name}: {response.headers.getall('Set-Cookie', [])}"
    return found[-1]


def set_cookie(client: TestClient, name: str, value: str) -> None:
    """Put a cookie in the client's jar as if the gateway had set it."""
    client.session.cookie_jar.update_cookies({name: value}, response_url=client.make_url("/"))


def cookie_flags(header: str) -> set[str]:
    return {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}


def assert_page_basics(page: Page, title: str) -> None:
    """What every page must have: its title, the landmarks, a skip link, labelled inputs,
    images with alt text, no inline scripts."""
    assert page.title == f"{title} · {SHOP_NAME}", page.title
    assert page.tags("html")[0].attrs.get("lang") == "en"
    for landmark in ("header", "nav", "main", "footer"):
        assert page.tags(landmark), f"no <{landmark}> on {page.path}"
    assert page.tags("main")[0].attrs.get("id") == "main"
    assert any(a.attrs.get("href") == "#main" for a in page.tags("a")), "no skip link"
    assert len(page.tags("h1")) == 1, f"{page.path} should have one h1"
    labelled = {label.attrs.get("for") for label in page.tags("label")}
    for element in page.elements:
        if element.tag in ("input", "select", "textarea"):
            if element.attrs.get("type") in ("hidden", "submit"):
                continue
            assert element.attrs.get("id") in labelled or element.attrs.get("aria-label"), (
                f"unlabelled {element.tag} {element.attrs} on {page.path}"
            )
    for image in page.tags("img"):
        assert "alt" in image.attrs, f"image without alt on {page.path}: {image.attrs}"
    assert page.inline_scripts == 0
    assert "flashes" in page.html and 'aria-live="polite"' in page.html


# -- every page renders --------------------------------------------------------------------------


async def test_every_page_renders_with_its_title_and_landmarks(web_shop: TestClient) -> None:
    admin = await admin_token(web_shop)
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

    await register(web_shop, "ann@shop.test")
    await add_to_cart(web_shop, mug["id"], 2)
    cart = await get_page(web_shop, "/cart")
    assert_page_basics(cart, "Your cart")
    placed = await submit(web_shop, cart, "/checkout")
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
    await log_in_as_admin(web_shop)
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
    admin = await admin_token(web_shop)
    shirt = await create_product(web_shop, admin, name="Shirt", price=19.99, stock=9)
    clip = await create_product(web_shop, admin, name="Clip", price=0.1, stock=9)
    await register(web_shop, "exact@shop.test")
    await add_to_cart(web_shop, shirt["id"], 3)
    await add_to_cart(web_shop, clip["id"], 3)
    cart = await get_page(web_shop, "/cart")
    assert "$59.97" in cart.text and "$0.30" in cart.text and "$60.27" in cart.text
    order = await submit(web_shop, cart, "/checkout")
    assert "$60.27" in order.text
    assert Decimal("59.97") + Decimal("0.30") == Decimal("60.27")


# -- browsing --------------------------------------------------------------------------------------


async def test_search_filters_sort_and_pages_that_keep_the_filters(web_shop: TestClient) -> None:
    admin = await admin_token(web_shop)
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


async def test_a_product_page_offers_a_quantity_picker_to_shoppers_only(
    web_shop: TestClient,
) -> None:
    admin = await admin_token(web_shop)
    lamp = await create_product(web_shop, admin, name="Lamp", price=30, stock=4)
    gone = await create_product(web_shop, admin, name="Vase", price=30, stock=0)
    anonymous = await get_page(web_shop, f"/products/{lamp['id']}")
    assert not anonymous.has_form("/cart/items") and "Log in to buy" in anonymous.text
    await register(web_shop, "picker@shop.test")
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
        "password": PASSWORD,
        "password_confirm": PASSWORD,
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
    back = await log_in(web_shop, "  COOKIE@shop.test ", PASSWORD)
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
        "password": PASSWORD,
        "password_confirm": PASSWORD,
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
        password=PASSWORD,
        password_confirm=PASSWORD + "!",
        expected_status=400,
    )
    assert "The two passwords are not the same." in mismatch.text
    await register(web_shop, "taken@shop.test")
    await submit(web_shop, await get_page(web_shop, "/"), "/logout")
    taken = await submit(
        web_shop,
        await get_page(web_shop, "/register"),
        "/register",
        email="taken@shop.test",
        password=PASSWORD,
        password_confirm=PASSWORD,
        expected_status=400,
    )
    assert "An account with this email already exists." in taken.text


async def test_pages_that_need_a_login_send_you_back_after_it(web_shop: TestClient) -> None:
    await register(web_shop, "later@shop.test")
    await submit(web_shop, await get_page(web_shop, "/"), "/logout")
    response = await web_shop.get("/cart", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/login?next=%2Fcart"
    login = await get_page(web_shop, "/cart")
    assert unquote(login.path) == "/login?next=/cart" and "Log in to see your cart." in login.text
    cart = await submit(web_shop, login, "/login", email="later@shop.test", password=PASSWORD)
    assert cart.path == "/cart" and cart.title.startswith("Your cart")


async def test_after_login_only_paths_on_this_site_are_followed(web_shop: TestClient) -> None:
    await register(web_shop, "nowhere@shop.test")
    await submit(web_shop, await get_page(web_shop, "/"), "/logout")
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        page = await get_page(web_shop, "/login?" + urlencode({"next": target}))
        data = {
            **page.form("/login").fields,
            "email": "nowhere@shop.test",
            "password": PASSWORD,
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
    await register(web_shop, "profile@shop.test")
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
        current_password=PASSWORD,
        password="short",
        password_confirm="short",
        expected_status=400,
    )
    assert 'id="pw-password-error"' in too_short.html
    changed = await submit(
        web_shop,
        saved,
        "/profile/password",
        current_password=PASSWORD,
        password="brand-new-secret",
        password_confirm="brand-new-secret",
    )
    assert changed.flashes() == ["success: Your password is changed."]
    await submit(web_shop, changed, "/logout")
    await log_in_page_post(web_shop, "profile@shop.test", PASSWORD, 401)
    assert (await log_in(web_shop, "profile@shop.test", "brand-new-secret")).has_form("/logout")


# -- the cart, checkout and orders ----------------------------------------------------------------


async def test_the_whole_shopper_flow_through_the_forms(web_shop: TestClient) -> None:
    admin = await admin_token(web_shop)
    shirt = await create_product(
        web_shop, admin, name="Linen Shirt", price=19.99, stock=5, category="clothing"
    )
    socks = await create_product(
        web_shop, admin, name="Wool Socks", price=4.5, stock=10, category="clothing"
    )
    await create_product(web_shop, admin, name="Teapot", price=25, stock=3, category="kitchen")

    await register(web_shop, "flow@shop.test")
    found = await get_page(web_shop, "/?q=shirt")
    assert "Linen Shirt" in found.text and "Wool Socks" not in found.text
    clothing = await get_page(web_shop, "/?category=clothing")
    assert "Linen Shirt" in clothing.text and "Teapot" not in clothing.text

    added = await add_to_cart(web_shop, shirt["id"], 1)
    assert added.flashes() == ["success: Added 1 unit of Linen Shirt to your cart."]
    await add_to_cart(web_shop, socks["id"], 2)
    cart = await get_page(web_shop, "/cart")
    assert "$28.99" in cart.text  # 19.99 + 2 x 4.50

    changed = await submit(web_shop, cart, f"/cart/items/{shirt['id']}", quantity=3)
    assert changed.flashes() == ["success: You now have 3 of Linen Shirt in your cart."]
    assert "$59.97" in changed.text and "$68.97" in changed.text  # 3 x 19.99 + 9.00
    removed = await submit(web_shop, changed, f"/cart/items/{socks['id']}/remove")
    assert "Wool Socks" not in removed.text.replace("Removed it", "")
    await add_to_cart(web_shop, socks["id"], 1)

    cart = await get_page(web_shop, "/cart")
    confirmation = await submit(web_shop, cart, "/checkout")
    order_id = re.fullmatch(r"/orders/(\d+)/confirmation", confirmation.path)[1]
    assert "Thank you for your order!" in confirmation.text
    assert "$64.47" in confirmation.text  # 59.97 + 4.50
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

    emptied = await submit(web_shop, await add_to_cart(web_shop, socks["id"], 1), "/logout")
    await log_in(web_shop, "flow@shop.test", PASSWORD)
    cart = await get_page(web_shop, "/cart")
    cleared = await submit(web_shop, cart, "/cart/clear")
    assert cleared.flashes() == ["success: Your cart is empty now."] and emptied.status == 200


async def test_a_double_submitted_checkout_buys_once(web_shop: TestClient) -> None:
    admin = await admin_token(web_shop)
    mug = await create_product(web_shop, admin, name="Mug", price=8, stock=10)
    await register(web_shop, "twice@shop.test")
    await add_to_cart(web_shop, mug["id"], 2)
    cart = await get_page(web_shop, "/cart")
    data = cart.form("/checkout").fields
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

    # A new showing of the cart is a new checkout.
    await add_to_cart(web_shop, mug["id"], 1)
    fresh = await get_page(web_shop, "/cart")
    assert fresh.form("/checkout").fields["idempotency_key"] != data["idempotency_key"]
    await submit(web_shop, fresh, "/checkout")
    assert (await get_page(web_shop, "/orders")).text.count("Order #") == 2


async def test_two_tabs_checking_out_one_cart_buy_it_once(web_shop: TestClient) -> None:
    """Each tab's showing of the cart has its own key, so the key cannot tell the two apart:
    the cart's claim does. One tab gets the confirmation, the other a sentence."""
    admin = await admin_token(web_shop)
    lamp = await create_product(web_shop, admin, name="Desk Lamp", price=40, stock=10)
    await register(web_shop, "tabs@shop.test")
    await add_to_cart(web_shop, lamp["id"], 3)
    tabs = [(await get_page(web_shop, "/cart")).form("/checkout").fields for _ in range(2)]
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
    admin = await admin_token(web_shop)
    lamp = await create_product(web_shop, admin, name="Desk Lamp", price=40, stock=3)
    await register(web_shop, "short@shop.test")
    await add_to_cart(web_shop, lamp["id"], 3)
    too_many = await add_to_cart(web_shop, lamp["id"], 1)
    assert too_many.flashes() == ["error: Not enough stock: 3 left, and your cart already holds 3."]
    await change_stock(web_shop, admin, lamp["id"], -2)
    cart = await get_page(web_shop, "/cart")
    assert "Some items are short of stock." in cart.text and "Only 1 left in stock." in cart.text
    refused = await submit(web_shop, cart, "/checkout")
    assert refused.path == "/cart"
    assert refused.flashes() == ["error: Not enough stock of 'Desk Lamp': 1 left, 3 asked for."]
    assert await stock_of(web_shop, lamp["id"]) == 1
    assert "not ordered anything yet" in (await get_page(web_shop, "/orders")).text
    fixed = await submit(web_shop, refused, f"/cart/items/{lamp['id']}", quantity=1)
    assert "short of stock" not in fixed.text
    assert (await submit(web_shop, fixed, "/checkout")).path.endswith("/confirmation")


async def test_an_empty_cart_cannot_be_checked_out(web_shop: TestClient) -> None:
    await register(web_shop, "empty@shop.test")
    home = await get_page(web_shop, "/")
    token = home.form("/logout").fields["csrf_token"]
    data = {"csrf_token": token, "idempotency_key": "k" * 32}
    page = await read_page(await web_shop.post("/checkout", data=data))
    assert page.path == "/cart"
    assert page.flashes() == ["error: Your cart is empty: add something first."]


async def test_other_peoples_orders_are_not_found(
    web_shop: TestClient, aiohttp_client: Any
) -> None:
    admin = await admin_token(web_shop)
    mug = await create_product(web_shop, admin, stock=5)
    await register(web_shop, "owner@shop.test")
    await add_to_cart(web_shop, mug["id"], 1)
    placed = await submit(web_shop, await get_page(web_shop, "/cart"), "/checkout")
    order_path = placed.path.removesuffix("/confirmation")

    other = await aiohttp_client(web_shop.server)
    await register(other, "other@shop.test")
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
    await register(web_shop, "copied@shop.test")
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
    response = await again.get("/cart", allow_redirects=False)
    assert response.status == 303 and cookie_header(response, "shop_session").startswith(
        'shop_session=""'
    )
    # The browser that logged out logs in again at once.
    assert (await log_in(web_shop, "copied@shop.test", PASSWORD)).has_form("/logout")


async def test_a_password_change_keeps_this_browser_and_ends_the_others(
    web_shop: TestClient, aiohttp_client: Any
) -> None:
    await register(web_shop, "rotating@shop.test")
    other = await browser_with(aiohttp_client, web_shop, session_cookie(web_shop))
    profile = await get_page(web_shop, "/profile")
    changed = await submit(
        web_shop,
        profile,
        "/profile/password",
        current_password=PASSWORD,
        password="rotated-secret-1",
        password_confirm="rotated-secret-1",
    )
    assert changed.flashes() == ["success: Your password is changed."]
    assert changed.has_form("/logout")  # still logged in, with a fresh token
    assert (await get_page(web_shop, "/cart")).has_form("/logout")
    await eventually(lambda: shows_logged_out(other), "the other browser logged out", within=15)
    assert (await get_page(web_shop, "/orders")).has_form("/logout")
