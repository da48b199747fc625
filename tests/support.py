"""Helpers the tests share (fixtures live in conftest.py): waiting, tokens, API calls whose
answers are checked against the service's own OpenAPI document, the pages driven through
their forms, service processes, requests written byte for byte, a real SMTP server, and a
whole shop from `shopctl up`."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from html import unescape
from html.parser import HTMLParser
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import aiohttp
import asyncpg
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, make_mocked_request
from jsonschema import Draft202012Validator
from yarl import URL

from shopctl import processes

JWT_SECRET = "test-secret-" + "x" * 60
ADMIN_EMAIL = "boss@shop.test"
ADMIN_PASSWORD = "correct horse battery staple"


# The one way tests wait for something: poll it with a deadline (never sleep a fixed time).
# A failure names ``what`` did not happen and, with ``seen``, shows what there was instead.


async def eventually(
    check: Callable[[], Awaitable[bool]],
    what: str,
    within: float = 30,
    *,
    seen: Callable[[], object] | None = None,
) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` once ``within`` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(_did_not_happen(what, within, seen))
        await asyncio.sleep(0.01)


def eventually_sync(
    check: Callable[[], bool],
    what: str,
    within: float = 30,
    *,
    seen: Callable[[], object] | None = None,
    interval: float = 0.1,
) -> None:
    """``eventually`` for tests without an event loop (processes, files): it blocks."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(_did_not_happen(what, within, seen))
        time.sleep(interval)


def _did_not_happen(what: str, within: float, seen: Callable[[], object] | None) -> str:
    return f"{what} did not happen within {within} s" + (f"; seen:\n{seen()}" if seen else "")


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


def forged(claims: dict[str, Any], *, secret: str = JWT_SECRET, algorithm: str = "HS256") -> str:
    """A token with an admin's claims, changed by ``claims``, signed as asked: for attacks."""
    import jwt

    now = datetime.now(UTC)
    base = {
        "sub": "1",
        "email": "admin@shop.test",
        "role": "admin",
        "iat": now,
        "exp": now + timedelta(hours=1),
    }
    return jwt.encode({**base, **claims}, secret, algorithm=algorithm)


def unsigned(claims: dict[str, Any]) -> str:
    """The same claims under ``alg: none``, with no signature."""
    import jwt

    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    return f"{header}.{forged(claims).split('.')[1]}."


# The user service the other services ask about tokens (conftest's user_server) holds the
# admin (id 1) and customers 2 .. TEST_ACCOUNTS - 1: the users test tokens name.
TEST_ACCOUNTS = 10_000
TEST_ACCOUNT_PASSWORD = "test-account-password"


async def add_accounts(connection: asyncpg.Connection, ids: Iterable[int]) -> None:
    """Customers with these ids (email u<id>@shop.test, password TEST_ACCOUNT_PASSWORD) in
    a user service's database, made directly so that thousands cost one statement."""
    import bcrypt

    password_hash = bcrypt.hashpw(TEST_ACCOUNT_PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    await connection.execute(
        """INSERT INTO users (id, email, password_hash) OVERRIDING SYSTEM VALUE
           SELECT id, 'u' || id || '@shop.test', $2 FROM unnest($1::bigint[]) AS id
           ON CONFLICT DO NOTHING""",
        list(ids),
        password_hash,
    )


def customer(user_id: int) -> dict[str, str]:
    """Headers of a customer with this id (a token as the user service would issue it); the
    services accept it when the user service they ask has the account (see TEST_ACCOUNTS)."""
    from shopkit.auth import issue_token

    token = issue_token(
        JWT_SECRET, sub=str(user_id), email=f"u{user_id}@shop.test", role="customer"
    )
    return bearer(token)


def as_service(name: str) -> dict[str, str]:
    """Headers of one of the shop's services (a service token), e.g. the order service's
    for stock changes with a reference, which are the services' alone."""
    from shopkit.auth import service_token

    return bearer(service_token(JWT_SECRET, name))


async def call(
    client: TestClient,
    method: str,
    path: str,
    *,
    expected_status: int,
    **kwargs: Any,
) -> dict[str, Any]:
    """Make a request, check its status, the envelope and that the answer is what the
    service's OpenAPI document declares, and return the JSON body."""
    response = await client.request(method, path, **kwargs)
    text = await response.text()
    assert response.status == expected_status, text
    assert response.headers["X-Request-ID"]
    assert response.content_type == "application/json", text
    await assert_documented(client, response, text)
    body = await response.json()
    if expected_status < 400:
        assert body["success"] is True, body
        assert "data" in body
    else:
        assert body["success"] is False, body
        assert isinstance(body["error"], str) and body["error"], body
        assert isinstance(body["code"], str) and body["code"].islower(), body
    return body


def product_body(**overrides: Any) -> dict[str, Any]:
    """A valid body for creating a product, with ``overrides``."""
    body = {
        "name": "Enamel Mug",
        "description": "A sturdy camping mug",
        "price": 12.5,
        "category": "kitchen",
        "stock": 10,
    }
    body.update(overrides)
    return body


async def create_product(
    client: TestClient, headers: dict[str, str], **overrides: Any
) -> dict[str, Any]:
    """Create a product (product_body with ``overrides``) and return it as answered."""
    body = await call(
        client,
        "POST",
        "/api/products",
        json=product_body(**overrides),
        headers=headers,
        expected_status=201,
    )
    return body["data"]


@asynccontextmanager
async def postgres(uri: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to a database, closed afterwards."""
    connection = await asyncpg.connect(uri)
    try:
        yield connection
    finally:
        await connection.close()


async def stock_of(client: TestClient, product_id: str) -> int:
    """A product's stock, as its public read shows it."""
    reply = await call(client, "GET", f"/api/products/{product_id}", expected_status=200)
    return reply["data"]["stock"]


async def change_stock(
    client: TestClient,
    headers: dict[str, str],
    product_id: str,
    quantity: int,
    *,
    reference: str | None = None,
    expected_status: int = 200,
) -> dict[str, Any]:
    """PATCH a product's stock by `quantity` (with a saga `reference` when given)."""
    body: dict[str, Any] = {"quantity": quantity}
    if reference is not None:
        body["reference"] = reference
    return await call(
        client,
        "PATCH",
        f"/api/products/{product_id}/stock",
        json=body,
        headers=headers,
        expected_status=expected_status,
    )


# A delivery address in a country the order service delivers to by default.
TEST_ADDRESS = {
    "recipient": "Ann Example",
    "line1": "1 High Street",
    "city": "London",
    "postal_code": "SW1A 1AA",
    "country": "GB",
}
# The test provider's cards (README, "Test cards").
CARD_OK = "4242424242424242"
CARD_DECLINED = "4000000000000002"


def paid(
    card: str = CARD_OK,
    *,
    delivery: str = "standard",
    exp_year: int = 2099,
    address: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A checkout body's address, delivery and payment: an inline address and a card."""
    return {
        "address": address or TEST_ADDRESS,
        "delivery": delivery,
        "payment": {"card": {"number": card, "exp_month": 12, "exp_year": exp_year, "cvc": "123"}},
    }


async def checkout(
    orders: TestClient,
    headers: dict[str, str],
    items: list[tuple[str, int]],
    *,
    expected_status: int = 201,
    key: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """POST an order of these (product id, quantity) lines, with an Idempotency-Key if given,
    and an address, delivery and payment (``details``: see ``paid``) if given."""
    body = {"items": [{"product_id": pid, "quantity": qty} for pid, qty in items]}
    body.update(details or {})
    extra = {"Idempotency-Key": key} if key else {}
    return await call(
        orders,
        "POST",
        "/api/orders",
        json=body,
        headers={**headers, **extra},
        expected_status=expected_status,
    )


async def rows_in(database_uri: str, table: str) -> int:
    """How many rows a table of a PostgreSQL database holds."""
    async with postgres(database_uri) as connection:
        return await connection.fetchval(f"SELECT count(*) FROM {table}")


REPO = Path(__file__).resolve().parent.parent


def manifests_with_secrets(destination: Path) -> Path:
    """A copy of manifests/ at `destination` whose overlays have their secrets files, made
    from the committed `*.env.example` with every empty value filled in, as an operator
    would (the real files are never committed)."""
    shutil.copytree(REPO / "manifests", destination, ignore=shutil.ignore_patterns("*.env"))
    for example in destination.glob("overlays/*/secrets/*.env.example"):
        lines = []
        for line in example.read_text().splitlines():
            key, equals, value = line.partition("=")
            if equals and not line.startswith("#") and not value:
                line = f"{key}=test-{key.lower().replace('_', '-')}-{'x' * 32}"
            lines.append(line)
        example.with_suffix("").write_text("\n".join(lines) + "\n")
    return destination


class OrderProcess:
    """The order service as a real process on a fixed port, killed and started at will."""

    def __init__(self, env: dict[str, str], log: Path | None = None) -> None:
        self.env = env
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = log  # where its output goes (appended), if anywhere

    def start(self) -> None:
        output = subprocess.DEVNULL if self.log is None else self.log.open("ab")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "svc_order"],
                env=self.env,
                cwd=REPO,
                stdout=output,
                stderr=output,
            )
        finally:
            if self.log is not None:
                output.close()  # type: ignore[union-attr]

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    async def ready(self) -> None:
        async with aiohttp.ClientSession() as session:

            async def answers() -> bool:
                assert self.process is not None and self.process.poll() is None, "it exited"
                try:
                    async with session.get(f"{self.url}/ready") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(answers, "the order service's readiness")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


# -- stock changes with a reference (the checkout saga's steps) ------------------------------


async def take(
    product: TestClient, headers: dict[str, str], product_id: str, units: int, reference: str
) -> int:
    """The status of a referenced stock change of ``units`` (negative: taken)."""
    return (await take_answer(product, headers, product_id, units, reference))[0]


async def take_answer(
    product: TestClient, headers: dict[str, str], product_id: str, units: int, reference: str
) -> tuple[int, str | None]:
    """The status of a referenced stock change and, for a refusal, its code."""
    response = await product.patch(
        f"/api/products/{product_id}/stock",
        json={"quantity": units, "reference": reference},
        headers=headers,
    )
    text = await response.text()
    await assert_documented(product, response, text)
    return response.status, json.loads(text).get("code")


async def undo(
    product: TestClient, headers: dict[str, str], product_id: str, reference: str
) -> int:
    """The status of undoing the stock change made under ``reference``."""
    response = await product.post(
        f"/api/products/{product_id}/stock/undo", json={"reference": reference}, headers=headers
    )
    await assert_documented(product, response, await response.text())
    return response.status


def log_lines(path: Path) -> list[dict[str, Any]]:
    """A service's log file as records: its JSON lines, and any other line as {"msg": ...}."""
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            lines.append({"msg": text})
    return lines


def eventually_logged(path: Path, message: str, *, times: int = 1, within: float = 30) -> None:
    """Wait until ``message`` is in a service's log ``times`` times; fail showing its tail."""
    eventually_sync(
        lambda: [line.get("msg") for line in log_lines(path)].count(message) >= times,
        f"{message!r} in {path.name} {times} time(s)",
        within,
        seen=lambda: processes.log_tail(path),
    )


# -- the shop's pages, read and driven through their forms as a browser would ----------------

SHOPPER_PASSWORD = "s3cret-enough"  # register_with_form's


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
    """The page an answer holds, parsed."""
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
    """GET an HTML page (redirects followed) and check its status."""
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


# -- shoppers and admins on the pages ---------------------------------------------------------


# What a shopper types at checkout: a new address (kept in the address book), standard
# delivery and the test card that is accepted.
CHECKOUT_DETAILS = {
    "address_choice": "new",
    "recipient": "Ann Shopper",
    "line1": "1 High Street",
    "city": "London",
    "postal_code": "SW1A 1AA",
    "country": "GB",
    "delivery": "standard",
    "card_number": "4242 4242 4242 4242",
    "exp_month": "12",
    "exp_year": str(datetime.now(UTC).year + 2),
    "cvc": "123",
}


async def checkout_form(client: TestClient, **details: str) -> dict[str, str]:
    """The checkout page's form as a shopper fills it in (CHECKOUT_DETAILS, with ``details``
    instead where given), ready to post to /checkout."""
    page = await get_page(client, "/checkout")
    assert page.path == "/checkout", page.flashes()
    return {**page.form("/checkout").fields, **CHECKOUT_DETAILS, **details}


async def check_out_with_form(
    client: TestClient, *, expected_status: int = 200, **details: str
) -> Page:
    """Open the checkout page, fill it in and place the order, following redirects (to the
    confirmation, or back to the cart or the form with what was refused)."""
    response = await client.post("/checkout", data=await checkout_form(client, **details))
    result = await read_page(response)
    assert result.status == expected_status, f"{result.status}\n{result.text[:2000]}"
    return result


async def register_with_form(
    client: TestClient, email: str, *, first_name: str = "Ann", password: str = SHOPPER_PASSWORD
) -> Page:
    """Create an account through the register page's form (which logs it in)."""
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


async def log_in_with_form(client: TestClient, email: str, password: str) -> Page:
    """Log in through the login page's form."""
    page = await get_page(client, "/login")
    return await submit(client, page, "/login", email=email, password=password)


async def log_in_as_admin_with_form(client: TestClient) -> Page:
    """Log the test services' admin in through the login page's form."""
    return await log_in_with_form(client, ADMIN_EMAIL, ADMIN_PASSWORD)


async def log_in_with_api(client: TestClient, email: str, password: str) -> dict[str, str]:
    """Headers of an account, from a real login through ``client``'s API."""
    body = {"email": email, "password": password}
    reply = await call(client, "POST", "/api/users/login", json=body, expected_status=200)
    return bearer(reply["data"]["token"])


async def admin_login_headers(client: TestClient) -> dict[str, str]:
    """Headers of the test services' admin, from a real login through ``client``'s API."""
    return await log_in_with_api(client, ADMIN_EMAIL, ADMIN_PASSWORD)


async def add_to_cart_with_form(client: TestClient, product_id: str, quantity: int) -> Page:
    """Add to the cart through the product page's form."""
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
    """The attributes a Set-Cookie header gives its cookie (secure, httponly, ...)."""
    return {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}


def assert_page_basics(page: Page, title: str) -> None:
    """What every page must have: its title, the landmarks, a skip link, labelled inputs,
    images with alt text, no inline scripts."""
    from svc_gateway.pages.rendering import SHOP_NAME

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


# -- requests written byte for byte: paths no client library would send as they are -------


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def send_raw(
    port: int,
    method: str,
    target: str,
    headers: dict[str, str | bytes],
    body: bytes | None = None,
) -> RawAnswer:
    """A request whose target and header bytes are sent exactly as written (blocking)."""
    connection = HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        # putrequest sends the target exactly as given: no normalising, no re-quoting.
        connection.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return RawAnswer(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read().decode("utf-8", "replace"),
        )
    finally:
        connection.close()


async def raw(
    client: TestClient,
    target: str,
    *,
    method: str = "GET",
    headers: dict[str, str | bytes] | None = None,
) -> RawAnswer:
    """A request whose target and header bytes reach the gateway exactly as written."""
    return await asyncio.to_thread(send_raw, client.server.port, method, target, headers or {})


# -- a whole shop from `shopctl up`, driven as a user would ---------------------------------

SHOP_ADMIN_EMAIL = "admin@shop.local"  # the admin `shopctl up` makes
# Settings the shell may carry that would make shopctl use something other than what it
# starts itself on a fresh machine.
NOT_INHERITED = {
    "MONGODB_URI",
    "DATABASE_URL",
    "REDIS_URL",
    "JWT_SECRET",
    "ADMIN_EMAIL",
    "ADMIN_PASSWORD",
}


def shop_env(**values: str) -> dict[str, str]:
    """The environment `shopctl` runs with: this shell's, less what would change its choices."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in NOT_INHERITED and not key.startswith("SHOP_")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "250"
    return {**env, **values}


def shopctl(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m shopctl` as a user would; its output is captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "shopctl", *map(str, args)],
        capture_output=True,
        text=True,
        env=env or shop_env(),
        cwd=REPO,
        timeout=180,
    )


@contextmanager
def following_logs(
    data_dir: Path, *options: str, env: dict[str, str] | None = None
) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """`shopctl logs -f --json` on ``data_dir`` running in the background: yields what it
    has shown so far, as records; afterwards it must end cleanly on SIGTERM."""
    out = data_dir.parent / f"followed-{os.urandom(4).hex()}.jsonl"
    command = [sys.executable, "-m", "shopctl", "logs", "-f", "--json", *options]
    with out.open("w") as stdout:
        follower = subprocess.Popen(
            [*command, "--data-dir", str(data_dir)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env or shop_env(),
            cwd=REPO,
        )
    try:
        yield lambda: [json.loads(line) for line in out.read_text().splitlines()]
    finally:
        follower.send_signal(signal.SIGTERM)
        _, errors = follower.communicate(timeout=30)
        out.unlink()
    assert follower.returncode == 0, errors


def free_base_port() -> int:
    """A base port whose five service ports are all free."""
    while True:
        base = processes.free_port()
        if base + 4 < 65536 and not any(processes.port_in_use(base + k) for k in range(5)):
            return base


@contextmanager
def running_shop(data_dir: Path, **settings: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A whole shop from `shopctl up --detach` on free ports (its services also given
    `settings`): its gateway URL and the environment shopctl runs with; stopped
    afterwards, whatever happened."""
    base = free_base_port()
    # Few bcrypt rounds keep sign-ups quick; the default (12) is measured in benchmarks/.
    env = shop_env(BCRYPT_ROUNDS="4", **settings)
    try:
        up = shopctl("up", "--detach", "--data-dir", data_dir, "--base-port", base, env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        yield f"http://127.0.0.1:{base}", env
    finally:
        down = shopctl("down", "--data-dir", data_dir, env=env)
        assert down.returncode == 0, down.stdout + down.stderr


@dataclass(frozen=True)
class QaShop:
    """A shop from `running_shop`, as the seed, checkout and chaos tests drive it."""

    url: str
    data_dir: Path
    env: dict[str, str]
    token: str  # the admin's

    def run(self, *args: str | Path, **extra_env: str) -> subprocess.CompletedProcess:
        """shopctl against this shop (its data dir makes it `local`)."""
        return shopctl(*args, "--data-dir", self.data_dir, env={**self.env, **extra_env})

    def start(self, *args: str | Path) -> subprocess.Popen:
        """shopctl against this shop in the background, as a terminal would run it."""
        command = [sys.executable, "-m", "shopctl", *map(str, args)]
        return subprocess.Popen(
            [*command, "--data-dir", str(self.data_dir)],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def every(self, path: str, token: str | None = None) -> list[dict[str, Any]]:
        """Every item of a listed route, page by page."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            code, reply = http("GET", f"{self.url}{path}?limit=100&page={page}", None, token)
            assert code == 200, reply
            found += reply["data"]
            if len(found) >= reply["total"]:
                return found
            page += 1

    def products(self) -> list[dict[str, Any]]:
        return self.every("/api/products")

    def product_count(self) -> int:
        code, reply = http("GET", f"{self.url}/api/products?limit=1")
        assert code == 200, reply
        return reply["total"]

    def by_name(self) -> dict[str, dict[str, Any]]:
        return {product["name"]: product for product in self.products()}

    def delete_all_products(self) -> None:
        for product in self.products():
            code, reply = http(
                "DELETE", f"{self.url}/api/products/{product['id']}", None, self.token
            )
            assert code == 200, reply

    def orders(self) -> list[dict[str, Any]]:
        return self.every("/api/orders", self.token)

    def mail(self) -> list[dict[str, Any]]:
        """Every e-mail the shop's SMTP sink received, as `shopctl mail -o json` lists them."""
        listed = self.run("mail", "-n", "0", "-o", "json")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        return json.loads(listed.stdout)

    def login(self, email: str, password: str) -> str:
        """A customer's token, from a real login."""
        code, reply = http(
            "POST", f"{self.url}/api/users/login", {"email": email, "password": password}
        )
        assert code == 200, reply
        return reply["data"]["token"]

    def assert_stock_went_only_to_orders(
        self, stock_before: dict[str, int], orders_before: set[int]
    ) -> list[dict[str, Any]]:
        """Every unit of stock gone since ``stock_before`` is in an order placed since
        (``orders_before``: the ids there were) and not cancelled; the new orders."""
        new_orders = [order for order in self.orders() if order["id"] not in orders_before]
        sold: dict[str, int] = {}
        for order in new_orders:
            if order["status"] != "cancelled":
                for item in order["items"]:
                    sold[item["product_id"]] = sold.get(item["product_id"], 0) + item["quantity"]
        stock_after = {product["id"]: product["stock"] for product in self.products()}
        assert set(stock_after) == set(stock_before)
        for product_id, stock in stock_before.items():
            assert stock - stock_after[product_id] == sold.get(product_id, 0), product_id
        assert sum(sold.values()) > 0
        return new_orders


def http(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """A blocking JSON request (no proxy), for tests without an event loop: status and body."""
    headers = {"Accept": "application/json", **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with opener.open(request, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def shop_admin_token(gateway: str, data_dir: Path) -> str:
    """The token of the admin `shopctl up` made, from a real login with its password."""
    password = (data_dir / "admin_password").read_text().strip()
    credentials = {"email": SHOP_ADMIN_EMAIL, "password": password}
    code, reply = http("POST", f"{gateway}/api/users/login", credentials)
    assert code == 200, reply
    assert reply["data"]["user"]["role"] == "admin"
    return reply["data"]["token"]


# -- answers checked against the OpenAPI document of the service that gave them -------------
# As backendschool2019's helpers validate every answer, `call` (and the other helpers that
# make requests) check each one against the document the service serves at /openapi.json.
# Numbers are read as decimals on both sides: `multipleOf: 0.01` is about the 19.99 written
# in the answer, which its nearest binary float is not.

_DOCUMENTS: WeakKeyDictionary[web.Application, dict[str, Any]] = WeakKeyDictionary()
_FORWARDED_DOCUMENTS: WeakKeyDictionary[web.Application, dict[str, Any]] = WeakKeyDictionary()


def openapi_document(app: web.Application) -> dict[str, Any]:
    """The document the app serves at /openapi.json, numbers as Decimal (built once per app)."""
    if app not in _DOCUMENTS:
        from shopkit.openapi import build_openapi

        document = build_openapi(app, "under test", "0")
        _DOCUMENTS[app] = json.loads(json.dumps(document), parse_float=Decimal)
    return _DOCUMENTS[app]


async def route_of(app: web.Application, method: str, path: str) -> str | None:
    """The route template the app's router takes ``path`` to; None when no route does."""
    match = await app.router.resolve(make_mocked_request(method, path, app=app))
    return None if match.http_exception is not None else match.route.resource.canonical


def documented_route(document: dict[str, Any], path: str) -> str | None:
    """The document's path template that ``path`` falls under (literal segments first)."""
    segments = path.split("/")
    candidates = []
    for template in document["paths"]:
        parts = template.split("/")
        if len(parts) == len(segments) and all(
            part == segment or (part.startswith("{") and segment)
            for part, segment in zip(parts, segments, strict=True)
        ):
            candidates.append((sum(part.startswith("{") for part in parts), template))
    return min(candidates)[1] if candidates else None


def declared_schema(
    document: dict[str, Any], method: str, route: str | None, status: int
) -> dict[str, Any] | None:
    """The JSON schema the document gives the answer, or None when it declares none."""
    if route is None:  # no route took the request: the envelope every error answer has
        return {"$ref": "#/components/schemas/Error"} if status >= 400 else None
    operation = document["paths"].get(route, {}).get(method.lower())
    answer = (operation or {}).get("responses", {}).get(str(status))
    if answer is None:
        return None
    return answer["content"]["application/json"]["schema"]


def assert_matches_openapi(
    document: dict[str, Any], method: str, route: str | None, status: int, body: Any
) -> None:
    """Fail unless ``body`` is what ``document`` declares ``method route`` answers with
    ``status`` (an answer no route took: the document's error envelope)."""
    schema = declared_schema(document, method, route, status)
    assert schema is not None, f"the document declares no {status} answer to {method} {route}"
    validator = Draft202012Validator(
        {**schema, "components": document["components"]},
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    problems = [
        f"{'/'.join(map(str, error.absolute_path)) or 'the body'}: {error.message}"
        for error in validator.iter_errors(body)
    ]
    assert not problems, f"{method} {route} {status} is not as documented: {problems}"


async def _served_document(base_url: str) -> dict[str, Any] | None:
    """The document a service at ``base_url`` serves, numbers as Decimal; None if it does not."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.get(f"{base_url}/openapi.json") as answer,
        ):
            if answer.status != 200:
                return None
            return json.loads(await answer.text(), parse_float=Decimal)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def forwarded_document(app: web.Application, path: str) -> dict[str, Any] | None:
    """For a gateway, the document of the backend it forwards ``path`` to: the one whose
    document has routes under the path's /api/<prefix>; None for any other app or path."""
    from svc_gateway.keys import BACKENDS

    prefix = "/".join(path.split("/")[:3])
    if BACKENDS not in app or not prefix.startswith("/api/"):
        return None
    documents = _FORWARDED_DOCUMENTS.setdefault(app, {})
    for backend in app[BACKENDS].values():
        if backend.name not in documents:  # asked once it answers (it may be down for now)
            document = await _served_document(backend.base_url)
            if document is None:
                continue
            documents[backend.name] = document
        if any(
            template == prefix or template.startswith(f"{prefix}/")
            for template in documents[backend.name]["paths"]
        ):
            return documents[backend.name]
    return None


async def assert_documented(client: TestClient, response: ClientResponse, text: str) -> None:
    """Fail unless the JSON answer ``text`` is what the document of the service that gave it
    declares: the app's own, or for what a gateway forwards unchanged (its document claims
    nothing about it), the document of the backend that answered."""
    app = client.app
    assert app is not None, "the answer's document is read from the app the client is of"
    method, status, path = response.method, response.status, response.url.raw_path
    body = json.loads(text, parse_float=Decimal)
    document = openapi_document(app)
    route = await route_of(app, method, path)
    if not declared_schema(document, method, route, status):
        backend = await forwarded_document(app, URL(path).path)
        if backend is not None:
            document, route = backend, documented_route(backend, URL(path).path)
    assert_matches_openapi(document, method, route, status, body)


# -- a real SMTP server (aiosmtpd) that keeps what it accepts ---------------------------------


@dataclass(frozen=True)
class ReceivedMail:
    envelope_to: list[str]
    message: EmailMessage

    def part(self, subtype: str) -> str:
        """The text of the message's text/plain or text/html part."""
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None and body.get_content_subtype() == subtype, self.message
        return body.get_content()


class SmtpSink:
    """An SMTP server in a thread of its own, on ``port`` (a free one if None), that keeps
    every message it accepts; set ``refuse_with`` (``"451 ..."``, ``"550 ..."``) to have
    it answer each recipient so instead."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or processes.free_port()
        self.received: list[ReceivedMail] = []
        self.refuse_with: str | None = None
        self.refused = 0
        self._controller: Any = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> SmtpSink:
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    # aiosmtpd's handler hooks
    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.refuse_with is not None:
            self.refused += 1
            return self.refuse_with
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.original_content, policy=default_policy)
        assert isinstance(message, EmailMessage)
        self.received.append(ReceivedMail(list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


async def metric_value(client: TestClient, name: str, **labels: str) -> float:
    """One sample of the service's /metrics as Prometheus reads it; 0 when it is not there."""
    from prometheus_client.parser import text_string_to_metric_families

    answer = await client.get("/metrics")
    assert answer.status == 200, await answer.text()
    for family in text_string_to_metric_families(await answer.text()):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    return 0.0


# -- pictures, made with Pillow: what an admin's phone or a hostile client would upload ---------

# Where a photo was taken, as a phone writes it into its EXIF: what an upload must not leak.
GPS_LATITUDE = (51.0, 30.0, 26.41)


def photo_with_location(
    size: tuple[int, int] = (1200, 800), *, image_format: str = "JPEG", orientation: int = 1
) -> bytes:
    """A picture as a phone writes it: EXIF with the camera, the GPS position and the
    orientation (6: the pixels are stored turned 90 degrees), and a text comment."""
    from PIL import Image

    picture = Image.new("RGB", size, (180, 40, 40))
    picture.paste((20, 60, 200), (0, 0, size[0] // 2, size[1] // 4))  # so it can be turned
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "Pocket 9"  # Model
    exif[0x0112] = orientation
    exif[0x8825] = {1: "N", 2: GPS_LATITUDE, 3: "W", 4: (0.0, 7.0, 39.06)}
    out = io.BytesIO()
    extra: dict[str, Any] = {"exif": exif.tobytes()}
    if image_format == "PNG":
        from PIL import PngImagePlugin

        text = PngImagePlugin.PngInfo()
        text.add_text("Comment", "taken at home, 51.5074 N")
        extra["pnginfo"] = text
    picture.save(out, image_format, **extra)
    return out.getvalue()


def noise_png(width: int, height: int) -> bytes:
    """A PNG of random pixels (which do not compress): about width * height * 3 bytes."""
    from PIL import Image

    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, "PNG")
    return out.getvalue()


def decompression_bomb(side: int = 40_000) -> bytes:
    """A small PNG (one bit a pixel, all zero: it compresses to next to nothing) that claims
    ``side`` x ``side`` pixels; at 40 000, 1.6 billion of them: gigabytes once decoded."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, "PNG", optimize=True)
    return out.getvalue()


def picture_form(
    data: bytes, filename: str = "photo.jpg", content_type: str = "image/jpeg"
) -> aiohttp.FormData:
    """The multipart/form-data body of a picture upload (field ``image``)."""
    form = aiohttp.FormData()
    form.add_field("image", io.BytesIO(data), filename=filename, content_type=content_type)
    return form


def metadata_of(webp: bytes) -> dict[str, Any]:
    """What a served picture carries besides its pixels: its format, size, EXIF and info."""
    from PIL import Image

    with Image.open(io.BytesIO(webp)) as picture:
        return {
            "format": picture.format,
            "size": picture.size,
            "exif": dict(picture.getexif()),
            "info": sorted(key for key in picture.info if key not in ("loop", "background")),
        }
