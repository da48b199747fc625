"""An administrator in the browser: creates a product through the form (after a price it
refuses) and moves a customer's order from pending to shipped."""

from __future__ import annotations

import re

import pytest
from browser_support import Shop, flash, heading, log_in
from playwright.sync_api import Page, expect
from support import SHOP_ADMIN_EMAIL

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
