"""An administrator in the browser: creates a product through the form (after a price it
refuses) and moves a customer's order from pending to shipped."""

from __future__ import annotations

import re

import pytest
from browser_support import SCREENSHOTS, Shop, flash, heading, log_in
from playwright.sync_api import Page, expect
from support import SHOP_ADMIN_EMAIL, photo_with_location

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def action_name(action: str, order_id: int) -> re.Pattern[str]:
    """A status button's accessible name: "Mark shipped: order #7". Chromium puts a space
    before the colon (the visually hidden part is out of flow), hence the pattern."""
    return re.compile(rf"^{action}\s?: order #{order_id}$")


def test_an_admin_creates_a_product_after_fixing_its_price(page: Page, shop: Shop) -> None:
    log_in(page, SHOP_ADMIN_EMAIL, shop.admin_password)
    page.get_by_role("link", name="Manage products").click()
    expect(heading(page)).to_have_text("Manage products")
    page.get_by_role("link", name="New product").click()
    expect(heading(page)).to_have_text("New product")

    page.get_by_label("Name", exact=True).fill("Solar Garden Lantern")
    page.get_by_label("Description").fill("Charges by day, glows all night.")
    page.get_by_label("Price ($)").fill("twelve")
    page.get_by_label("Category").fill("garden")
    page.get_by_label("Units in stock").fill("7")
    page.get_by_role("button", name="Create product").click()

    # Refused: the form comes back with what was typed, the price marked and explained.
    expect(page.get_by_role("alert")).to_contain_text("Please correct the fields marked below.")
    expect(page.get_by_role("alert")).to_be_focused()
    price = page.get_by_label("Price ($)")
    expect(price).to_have_attribute("aria-invalid", "true")
    expect(price).to_have_accessible_description(re.compile("number", re.IGNORECASE))
    expect(price).to_have_value("twelve")
    expect(page.get_by_label("Name", exact=True)).to_have_value("Solar Garden Lantern")
    expect(page.get_by_label("Units in stock")).to_have_value("7")
    assert shop.api("GET", "/api/products?q=Lantern")["total"] == 0

    price.fill("15.50")
    page.get_by_role("button", name="Create product").click()
    expect(flash(page)).to_have_text("Created “Solar Garden Lantern”.")
    expect(heading(page)).to_have_text("Manage products")
    row = page.get_by_role("row", name=re.compile("^Solar Garden Lantern"))
    expect(row).to_contain_text("$15.50")
    expect(row).to_contain_text("garden")

    [created] = shop.api("GET", "/api/products?q=Lantern")["data"]
    assert (created["price"], created["stock"], created["category"]) == (15.5, 7, "garden")
    assert created["description"] == "Charges by day, glows all night."

    # Shoppers see it in the catalogue.
    page.goto("/?q=lantern")
    expect(page.get_by_role("article")).to_contain_text("Solar Garden Lantern")


def test_an_admin_ships_an_order(page: Page, shop: Shop) -> None:
    customer = shop.register_customer("Olive")
    lamp = shop.products["Desk Lamp"]
    order_id = shop.place_order(customer, [(lamp["id"], 1)])["id"]

    log_in(page, SHOP_ADMIN_EMAIL, shop.admin_password)
    page.get_by_role("link", name="Manage orders").click()
    expect(heading(page)).to_have_text("Manage orders")
    page.get_by_label("Show").select_option("pending")
    page.get_by_role("button", name="Filter").click()
    row = page.get_by_role("row", name=re.compile(rf"^Order #{order_id}\b"))
    expect(row).to_contain_text("Pending")
    expect(row).to_contain_text("$39.99")
    row.get_by_role("button", name=action_name("Start processing", order_id)).click()
    expect(flash(page)).to_have_text(f"Order #{order_id} is now processing.")

    page.get_by_label("Show").select_option("processing")
    page.get_by_role("button", name="Filter").click()
    row = page.get_by_role("row", name=re.compile(rf"^Order #{order_id}\b"))
    expect(row).to_contain_text("Processing")
    row.get_by_role("button", name=action_name("Mark shipped", order_id)).click()
    expect(flash(page)).to_have_text(f"Order #{order_id} is now shipped.")

    order = shop.order(order_id)
    assert order["status"] == "shipped"
    assert [step["status"] for step in order["history"]] == ["pending", "processing", "shipped"]

    # The order's own page shows where it stands and the one move left.
    page.goto(f"/orders/{order_id}")
    expect(heading(page)).to_have_text(f"Order #{order_id}")
    history = page.get_by_role("region", name="History")
    for label in ("Pending", "Processing", "Shipped"):
        expect(history).to_contain_text(label)
    expect(page.get_by_role("button", name="Mark delivered")).to_be_visible()
    expect(page.get_by_role("button", name="Cancel order")).to_have_count(0)


def test_the_admin_navigation_stays_one_row_on_a_phone(page: Page, shop: Shop) -> None:
    log_in(page, SHOP_ADMIN_EMAIL, shop.admin_password)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/admin/products")
    nav = page.get_by_role("navigation", name="Main")
    links = nav.get_by_role("link")
    expect(links).to_have_count(6)  # and the Log out button: seven in all
    row = links.first.bounding_box()
    box = nav.locator("ul").bounding_box()
    assert row is not None and box is not None
    # Seven entries wrapped to three rows before; now one row that scrolls sideways.
    assert box["height"] < 1.6 * row["height"] + 8, (box, row)
    tops = {round(link.bounding_box()["y"]) for link in links.all()}
    assert len(tops) == 1, tops
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # the page itself
    # Every entry is reachable by keyboard: focus brings one scrolled out of view into it.
    log_out = nav.get_by_role("button", name="Log out")
    log_out.focus()
    place = log_out.bounding_box()
    assert place is not None and place["x"] >= 0 and place["x"] + place["width"] <= 390
    page.screenshot(path=SCREENSHOTS / "admin-nav-phone-scrolled.png")


def test_an_admin_uploads_a_picture_of_a_product(page: Page, shop: Shop) -> None:
    product = shop.create_product(name="Picnic Blanket", price=24, category="garden", stock=3)
    log_in(page, SHOP_ADMIN_EMAIL, shop.admin_password)
    page.goto("/admin/products?category=garden")
    row = page.get_by_role("row", name=re.compile("Picnic Blanket"))
    expect(row).to_contain_text("Low stock")
    row.get_by_role("link", name="Edit Picnic Blanket").click()
    expect(heading(page)).to_have_text("Edit “Picnic Blanket”")

    picture = page.get_by_label("New picture")
    expect(picture).to_have_accessible_description(re.compile("at most 5 MiB"))
    picture.set_input_files(
        {"name": "notes.png", "mimeType": "image/png", "buffer": b"these are notes, not pixels"}
    )
    page.get_by_role("button", name="Upload picture").click()
    expect(picture).to_have_attribute("aria-invalid", "true")
    expect(picture).to_have_accessible_description(re.compile("not a JPEG, PNG, WebP or GIF"))

    picture.set_input_files(
        {"name": "blanket.jpg", "mimeType": "image/jpeg", "buffer": photo_with_location()}
    )
    page.get_by_role("button", name="Upload picture").click()
    expect(flash(page)).to_have_text("New picture for “Picnic Blanket”.")
    image_url = shop.api("GET", f"/api/products/{product['id']}")["data"]["imageUrl"]
    assert re.fullmatch(r"/images/products/[0-9a-f]{32}\.webp", image_url)
    preview = page.get_by_role("img", name="The current picture of Picnic Blanket")
    expect(preview).to_have_attribute("src", image_url)
    assert preview.evaluate("image => image.complete && image.naturalWidth") == 1200
    page.screenshot(path=SCREENSHOTS / "admin-product-picture-desktop.png", full_page=True)

    page.goto("/admin/products?category=garden")
    thumbnail = page.get_by_role("row", name=re.compile("Picnic Blanket")).locator("img")
    expect(thumbnail).to_have_attribute("src", image_url.replace(".webp", "-400.webp"))
    assert thumbnail.evaluate("image => image.complete && image.naturalWidth") == 400
