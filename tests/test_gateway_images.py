"""The catalogue's pictures, served by the gateway at stable URLs that product documents
store: /images/catalogue/<name>."""

from __future__ import annotations

import json
from decimal import Decimal
from importlib import resources
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from support import (
    admin_login_headers,
    call,
    create_product,
    get_page,
    metadata_of,
    noise_png,
    picture_form,
)

from shopkit.responses import dumps
from svc_gateway.app import GatewaySettings
from svc_gateway.app import create_app as create_gateway_app

PICTURE = "/images/catalogue/kitchen-skillet.svg"


@pytest.fixture
async def gateway(aiohttp_client: Any) -> TestClient:
    """A gateway with no backends: the pictures need none."""
    return await aiohttp_client(create_gateway_app(GatewaySettings.from_env({})))


async def test_a_picture_is_served_as_svg_and_cached_for_a_day(gateway: TestClient) -> None:
    response = await gateway.get(PICTURE)
    assert response.status == 200
    assert response.content_type == "image/svg+xml"
    assert response.headers["Cache-Control"] == "public, max-age=86400"
    assert "Set-Cookie" not in response.headers
    on_disk = resources.files("svc_gateway").joinpath("static", "catalogue", "kitchen-skillet.svg")
    assert await response.read() == on_disk.read_bytes()
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    # The page's security headers come along (an SVG opened on its own runs nothing).
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"

    for if_none_match in (etag, f'"other", W/{etag}', "*"):
        again = await gateway.get(PICTURE, headers={"If-None-Match": if_none_match})
        assert again.status == 304, if_none_match
        assert await again.read() == b""
        assert again.headers["ETag"] == etag
        assert again.headers["Cache-Control"] == "public, max-age=86400"
    changed = await gateway.get(PICTURE, headers={"If-None-Match": '"something-else"'})
    assert changed.status == 200

    head = await gateway.head(PICTURE)
    assert head.status == 200 and head.headers["ETag"] == etag


async def test_every_picture_has_its_own_etag(gateway: TestClient) -> None:
    folder = resources.files("svc_gateway").joinpath("static", "catalogue")
    names = sorted(entry.name for entry in folder.iterdir())
    assert len(names) >= 10
    etags = set()
    for name in names:
        response = await gateway.get(f"/images/catalogue/{name}")
        assert response.status == 200 and response.content_type == "image/svg+xml", name
        etags.add(response.headers["ETag"])
    assert len(etags) == len(names)


@pytest.mark.parametrize(
    "path",
    [
        "/images/catalogue/no-such-picture.svg",
        "/images/catalogue/kitchen-skillet",
        "/images/catalogue/KITCHEN-SKILLET.SVG",
        "/images/catalogue/favicon.svg",  # a static file, but not a catalogue picture
        "/images/catalogue/..%2Fshop.css",
        "/images/catalogue/..%2F..%2Fassets.py",
        "/images/catalogue/%2E%2E%2Ffavicon.svg",
    ],
)
async def test_an_unknown_picture_is_the_json_404(gateway: TestClient, path: str) -> None:
    body = await call(gateway, "GET", path, expected_status=404)
    assert body["code"] == "not_found"


@pytest.mark.parametrize(
    "path",
    [
        "/images/catalogue/../shop.css",
        "/images/catalogue/../../static/shop.css",
        "/images/catalogue/",
        "/images/catalogue/sub/kitchen-skillet.svg",
    ],
)
async def test_paths_outside_the_folder_are_not_found(gateway: TestClient, path: str) -> None:
    response = await gateway.get(path)
    assert response.status == 404
    assert response.content_type != "image/svg+xml"


async def test_the_picture_route_is_in_the_openapi_document(gateway: TestClient) -> None:
    document = await (await gateway.get("/openapi.json")).json()
    operation = document["paths"]["/images/catalogue/{name}"]["get"]
    assert "image/svg+xml" in operation["responses"]["200"]["content"]
    assert "404" in operation["responses"]


async def test_a_seeded_product_shows_its_picture_on_the_shop_pages(web_shop: TestClient) -> None:
    """A product from the demo catalogue, created through the API as `shopctl seed` does,
    appears with its picture, and the picture loads from the gateway."""
    catalogue = json.loads(
        (resources.files("shopctl") / "seed_data" / "catalogue.json").read_text("utf-8")
    )
    demo = catalogue["products"][0]
    admin = await admin_login_headers(web_shop)
    created = await call(
        web_shop,
        "POST",
        "/api/products",
        data=dumps({**demo, "price": Decimal(demo["price"])}),
        headers={**admin, "Content-Type": "application/json"},
        expected_status=201,
    )
    assert Decimal(str(created["data"]["price"])) == Decimal(demo["price"])
    page = await get_page(web_shop, f"/products/{created['data']['id']}")
    sources = [element.attrs.get("src") for element in page.tags("img")]
    assert demo["imageUrl"] in sources
    picture = await web_shop.get(demo["imageUrl"])
    assert picture.status == 200 and picture.content_type == "image/svg+xml"


async def test_an_uploaded_picture_is_served_by_the_gateway_and_cached_for_good(
    web_shop: TestClient,
) -> None:
    admin = await admin_login_headers(web_shop)
    lamp = await create_product(web_shop, admin, name="Lamp")
    big = noise_png(1000, 700)  # over the 1 MiB of every other body the gateway forwards
    assert len(big) > 2 * 1024 * 1024
    answer = await call(
        web_shop,
        "POST",
        f"/api/products/{lamp['id']}/image",
        data=picture_form(big, filename="lamp.png", content_type="image/png"),
        headers=admin,
        expected_status=200,
    )
    image_url = answer["data"]["imageUrl"]
    picture = await web_shop.get(image_url)
    assert picture.status == 200 and picture.content_type == "image/webp"
    assert picture.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert "default-src 'self'" in picture.headers["Content-Security-Policy"]
    assert "Set-Cookie" not in picture.headers
    assert metadata_of(await picture.read())["size"] == (1000, 700)
    etag = picture.headers["ETag"]
    again = await web_shop.get(image_url, headers={"If-None-Match": etag})
    assert again.status == 304 and again.headers["ETag"] == etag
    thumbnail = await web_shop.get(image_url.replace(".webp", "-400.webp"))
    assert metadata_of(await thumbnail.read())["size"] == (400, 280)

    for name in ("0" * 32 + ".webp", "nope.png", "..%2Fshop.css"):
        body = await call(web_shop, "GET", f"/images/products/{name}", expected_status=404)
        assert body["code"] == "not_found"
