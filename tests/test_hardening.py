"""What a stranger sends, answered with a 4xx in the envelope (issue 12, items 1-4 and 9):
odd digits and numbers past any decimal, control characters in text, bodies whose
Content-Encoding lies, changes that change nothing, and the caching headers of personal
answers. Each at the level it happens, through the gateway in front of the real services."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import secrets
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from support import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    SHOPPER_PASSWORD,
    add_to_cart_with_form,
    admin_login_headers,
    bearer,
    call,
    create_product,
    eventually,
    get_page,
    log_in_as_admin_with_form,
    postgres,
    raw,
    register_with_form,
    set_cookie,
    submit,
)
from yarl import URL

from svc_gateway.app import GatewaySettings
from svc_gateway.app import create_app as create_gateway_app
from svc_user.app import UserSettings
from svc_user.app import create_app as create_user_app

# Spellings of numbers that str.isdigit() or int() would take, or that name another number.
ODD_INTEGERS = [
    "²",
    "①",
    "٦٦",
    "\uff16",
    "1_0",
    "+5",
    "5.0",
    " 7",
    "0x10",
    "1e3",
    "9" * 40,
    "-1",
    "",
]


async def signed_up(client: TestClient, **fields: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """A new customer registered through the API: its headers and its user."""
    body = {"email": f"u{secrets.token_hex(6)}@shop.test", "password": SHOPPER_PASSWORD, **fields}
    reply = await call(client, "POST", "/api/users/register", json=body, expected_status=201)
    return bearer(reply["data"]["token"]), reply["data"]["user"]


# -- 1. numbers and ids -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["minPrice", "maxPrice"])
@pytest.mark.parametrize(
    "value", ["1e999999999", "-1e999999999", "1e-999999999", "NaN", "Infinity", "9" * 400, "²"]
)
async def test_a_price_filter_past_any_decimal_is_400(
    web_shop: TestClient, name: str, value: str
) -> None:
    reply = await call(web_shop, "GET", "/api/products", params={name: value}, expected_status=400)
    assert reply["details"][0]["field"] == name


async def test_the_catalogue_page_says_which_filter_it_refused(web_shop: TestClient) -> None:
    page = await get_page(web_shop, "/?minPrice=1e999999999")
    assert "Lowest price" in page.text and 'role="alert"' in page.html


@pytest.mark.parametrize("value", ODD_INTEGERS)
async def test_page_and_limit_are_ascii_digits(web_shop: TestClient, value: str) -> None:
    headers = await admin_login_headers(web_shop)
    for path in ("/api/products", "/api/orders"):
        for name in ("page", "limit"):
            await call(
                web_shop, "GET", path, params={name: value}, headers=headers, expected_status=400
            )


async def test_an_order_id_in_other_digits_is_not_that_order(
    web_shop: TestClient, postgres_uri: str
) -> None:
    headers, user = await signed_up(web_shop)
    product = await create_product(web_shop, await admin_login_headers(web_shop), stock=5)
    async with postgres(postgres_uri) as connection:
        await connection.execute("ALTER TABLE orders ALTER COLUMN id RESTART WITH 66")
    body = {"items": [{"product_id": product["id"], "quantity": 1}]}
    order = await call(
        web_shop, "POST", "/api/orders", json=body, headers=headers, expected_status=201
    )
    assert order["data"]["id"] == 66
    await call(web_shop, "GET", "/api/orders/66", headers=headers, expected_status=200)
    for spelling in ("٦٦", "\uff16\uff16", "066", "66%0A", "%C2%B2", "①", "9" * 40, "-66", "+66"):
        await call(web_shop, "GET", f"/api/orders/{spelling}", headers=headers, expected_status=404)
    mine = f"/api/orders/user/{user['id']}"
    await call(web_shop, "GET", mine, headers=headers, expected_status=200)
    for spelling in ("%C2%B2", "٦٦", f"0{user['id']}", f"+{user['id']}"):
        # Not the customer's own id as written: someone else's, so 403 ...
        await call(
            web_shop, "GET", f"/api/orders/user/{spelling}", headers=headers, expected_status=403
        )
        # ... and for an admin, nobody's: not found.
        reply = await call(
            web_shop,
            "GET",
            f"/api/orders/user/{spelling}",
            headers=await admin_login_headers(web_shop),
            expected_status=404,
        )
        assert reply["code"] == "user_not_found"


async def test_a_product_id_with_a_trailing_newline_is_not_found(web_shop: TestClient) -> None:
    product = await create_product(web_shop, await admin_login_headers(web_shop))
    for suffix in ("%0A", "%00", "%20", "x"):
        await call(web_shop, "GET", f"/api/products/{product['id']}{suffix}", expected_status=404)


async def test_a_cart_user_id_is_written_plainly(web_shop: TestClient) -> None:
    headers, user = await signed_up(web_shop)
    await call(web_shop, "GET", f"/api/cart/{user['id']}", headers=headers, expected_status=200)
    admin_headers = await admin_login_headers(web_shop)
    for spelling in (f"{user['id']}%0A", f"0{user['id']}", "%C2%B2", "٦"):
        await call(
            web_shop,
            "GET",
            f"/api/cart/{spelling}",
            headers=admin_headers,
            expected_status=404,
        )
    for value in ODD_INTEGERS:
        await call(
            web_shop,
            "DELETE",
            f"/api/cart/{user['id']}",
            params={"version": value},
            headers=headers,
            expected_status=400,
        )


@pytest.mark.parametrize("value", ["²", "①", "٦"])
async def test_pages_take_only_ascii_page_numbers(web_shop: TestClient, value: str) -> None:
    await log_in_as_admin_with_form(web_shop)
    for path in ("/", "/orders", "/admin/orders", "/admin/products"):
        response = await web_shop.get(path, params={"page": value})
        assert response.status == 200, await response.text()


async def test_a_cart_form_quantity_in_other_digits_is_refused(web_shop: TestClient) -> None:
    product = await create_product(web_shop, await admin_login_headers(web_shop), stock=50)
    await register_with_form(web_shop, f"q{secrets.token_hex(4)}@shop.test")
    for value in ("²", "٦", "1e3", "9" * 40):
        page = await add_to_cart_with_form(web_shop, product["id"], value)  # type: ignore[arg-type]
        assert page.status == 200 and "Choose a quantity from 1 to" in page.text, page.text
    page = await get_page(web_shop, "/cart")
    assert "Your cart is empty." in page.text


async def test_an_admin_price_with_a_huge_exponent_is_refused_unexpanded(
    web_shop: TestClient,
) -> None:
    await log_in_as_admin_with_form(web_shop)
    page = await get_page(web_shop, "/admin/products/new")
    page = await submit(
        web_shop,
        page,
        "/admin/products/new",
        expected_status=400,
        name="Exponent Mug",
        description="",
        price="1e20000000",
        category="kitchen",
        stock="3",
        imageUrl="",
    )
    assert 'id="f-price-error"' in page.html
    assert len(page.html) < 200_000  # the 20 MB expansion is never built, let alone shown
    # Commas are thousands separators or nothing: "$1,0,0.5" is not 100.50.
    page = await submit(
        web_shop,
        await get_page(web_shop, "/admin/products/new"),
        "/admin/products/new",
        expected_status=400,
        name="Comma Mug",
        price="$1,0,0.5",
        category="kitchen",
        stock="3",
    )
    assert 'id="f-price-error"' in page.html


@pytest.mark.parametrize("number", ["1e1000000000000000000", "-1E+99999999999999999999"])
async def test_a_json_number_past_any_decimal_is_400_everywhere(
    web_shop: TestClient, user: TestClient, number: str
) -> None:
    body = f'{{"email": "a@b.c", "password": {number}}}'.encode()
    for client in (web_shop, user):
        reply = await call(client, "POST", "/api/users/login", data=body, expected_status=400)
        assert reply["code"] == "invalid_json"
    # A checkout with it is refused at once through the gateway: not sent again and again.
    headers, _ = await signed_up(web_shop)
    order = f'{{"items": [{{"product_id": "{"a" * 24}", "quantity": {number}}}]}}'.encode()
    reply = await call(
        web_shop, "POST", "/api/orders", data=order, headers=headers, expected_status=400
    )
    assert reply["code"] == "invalid_json"
    # A body of whitespace is not "no body" (check out my cart): it is not JSON (fuzzer).
    reply = await call(
        web_shop, "POST", "/api/orders", data=b"\n", headers=headers, expected_status=400
    )
    assert reply["code"] == "invalid_json"


# -- 2. text ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["\x00", "\x1b[31m", "\x7f", "\ud800", "\u0085", "\u202e", "\u2066"]
)
async def test_control_characters_in_text_are_400_naming_the_field(
    web_shop: TestClient, bad: str
) -> None:
    email = f"c{secrets.token_hex(4)}@shop.test"
    cases = [
        ("/api/users/register", {"email": f"a{bad}{email}", "password": SHOPPER_PASSWORD}, "email"),
        (
            "/api/users/register",
            {"email": email, "password": SHOPPER_PASSWORD, "first_name": bad},
            "first_name",
        ),
        ("/api/users/login", {"email": f"a{bad}{email}", "password": SHOPPER_PASSWORD}, "email"),
    ]
    for path, body, field in cases:
        reply = await call(web_shop, "POST", path, json=body, expected_status=400)
        assert reply["details"][0]["field"] == field, reply
    headers, _ = await signed_up(web_shop)
    reply = await call(
        web_shop,
        "PUT",
        "/api/users/profile",
        json={"last_name": f"Smith{bad}"},
        headers=headers,
        expected_status=400,
    )
    assert reply["details"][0]["field"] == "last_name"
    admin_headers = await admin_login_headers(web_shop)
    for field in ("name", "category", "description"):
        reply = await call(
            web_shop,
            "POST",
            "/api/products",
            json={"name": "Mug", "price": 2, "category": "kitchen", field: f"x{bad}y"},
            headers=admin_headers,
            expected_status=400,
        )
        assert reply["details"][0]["field"] == field
    if bad != "\ud800":  # a lone surrogate cannot even be written in a URL's UTF-8
        await call(web_shop, "GET", "/api/products", params={"q": f"mug{bad}"}, expected_status=400)


async def test_line_breaks_stay_allowed_in_a_description_only(web_shop: TestClient) -> None:
    admin_headers = await admin_login_headers(web_shop)
    product = await create_product(web_shop, admin_headers, description="One\nTwo\r\n\tThree")
    assert product["description"] == "One\nTwo\r\n\tThree"
    await call(
        web_shop,
        "POST",
        "/api/products",
        json={"name": "Two\nlines", "price": 2, "category": "kitchen"},
        headers=admin_headers,
        expected_status=400,
    )


async def test_emails_equal_under_nfkc_are_one_account(web_shop: TestClient) -> None:
    local = f"norm{secrets.token_hex(4)}"
    body = {"email": f"{local}@x.test", "password": SHOPPER_PASSWORD}
    await call(web_shop, "POST", "/api/users/register", json=body, expected_status=201)
    for spelling in (
        f"\uff4e{local[1:]}@x.test",
        f"{local.upper()}@X.TEST",
        f"{local}@x\uff0etest",
    ):
        taken = {"email": spelling, "password": SHOPPER_PASSWORD}
        reply = await call(web_shop, "POST", "/api/users/register", json=taken, expected_status=409)
        assert reply["code"] == "email_taken"
        reply = await call(web_shop, "POST", "/api/users/login", json=taken, expected_status=200)
        assert reply["data"]["user"]["email"] == f"{local}@x.test"


# -- 3. bodies ----------------------------------------------------------------------------------


LOGIN = b'{"email": "nobody@shop.test", "password": "not the password"}'


def a_login(tag: str) -> bytes:
    """A login body for an account nobody has, a new one each time (so that the failures
    are not limited: each email fails once)."""
    return b'{"email": "nobody-%s-%s@shop.test", "password": "not the password"}' % (
        tag.encode(),
        secrets.token_hex(4).encode(),
    )


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "x-gzip"])
async def test_a_body_that_is_not_what_its_encoding_says_is_400(
    web_shop: TestClient, user: TestClient, encoding: str
) -> None:
    for client in (web_shop, user):  # through the gateway and at the service itself
        reply = await call(
            client,
            "POST",
            "/api/users/login",
            data=LOGIN,
            headers={"Content-Encoding": encoding, "Content-Type": "application/json"},
            expected_status=400,
        )
        assert reply["code"] == "invalid_content_encoding"
        # Cut off halfway: not valid either.
        reply = await call(
            client,
            "POST",
            "/api/users/login",
            data=gzip.compress(LOGIN)[:20],
            headers={"Content-Encoding": encoding},
            expected_status=400,
        )


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, gzip", "bogus"])
async def test_an_encoding_we_do_not_accept_is_415_in_the_envelope(
    web_shop: TestClient, user: TestClient, encoding: str
) -> None:
    for client in (web_shop, user):
        reply = await call(
            client,
            "POST",
            "/api/users/login",
            data=LOGIN,
            headers={"Content-Encoding": encoding},
            expected_status=415,
        )
        assert reply["code"] == "unsupported_content_encoding"


async def test_gzip_and_deflate_bodies_are_read(web_shop: TestClient, user: TestClient) -> None:
    def raw_deflate(body: bytes) -> bytes:  # no zlib wrapper, as some clients send it
        encoder = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return encoder.compress(body) + encoder.flush()

    encoders = {
        "gzip": gzip.compress,
        "deflate": zlib.compress,
        "identity": bytes,
        "Deflate ": raw_deflate,
    }
    for client in (web_shop, user):
        for encoding, encode in encoders.items():
            data = encode(a_login(encoding.strip()))
            reply = await call(
                client,
                "POST",
                "/api/users/login",
                data=data,
                headers={"Content-Encoding": encoding},
                expected_status=401,  # read and judged: no such account
            )
            assert reply["code"] == "invalid_credentials"


async def test_a_compressed_bomb_is_413_not_a_memory_spike(
    web_shop: TestClient, user: TestClient
) -> None:
    bomb = gzip.compress(b"[" + b"0," * (4 * 1024 * 1024) + b"0]")  # 8 MiB in 8 KiB
    assert len(bomb) < 64 * 1024
    for client in (web_shop, user):
        reply = await call(
            client,
            "POST",
            "/api/users/login",
            data=bomb,
            headers={"Content-Encoding": "gzip"},
            expected_status=413,
        )
        assert reply["code"] == "payload_too_large"


async def test_page_forms_refuse_encoded_bodies(web_shop: TestClient) -> None:
    response = await web_shop.post(
        "/login",
        data=gzip.compress(b"email=a%40b.c&password=x"),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 415, await response.text()
    assert "uncompressed" in await response.text()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"email=a\xff"),
        ("application/x-www-form-urlencoded; charset=bogus", b"a=b"),
        ("application/x-www-form-urlencoded; charset=utf-16", b"abc"),
        ("multipart/form-data; boundary=x", b"--x--"),
    ],
)
async def test_a_form_that_cannot_be_read_is_a_4xx_page(
    web_shop: TestClient, content_type: str, body: bytes
) -> None:
    for path in ("/login", "/register", "/cart/items", "/checkout"):
        response = await web_shop.post(path, data=body, headers={"Content-Type": content_type})
        assert response.status in (400, 415), (path, response.status, await response.text())
        assert response.content_type == "text/html"


@pytest.mark.parametrize("value", ["a.\u00e9", "\u00ff.\u00ff", "...", "x" * 5000 + ".y"])
async def test_a_malformed_flash_cookie_is_no_flash(web_shop: TestClient, value: str) -> None:
    set_cookie(web_shop, "shop_flash", value)
    page = await get_page(web_shop, "/")
    assert page.flashes() == []


async def test_a_next_path_too_long_for_a_location_header_goes_home(web_shop: TestClient) -> None:
    email = f"n{secrets.token_hex(4)}@shop.test"
    await call(
        web_shop,
        "POST",
        "/api/users/register",
        json={"email": email, "password": SHOPPER_PASSWORD},
        expected_status=201,
    )
    page = await get_page(web_shop, "/login", params={"next": "/cart"})
    page = await submit(
        web_shop, page, "/login", email=email, password=SHOPPER_PASSWORD, next="/" + "a" * 9000
    )
    assert page.path == "/"


async def test_expect_headers_are_answered_in_the_envelope(web_shop: TestClient) -> None:
    headers: dict[str, str | bytes] = {"Expect": b"\xff", "Content-Length": "2"}
    answer = await asyncio.to_thread(_raw, web_shop.server.port, "/api/users/login", headers)
    assert answer[0] == 417 and b'"expectation_failed"' in answer[1], answer
    headers = {"Expect": "100-continue", "Content-Length": str(5 * 1024 * 1024)}
    answer = await asyncio.to_thread(_raw, web_shop.server.port, "/api/users/login", headers)
    assert answer[0] == 413 and b'"payload_too_large"' in answer[1], answer


def _raw(port: int, target: str, headers: dict[str, str | bytes]) -> tuple[int, bytes]:
    """POST ``target`` with exactly these header bytes and no body; the status and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("POST", target, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


async def test_repeated_encoding_and_key_headers_are_read_as_a_whole(
    web_shop: TestClient,
) -> None:
    headers, _ = await signed_up(web_shop)
    twice = CIMultiDict([("Content-Encoding", "identity"), ("Content-Encoding", "gzip")])
    reply = await call(
        web_shop, "POST", "/api/users/login", data=LOGIN, headers=twice, expected_status=415
    )
    assert reply["code"] == "unsupported_content_encoding"
    keys = CIMultiDict(headers)
    keys.extend([("Idempotency-Key", "first-key"), ("Idempotency-Key", "second-key")])
    reply = await call(web_shop, "POST", "/api/orders", json={}, headers=keys, expected_status=400)
    assert reply["code"] == "invalid_idempotency_key"


async def test_a_body_that_trickles_in_is_cut_off_with_408(user_settings: UserSettings) -> None:
    settings = user_settings.model_copy(update={"body_timeout_seconds": 0.5})
    async with served_as_run_does(create_user_app(settings)) as url:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(
            b"POST /api/users/login HTTP/1.1\r\nHost: shop\r\nContent-Length: 1000\r\n\r\n{"
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=30)
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 408"), status_line


@asynccontextmanager
async def served_as_run_does(app: web.Application) -> AsyncIterator[URL]:
    """``app`` listening as ``shopkit.app.run`` serves it: aiohttp's test server cancels a
    handler whose client hung up, which production does not, so it would hide this."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield URL.build(scheme="http", host=host, port=port)
    finally:
        await runner.cleanup()


async def test_a_client_that_leaves_mid_body_is_not_a_server_error(
    gateway_env: dict[str, str], user_settings: UserSettings, web_shop: TestClient
) -> None:
    """Headers promise 1000 bytes, ten arrive, the client hangs up: the gateway and the
    user service record a 400 (nobody hears it), never a 500."""
    gateway = create_gateway_app(GatewaySettings.from_env(gateway_env))
    async with (
        served_as_run_does(gateway) as gateway_url,
        served_as_run_does(create_user_app(user_settings)) as user_url,
    ):
        for url in (gateway_url, user_url):
            reader, writer = await asyncio.open_connection(url.host, url.port)
            writer.write(
                b"POST /api/users/login HTTP/1.1\r\nHost: shop\r\n"
                b"Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n"
            )
            # "100 Continue": the request reached its handler, which now waits for the body.
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(LOGIN[:10])
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        async def answers(url: URL) -> list[str]:
            async with web_shop.session.get(url / "metrics") as response:
                text = await response.text()
            # The gateway counts it under its proxy's route, /api/users/{tail}.
            return [
                line
                for line in text.splitlines()
                if line.startswith("http_requests_total") and 'route="/api/users/' in line
            ]

        async def recorded() -> bool:
            for url in (gateway_url, user_url):
                if not any('status="400"' in line for line in await answers(url)):
                    return False
            return True

        await eventually(recorded, "the cut-off bodies being counted as 400s")
        for url in (gateway_url, user_url):
            assert not any('status="5' in line for line in await answers(url))


# -- 4. changes that change nothing -------------------------------------------------------------


async def test_a_profile_change_that_changes_nothing_is_400(web_shop: TestClient) -> None:
    headers, _ = await signed_up(web_shop)
    for body in ({"current_password": "x"}, {"current_password": SHOPPER_PASSWORD}, {}):
        reply = await call(
            web_shop, "PUT", "/api/users/profile", json=body, headers=headers, expected_status=400
        )
        assert reply["code"] == "validation_error"
    document = await call(
        web_shop, "GET", "/api/users/profile", headers=headers, expected_status=200
    )
    assert document["data"]["first_name"] == ""


# -- 9. caching of personal data ----------------------------------------------------------------


async def test_personal_answers_are_never_stored_by_a_cache(web_shop: TestClient) -> None:
    headers, user = await signed_up(web_shop)
    personal = [
        ("GET", "/api/users/profile", None),
        ("POST", "/api/users/login", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}),
        ("GET", f"/api/cart/{user['id']}", None),
        ("GET", "/api/orders", None),
        ("GET", f"/api/orders/user/{user['id']}", None),
        ("GET", "/api/orders/1", None),  # a 404 says something about the caller too
    ]
    for method, path, body in personal:
        response = await web_shop.request(method, path, json=body, headers=headers)
        assert response.headers.get("Cache-Control") == "no-store", (path, response.headers)
        assert response.headers.get("X-Content-Type-Options") == "nosniff", path
    response = await web_shop.get("/api/products")
    assert response.headers["Cache-Control"].startswith("public")
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_malformed_request_is_one_warning_line_not_an_error(
    product: TestClient, json_logs: Any
) -> None:
    """aiohttp refuses what it cannot parse before our code runs; its log line for that is
    the client's mistake (a warning, no traceback), so strangers cannot fill the error log."""
    reader, writer = await asyncio.open_connection(product.server.host, product.server.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: shop\r\nX-Bad: a\x01b\r\n\r\n")
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] == b"400", status_line

    def refused() -> list[dict[str, Any]]:
        return [line for line in json_logs() if line["logger"] == "aiohttp.server"]

    async def logged() -> bool:
        return bool(refused())

    await eventually(logged, "the malformed request being logged")
    for line in refused():
        assert line["level"] == "warning" and "exc" not in line, line
        assert line["msg"].startswith("malformed request refused"), line


async def assert_too_long_refused_in_the_envelope(client: TestClient) -> None:
    """aiohttp's own limit (8190 bytes) would answer in plain text before any middleware:
    the services read further and refuse in the envelope, 414 and 431."""
    long_path = await raw(client, "/api/products?q=" + "a" * 9000)
    assert (long_path.status, long_path.json()["code"]) == (414, "uri_too_long")
    assert long_path.headers["content-type"].startswith("application/json")
    long_header = await raw(client, "/api/products", headers={"X-Filler": "b" * 9000})
    assert (long_header.status, long_header.json()["code"]) == (431, "header_too_large")
    assert "'X-Filler' header" in long_header.json()["error"]
    # Just inside the limits: answered as usual.
    fits = await raw(client, "/api/products?limit=1", headers={"X-Filler": "c" * 8000})
    assert fits.status == 200, fits.text


async def test_the_gateway_refuses_a_target_or_header_too_long_in_the_envelope(
    web_shop: TestClient,
) -> None:
    await assert_too_long_refused_in_the_envelope(web_shop)


async def test_a_service_refuses_a_target_or_header_too_long_in_the_envelope(
    product: TestClient,
) -> None:
    await assert_too_long_refused_in_the_envelope(product)
