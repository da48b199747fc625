"""Product pictures at the product service: an admin's upload judged by decoding it,
re-encoded without its metadata, kept in MongoDB (the MongoDB-protocol server here) and
served under a name that changes with its bytes."""

from __future__ import annotations

import io
import os
import re
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from support import (
    call,
    create_product,
    decompression_bomb,
    metadata_of,
    noise_png,
    photo_with_location,
    picture_form,
)

from shopkit.uploads import PICTURE_MAX_BYTES, UPLOAD_BODY_LIMIT
from svc_product.keys import PICTURES

PICTURE_URL = re.compile(r"/images/products/([0-9a-f]{32})\.webp")


async def upload(
    client: TestClient,
    product_id: str,
    headers: dict[str, str],
    data: bytes | aiohttp.FormData,
    *,
    expected_status: int = 200,
    **form: str,
) -> dict[str, Any]:
    body = data if isinstance(data, aiohttp.FormData) else picture_form(data, **form)
    return await call(
        client,
        "POST",
        f"/api/products/{product_id}/image",
        data=body,
        headers=headers,
        expected_status=expected_status,
    )


async def served(client: TestClient, image_url: str, **kwargs: Any) -> aiohttp.ClientResponse:
    """The picture at ``image_url`` as the product service hands it to the gateway."""
    name = image_url.removeprefix("/images/products/")
    return await client.get(f"/api/products/images/{name}", **kwargs)


async def test_a_photo_is_kept_upright_without_its_location_and_cached_for_good(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    lamp = await create_product(product, admin_headers, name="Lamp")
    photo = photo_with_location((2400, 1200), orientation=6)
    assert b"PhoneMaker" in photo  # the EXIF is there to leak
    answer = await upload(product, lamp["id"], admin_headers, photo, filename="IMG_0001.JPG")
    image_url = answer["data"]["imageUrl"]
    assert PICTURE_URL.fullmatch(image_url), image_url
    assert answer["data"]["name"] == "Lamp" and answer["data"]["updatedAt"] >= lamp["updatedAt"]
    again = await call(product, "GET", f"/api/products/{lamp['id']}", expected_status=200)
    assert again["data"]["imageUrl"] == image_url

    response = await served(product, image_url)
    assert response.status == 200
    assert response.content_type == "image/webp"
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    webp = await response.read()
    # Turned upright (orientation 6: stored on its side), at most 1600 pixels, no metadata.
    assert metadata_of(webp) == {"format": "WEBP", "size": (800, 1600), "exif": {}, "info": []}
    for leak in (b"Exif", b"PhoneMaker", b"Pocket 9", b"XMP", b"ICCP"):
        assert leak not in webp, leak
    etag = response.headers["ETag"]
    assert etag == f'"{PICTURE_URL.fullmatch(image_url)[1]}"'
    cached = await served(product, image_url, headers={"If-None-Match": etag})
    assert cached.status == 304 and await cached.read() == b""
    assert cached.headers["Cache-Control"] == "public, max-age=31536000, immutable"

    thumbnail = await served(product, image_url.replace(".webp", "-400.webp"))
    assert thumbnail.status == 200 and thumbnail.content_type == "image/webp"
    assert metadata_of(await thumbnail.read())["size"] == (200, 400)
    assert thumbnail.headers["ETag"] != etag


async def test_a_png_loses_its_text_chunks_and_the_same_bytes_keep_their_name(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    first = await create_product(product, admin_headers, name="Mug")
    second = await create_product(product, admin_headers, name="Cup")
    png = photo_with_location(image_format="PNG")
    assert b"taken at home" in png
    one = await upload(product, first["id"], admin_headers, png, filename="mug.png")
    two = await upload(product, second["id"], admin_headers, png, filename="cup.png")
    assert one["data"]["imageUrl"] == two["data"]["imageUrl"]
    webp = await (await served(product, one["data"]["imageUrl"])).read()
    assert b"taken at home" not in webp and b"Exif" not in webp
    assert metadata_of(webp)["size"] == (1200, 800)


@pytest.mark.parametrize(
    ("data", "filename", "content_type", "status", "code"),
    [
        (b"MZ\x90\x00 not a picture at all " * 40, "photo.png", "image/png", 415, "not_a_picture"),
        (
            b"<svg xmlns='http://www.w3.org/2000/svg'/>",
            "logo.svg",
            "image/svg+xml",
            415,
            "not_a_picture",
        ),
        (b"BM" + bytes(60), "old.bmp", "image/bmp", 415, "not_a_picture"),
        (b"", "empty.jpg", "image/jpeg", 415, "not_a_picture"),
        ("half a jpeg", "cut.jpg", "image/jpeg", 400, "unreadable_picture"),
        ("bomb 6000", "bomb.png", "image/png", 413, "too_many_pixels"),
        ("bomb 40000", "bomb.png", "image/png", 413, "too_many_pixels"),
    ],
)
async def test_what_is_not_a_picture_to_keep_is_refused_and_changes_nothing(
    product: TestClient,
    admin_headers: dict[str, str],
    data: bytes | str,
    filename: str,
    content_type: str,
    status: int,
    code: str,
) -> None:
    if data == "half a jpeg":
        whole = photo_with_location()
        data = whole[: len(whole) // 2]
    elif isinstance(data, str):  # a small file claiming more pixels than are ever decoded
        data = decompression_bomb(int(data.split()[1]))
        assert len(data) < 256 * 1024
    lamp = await create_product(product, admin_headers, name="Lamp", imageUrl="/x/lamp.svg")
    form = {"filename": filename, "content_type": content_type}
    refused = await upload(product, lamp["id"], admin_headers, data, expected_status=status, **form)
    assert refused["code"] == code, refused
    after = await call(product, "GET", f"/api/products/{lamp['id']}", expected_status=200)
    assert after["data"]["imageUrl"] == "/x/lamp.svg"
    assert await product.app[PICTURES].collection.count_documents({}) == 0


async def test_pictures_over_the_limits_are_413(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    lamp = await create_product(product, admin_headers, name="Lamp")
    # A real picture of 2 MiB passes where any other body over 1 MiB would be refused.
    big = noise_png(1000, 700)
    assert len(big) > 2 * 1024 * 1024
    kept = await upload(product, lamp["id"], admin_headers, big, filename="big.png")
    assert PICTURE_URL.fullmatch(kept["data"]["imageUrl"])

    too_big = await upload(
        product, lamp["id"], admin_headers, os.urandom(PICTURE_MAX_BYTES + 1), expected_status=413
    )
    assert too_big["code"] == "picture_too_large"
    whole_body = await upload(
        product, lamp["id"], admin_headers, os.urandom(UPLOAD_BODY_LIMIT), expected_status=413
    )
    assert whole_body["code"] == "payload_too_large" and "6 MiB" in whole_body["error"]
    # Refused from its Content-Length before a byte of it is read, also for a client that
    # asks first (curl does, for large bodies).
    expecting = await call(
        product,
        "POST",
        f"/api/products/{lamp['id']}/image",
        data=io.BytesIO(b"x" * (UPLOAD_BODY_LIMIT + 1)),
        headers={
            **admin_headers,
            "Content-Type": "multipart/form-data; boundary=x",
            "Expect": "100-continue",
        },
        expected_status=413,
    )
    assert expecting["code"] == "payload_too_large"
    # Every other route keeps its 1 MiB.
    other = await call(
        product,
        "PUT",
        f"/api/products/{lamp['id']}",
        data=io.BytesIO(b" " * (2 * 1024 * 1024)),
        headers={**admin_headers, "Content-Type": "application/json"},
        expected_status=413,
    )
    assert "1 MiB" in other["error"]


async def test_only_admins_upload_and_only_to_a_product(
    product: TestClient, admin_headers: dict[str, str], customer_headers: dict[str, str]
) -> None:
    lamp = await create_product(product, admin_headers, name="Lamp")
    photo = photo_with_location()
    await upload(product, lamp["id"], {}, photo, expected_status=401)
    forbidden = await upload(product, lamp["id"], customer_headers, photo, expected_status=403)
    assert forbidden["code"] == "forbidden"
    for product_id in ("0" * 24, "not-an-id"):
        missing = await upload(product, product_id, admin_headers, photo, expected_status=404)
        assert missing["code"] == "product_not_found"
    assert await product.app[PICTURES].collection.count_documents({}) == 0


async def test_what_is_not_one_picture_in_a_form_is_refused(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    lamp = await create_product(product, admin_headers, name="Lamp")
    path = f"/api/products/{lamp['id']}/image"
    as_json = await call(
        product, "POST", path, json={"image": "x"}, headers=admin_headers, expected_status=415
    )
    assert as_json["code"] == "unsupported_media_type"

    photo = photo_with_location()
    cases: list[tuple[aiohttp.FormData, str]] = []
    missing = aiohttp.FormData()
    missing.add_field("picture", photo, filename="a.jpg", content_type="image/jpeg")
    cases.append((missing, "picture"))
    text_only = aiohttp.FormData({"image": "not a file"}, default_to_multipart=True)
    cases.append((text_only, "image"))
    twice = picture_form(photo)
    twice.add_field("image", photo, filename="b.jpg", content_type="image/jpeg")
    cases.append((twice, "image"))
    for form, field in cases:
        refused = await upload(product, lamp["id"], admin_headers, form, expected_status=400)
        assert refused["code"] == "validation_error"
        assert field in {detail["field"] for detail in refused["details"]}

    broken = await call(
        product,
        "POST",
        path,
        data=b"--x\r\nnot a part\r\n",
        headers={**admin_headers, "Content-Type": "multipart/form-data; boundary=y"},
        expected_status=400,
    )
    assert broken["code"] in ("invalid_form", "validation_error")
    # A part whose header line is not a header (bytes a fuzzer found): the form is unreadable.
    garbled = await call(
        product,
        "POST",
        path,
        data=b"--b\r\n]P\xc2\xbe\xc2\xacB\xf1\x8f\xa6\x84--b--\r\n",
        headers={**admin_headers, "Content-Type": "multipart/form-data; boundary=b"},
        expected_status=400,
    )
    assert garbled["code"] == "invalid_form"


@pytest.mark.parametrize("name", ["nope.webp", "0" * 32 + ".webp", "0" * 32 + "-400.webp"])
async def test_an_unknown_picture_is_404(product: TestClient, name: str) -> None:
    body = await call(product, "GET", f"/api/products/images/{name}", expected_status=404)
    assert body["code"] == "picture_not_found"


async def test_pictures_no_product_points_at_are_forgotten_after_a_while(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    lamp = await create_product(product, admin_headers, name="Lamp")
    first = await upload(product, lamp["id"], admin_headers, photo_with_location((600, 400)))
    second = await upload(product, lamp["id"], admin_headers, photo_with_location((400, 600)))
    pictures = product.app[PICTURES]
    assert await pictures.forget_unused() == 0  # both younger than a week
    assert await pictures.forget_unused(keep=timedelta(0)) == 1
    assert (await served(product, first["data"]["imageUrl"])).status == 404
    assert (await served(product, second["data"]["imageUrl"])).status == 200
