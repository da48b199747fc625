"""The administrators' pages: the catalogue and the order lifecycle, for admins only."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlencode

from aiohttp.test_utils import TestClient
from support import (
    Page,
    add_to_cart_with_form,
    admin_login_headers,
    call,
    check_out_with_form,
    create_product,
    get_page,
    log_in_as_admin_with_form,
    metadata_of,
    noise_png,
    photo_with_location,
    picture_form,
    read_page,
    register_with_form,
    stock_of,
    submit,
)

ADMIN_PAGES = ("/admin", "/admin/products", "/admin/products/new", "/admin/orders")


def row_of(page: Page, text: str) -> str:
    """The table row that mentions ``text``."""
    for row in re.findall(r"<tr\b.*?</tr>", page.html, re.S):
        if text in row:
            return row
    raise AssertionError(f"no row with {text!r} on {page.path}")


def buttons_in(row: str) -> list[str]:
    return re.findall(r'name="status" value="(\w+)"', row)


async def place_order(client: TestClient, product_id: str, quantity: int = 1) -> str:
    await add_to_cart_with_form(client, product_id, quantity)
    placed = await check_out_with_form(client)
    return re.fullmatch(r"/orders/(\d+)/confirmation", placed.path)[1]


async def test_customers_get_403_and_strangers_the_login_page(
    web_shop: TestClient, aiohttp_client: Any
) -> None:
    admin = await admin_login_headers(web_shop)
    lamp = await create_product(web_shop, admin, name="Lamp", stock=5)
    for path in ADMIN_PAGES:
        response = await web_shop.get(path, allow_redirects=False)
        assert response.status == 303, path
        assert unquote(response.headers["Location"]) == f"/login?next={path}"

    home = await register_with_form(web_shop, "customer@shop.test")
    assert "Manage products" not in home.text
    for path in (*ADMIN_PAGES, f"/admin/products/{lamp['id']}/edit"):
        page = await get_page(web_shop, path, expected_status=403)
        assert page.title.startswith("Not allowed")
        assert "for the shop's administrators only" in page.text
    token = home.form("/logout").fields["csrf_token"]
    changes = {
        f"/admin/products/{lamp['id']}/stock": {"quantity": "5"},
        f"/admin/products/{lamp['id']}/delete": {},
        f"/admin/products/{lamp['id']}/edit": {"name": "Mine now", "price": "1", "category": "x"},
        "/admin/products/new": {"name": "Sneaky", "price": "1", "category": "x"},
        "/admin/orders/1/status": {"status": "shipped"},
    }
    for path, data in changes.items():
        response = await web_shop.post(path, data={**data, "csrf_token": token})
        assert response.status == 403, path
    assert await stock_of(web_shop, lamp["id"]) == 5
    assert "Mine now" not in (await get_page(web_shop, f"/products/{lamp['id']}")).text
    assert "Sneaky" not in (await get_page(web_shop, "/")).text


async def test_an_admin_creates_a_product_with_messages_next_to_the_fields(
    web_shop: TestClient,
) -> None:
    await log_in_as_admin_with_form(web_shop)
    home = await get_page(web_shop, "/")
    assert "Manage products" in home.text and "Manage orders" in home.text
    form = await get_page(web_shop, "/admin/products/new")
    invalid = await submit(
        web_shop,
        form,
        "/admin/products/new",
        name="",
        price="cheap",
        category="kitchen",
        stock="-1",
        imageUrl="javascript:alert(1)",
        expected_status=400,
    )
    for name in ("name", "price", "stock", "imageUrl"):
        assert f'id="f-{name}-error"' in invalid.html, name
        field = next(e for e in invalid.tags("input") if e.attrs.get("name") == name)
        assert field.attrs["aria-invalid"] == "true"
        assert f"f-{name}-error" in field.attrs["aria-describedby"]
    assert "Enter a number, such as 12.50." in invalid.text
    assert invalid.form("/admin/products/new").fields["category"] == "kitchen"  # kept

    too_precise = await submit(
        web_shop,
        form,
        "/admin/products/new",
        name="Teapot",
        price="12.505",
        category="kitchen",
        stock="4",
        expected_status=400,
    )
    assert 'id="f-price-error"' in too_precise.html and 'id="f-name-error"' not in too_precise.html

    created = await submit(
        web_shop,
        form,
        "/admin/products/new",
        name="Teapot",
        description="Cast iron.",
        price="24.50",
        category="kitchen",
        stock="4",
    )
    assert created.path == "/admin/products"
    assert created.flashes() == ["success: Created “Teapot”."]
    row = row_of(created, "Teapot")
    assert "$24.50" in row and ">4<" in row
    catalogue = await get_page(web_shop, "/?q=teapot")
    assert "Teapot" in catalogue.text and "$24.50" in catalogue.text


async def test_an_admin_edits_restocks_and_deletes(web_shop: TestClient) -> None:
    admin = await admin_login_headers(web_shop)
    kettle = await create_product(
        web_shop, admin, name="Kettle", price=30, stock=10, imageUrl="/static/kettle.jpg"
    )
    await log_in_as_admin_with_form(web_shop)
    products = await get_page(web_shop, "/admin/products")
    edit = await get_page(web_shop, f"/admin/products/{kettle['id']}/edit")
    fields = edit.form(f"/admin/products/{kettle['id']}/edit").fields
    assert (fields["name"], fields["price"], fields["imageUrl"]) == (
        "Kettle",
        "30.00",
        "/static/kettle.jpg",
    )
    wrong = await submit(
        web_shop, edit, f"/admin/products/{kettle['id']}/edit", price="0", expected_status=400
    )
    assert 'id="f-price-error"' in wrong.html and "greater than 0" in wrong.text
    saved = await submit(
        web_shop,
        edit,
        f"/admin/products/{kettle['id']}/edit",
        name="Steel Kettle",
        price="$1,299.99",
        imageUrl="",
    )
    assert saved.flashes() == ["success: Saved “Steel Kettle”."]
    product = await get_page(web_shop, f"/products/{kettle['id']}")
    assert "$1,299.99" in product.text and "/static/kettle.jpg" not in product.html

    restock = f"/admin/products/{kettle['id']}/stock"
    added = await submit(web_shop, products, restock, quantity=5)
    assert added.flashes() == ["success: “Steel Kettle” now has 15 in stock."]
    refused = await submit(web_shop, products, restock, quantity=-100)
    assert refused.flashes() == ["error: Not enough stock: 15 left, 100 asked for."]
    nothing = await submit(web_shop, products, restock, quantity="many")
    assert nothing.flashes()[0].startswith("error: Enter the units to add")
    assert await stock_of(web_shop, kettle["id"]) == 15

    deleted = await submit(web_shop, products, f"/admin/products/{kettle['id']}/delete")
    assert deleted.flashes() == ["success: Deleted “Steel Kettle”."]
    assert "Steel Kettle" not in deleted.text.replace("Deleted “Steel Kettle”", "")
    await get_page(web_shop, f"/products/{kettle['id']}", expected_status=404)
    gone = await web_shop.post(
        f"/admin/products/{kettle['id']}/delete",
        data={"csrf_token": products.form(restock).fields["csrf_token"]},
    )
    assert gone.status == 404 and "could not find that product" in (await read_page(gone)).text


async def test_an_admin_moves_orders_along_with_only_the_allowed_moves(
    web_shop: TestClient, aiohttp_client: Any
) -> None:
    admin = await admin_login_headers(web_shop)
    rug = await create_product(web_shop, admin, name="Rug", price=99.99, stock=10)
    await register_with_form(web_shop, "buyer@shop.test")
    shipped_id = await place_order(web_shop, rug["id"], 2)
    pending_id = await place_order(web_shop, rug["id"], 1)

    boss = await aiohttp_client(web_shop.server)
    await log_in_as_admin_with_form(boss)
    orders = await get_page(boss, "/admin/orders")
    assert buttons_in(row_of(orders, f"Order #{shipped_id}<")) == ["processing", "cancelled"]
    # Each order names its customer, who can be looked for by name, e-mail or number.
    assert "Ann Shopper" in row_of(orders, f"Order #{shipped_id}<")
    assert "buyer@shop.test" in row_of(orders, f"Order #{shipped_id}<")
    for text in ("BUYER@", "ann shop"):
        theirs = await get_page(boss, "/admin/orders?" + urlencode({"customer": text}))
        assert f"Order #{shipped_id}<" in theirs.html and f"Order #{pending_id}<" in theirs.html
        assert theirs.form("/admin/orders").fields["customer"] == text
    nobody = await get_page(boss, "/admin/orders?customer=nobody%25")
    assert "No orders for “nobody%”." in nobody.text
    action = f"/admin/orders/{shipped_id}/status"
    moved = await submit(boss, orders, action, button="Start processing")
    assert moved.flashes() == [f"success: Order #{shipped_id} is now processing."]
    assert buttons_in(row_of(moved, f"Order #{shipped_id}<")) == ["shipped", "cancelled"]
    moved = await submit(boss, moved, action, button="Mark shipped")
    assert buttons_in(row_of(moved, f"Order #{shipped_id}<")) == ["delivered"]

    # A move the lifecycle does not allow is refused by the order service, and said so.
    refused = await submit(boss, moved, action, status="pending")
    assert refused.flashes()[0].startswith("error: ")
    assert "Shipped" in row_of(refused, f"Order #{shipped_id}<")

    shipped = await get_page(boss, "/admin/orders?status=shipped")
    assert f"Order #{shipped_id}<" in shipped.html and f"Order #{pending_id}<" not in shipped.html
    assert shipped.form("/admin/orders").fields["status"] == "shipped"
    pending = await get_page(boss, "/admin/orders?status=pending")
    assert f"Order #{pending_id}<" in pending.html and f"Order #{shipped_id}<" not in pending.html
    # The filter is kept after a move made from the filtered list.
    cancelled = await submit(
        boss, pending, f"/admin/orders/{pending_id}/status", button="Cancel order"
    )
    assert unquote(cancelled.path) == "/admin/orders?status=pending"
    assert await stock_of(web_shop, rug["id"]) == 8  # the cancelled unit is back

    # The admin sees any order's page, with the moves it allows; the customer sees the history.
    detail = await get_page(boss, f"/orders/{shipped_id}")
    # Who placed it, by the name and e-mail it was placed with.
    assert "by Ann Shopper (buyer@shop.test)" in " ".join(detail.text.split())
    delivered = await submit(
        boss, detail, f"/admin/orders/{shipped_id}/status", button="Mark delivered"
    )
    assert delivered.path == f"/orders/{shipped_id}"
    assert not delivered.has_form(f"/admin/orders/{shipped_id}/status")
    history = await get_page(web_shop, f"/orders/{shipped_id}")
    steps = re.findall(r'<li><span class="status status--(\w+)">', history.html)
    assert steps == ["pending", "processing", "shipped", "delivered"]
    assert not history.has_form(f"/orders/{shipped_id}/cancel")


async def post_picture(
    client: TestClient, page: Page, product_id: str, data: bytes, filename: str
) -> Page:
    """Send the edit page's picture form (multipart) with this file, following redirects."""
    action = f"/admin/products/{product_id}/image"
    form = picture_form(data, filename=filename, content_type="image/png")
    for name, value in page.form(action).fields.items():
        form.add_field(name, value)
    return await read_page(await client.post(action, data=form))


async def test_an_admin_uploads_a_picture_that_replaces_the_drawing(
    web_shop: TestClient, aiohttp_client: Any
) -> None:
    admin = await admin_login_headers(web_shop)
    drawing = "/images/catalogue/kitchen-skillet.svg"
    pan = await create_product(web_shop, admin, name="Pan", category="kitchen", imageUrl=drawing)
    await log_in_as_admin_with_form(web_shop)
    edit = await get_page(web_shop, f"/admin/products/{pan['id']}/edit")
    action = f"/admin/products/{pan['id']}/image"
    form = edit.form(action)
    assert form.attrs["enctype"] == "multipart/form-data"
    field = next(e for e in edit.tags("input") if e.attrs.get("name") == "image")
    assert field.attrs["type"] == "file" and "image/png" in field.attrs["accept"]
    assert "f-image-hint" in field.attrs["aria-describedby"]

    # Not a picture: the edit page again, the reason next to the file field.
    refused = await post_picture(web_shop, edit, pan["id"], b"%PDF-1.7 not a picture", "a.png")
    assert refused.status == 400 and refused.path == action
    assert 'id="f-image-error"' in refused.html and "not a JPEG, PNG, WebP or GIF" in refused.text
    assert (await get_page(web_shop, f"/products/{pan['id']}")).html.count(drawing) == 1

    # A photo of 2 MiB (over the 1 MiB of every other form) with its location in it.
    photo = photo_with_location((1000, 700), image_format="PNG")
    big = noise_png(1000, 700)
    assert len(big) > 2 * 1024 * 1024
    saved = await post_picture(web_shop, edit, pan["id"], big, "big.png")
    assert saved.path == f"/admin/products/{pan['id']}/edit"
    assert saved.flashes() == ["success: New picture for “Pan”."]
    saved = await post_picture(web_shop, saved, pan["id"], photo, "pan.png")
    [product] = (
        await call(web_shop, "GET", f"/api/products?ids={pan['id']}", expected_status=200)
    )["data"]
    image_url = product["imageUrl"]
    assert re.fullmatch(r"/images/products/[0-9a-f]{32}\.webp", image_url)
    shown = await get_page(web_shop, f"/products/{pan['id']}")
    assert image_url in [img.attrs.get("src") for img in shown.tags("img")]
    assert drawing not in shown.html
    listed = await get_page(web_shop, "/admin/products")
    thumbnail = image_url.replace(".webp", "-400.webp")
    assert f'src="{thumbnail}"' in row_of(listed, ">Pan<")

    picture = await web_shop.get(image_url)
    assert picture.status == 200 and picture.content_type == "image/webp"
    assert metadata_of(await picture.read())["exif"] == {}

    # Without the form's token, or as a customer: nothing changes.
    forged = picture_form(photo, filename="x.png")
    assert (await web_shop.post(action, data=forged)).status == 403
    customer = await aiohttp_client(web_shop.server)
    await register_with_form(customer, "nosy@shop.test")
    page = await get_page(customer, "/")
    sneaky = picture_form(big, filename="x.png")
    sneaky.add_field("csrf_token", page.form("/logout").fields["csrf_token"])
    assert (await customer.post(action, data=sneaky)).status == 403
    [after] = (await call(web_shop, "GET", f"/api/products?ids={pan['id']}", expected_status=200))[
        "data"
    ]
    assert after["imageUrl"] == image_url


async def test_the_product_list_filters_by_category_and_flags_low_stock(
    web_shop: TestClient,
) -> None:
    from svc_gateway.pages.rendering import LOW_STOCK

    admin = await admin_login_headers(web_shop)
    await create_product(web_shop, admin, name="Kettle", category="kitchen", stock=LOW_STOCK)
    await create_product(web_shop, admin, name="Spoon", category="kitchen", stock=LOW_STOCK + 1)
    await create_product(web_shop, admin, name="Rake", category="garden", stock=0)
    await log_in_as_admin_with_form(web_shop)

    everything = await get_page(web_shop, "/admin/products")
    assert f"Stock of {LOW_STOCK} or fewer is flagged “Low stock”" in everything.text
    assert "Low stock" in row_of(everything, ">Kettle<")
    assert "Low stock" not in row_of(everything, ">Spoon<")
    assert "Out of stock" in row_of(everything, ">Rake<")
    assert "admin-product--low" in row_of(everything, ">Kettle<")
    options = everything.form("/admin/products").fields
    assert options["category"] == ""
    assert "garden (1)" in everything.text.lower() and "kitchen (2)" in everything.text.lower()

    kitchen = await get_page(web_shop, "/admin/products?category=kitchen")
    assert ">Kettle<" in kitchen.html and ">Spoon<" in kitchen.html
    assert ">Rake<" not in kitchen.html
    assert kitchen.form("/admin/products").fields["category"] == "kitchen"
    assert "2 products in kitchen" in kitchen.text
    both = await get_page(web_shop, "/admin/products?category=kitchen&q=spoon")
    assert ">Spoon<" in both.html and ">Kettle<" not in both.html
    nothing = await get_page(web_shop, "/admin/products?category=toys")
    assert "No products in toys." in nothing.text
