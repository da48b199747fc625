"""A shopper's day in the browser: register, search, filter, fill the cart, check out (a new
address, delivery, a card), find the order and cancel it; and a product whose name is markup
shows as text."""

from __future__ import annotations

import re

import pytest
from browser_support import (
    PASSWORD,
    SCRIPT_NAME,
    Shop,
    accept_next_dialog,
    card_names,
    cart_link,
    check_out,
    confirmed_order_id,
    flash,
    heading,
)
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_a_shopper_registers_finds_buys_and_cancels(page: Page, shop: Shop) -> None:
    mug = shop.products["Enamel Camping Mug"]
    skillet = shop.products["Cast Iron Skillet"]
    stock_before = {mug["id"]: shop.stock(mug["id"]), skillet["id"]: shop.stock(skillet["id"])}

    page.goto("/")
    page.get_by_role("link", name="Register", exact=True).click()
    expect(heading(page)).to_have_text("Create an account")
    page.get_by_label("Email").fill("grace.hopper@example.com")
    page.get_by_label("First name").fill("Grace")
    page.get_by_label("Last name").fill("Hopper")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(flash(page)).to_have_text("Welcome, Grace! Your account is ready.")
    expect(page.get_by_role("button", name="Log out")).to_be_visible()

    # Search from the header: the words match names and descriptions.
    page.get_by_role("searchbox", name="Search products").fill("mug")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(heading(page)).to_have_text("Results for “mug”")
    expect(card_names(page)).to_have_count(2)
    assert sorted(card_names(page).all_inner_texts()) == [
        "Enamel Camping Mug",
        "Insulated Travel Mug",
    ]

    # Filter: a category, a price range, in stock only, cheapest first.
    page.get_by_role("link", name="Catalogue", exact=True).click()
    categories = page.get_by_role("navigation", name="Categories")
    categories.get_by_role("link", name=re.compile(r"^Kitchen \(5 products")).click()
    expect(heading(page)).to_have_text("Kitchen")
    expect(card_names(page)).to_have_count(5)
    page.get_by_label("From ($)").fill("10")
    page.get_by_label("To ($)").fill("50")
    page.get_by_label("In stock only").check()
    page.get_by_label("Sort by").select_option(label="Price: low to high")
    page.get_by_role("button", name="Apply").click()
    for part in ("category=kitchen", "minPrice=10", "maxPrice=50", "inStock=true", "sort=price"):
        expect(page).to_have_url(re.compile(re.escape(part)))
    # Out: the tea towels (9.50), the knife (79.00) and the kettle (out of stock).
    expect(card_names(page)).to_have_text(["Enamel Camping Mug", "Cast Iron Skillet"])
    expect(page.get_by_role("article").first).to_contain_text("$19.99")
    expect(page.get_by_label("In stock only")).to_be_checked()

    # Two products into the cart, from their pages.
    page.get_by_role("link", name="Enamel Camping Mug").click()
    expect(heading(page)).to_have_text("Enamel Camping Mug")
    page.get_by_label("Quantity").fill("1")
    page.get_by_role("button", name="Add to cart").click()
    expect(flash(page)).to_have_text("Added 1 unit of Enamel Camping Mug to your cart.")
    breadcrumb = page.get_by_role("navigation", name="Breadcrumb")
    breadcrumb.get_by_role("link", name="Kitchen").click()
    page.get_by_role("link", name="Cast Iron Skillet").click()
    page.get_by_role("button", name="Add to cart").click()
    expect(flash(page)).to_have_text("Added 1 unit of Cast Iron Skillet to your cart.")

    # The cart: three mugs instead of one, and exact totals.
    cart_link(page, 2).click()
    expect(heading(page)).to_have_text("Your cart")
    page.get_by_label("Quantity of Enamel Camping Mug").fill("3")
    page.get_by_role("button", name="Update quantity of Enamel Camping Mug").click()
    expect(flash(page)).to_have_text("You now have 3 of Enamel Camping Mug in your cart.")
    expect(page.get_by_label("Quantity of Enamel Camping Mug")).to_have_value("3")
    expect(page.get_by_role("row", name=re.compile("^Enamel Camping Mug"))).to_contain_text(
        "$59.97"
    )
    total = page.get_by_role("row", name=re.compile(r"^Total"))
    expect(total).to_contain_text("Total (4 items)")
    expect(total).to_contain_text("$104.47")

    # The checkout: a new address (kept), standard delivery, free over $50 of goods.
    check_out(page, new_address=True)
    order_id = confirmed_order_id(page)
    expect(page.get_by_role("main")).to_contain_text("$104.47 in total")
    delivery_row = page.get_by_role("row", name=re.compile("^Standard delivery"))
    expect(delivery_row).to_contain_text("Free")
    assert shop.stock(mug["id"]) == stock_before[mug["id"]] - 3
    assert shop.stock(skillet["id"]) == stock_before[skillet["id"]] - 1

    # My orders lists it; its page shows the lines and the history.
    page.get_by_role("link", name="My orders").click()
    row = page.get_by_role("row", name=re.compile(rf"^Order #{order_id}\b"))
    expect(row).to_contain_text("Pending")
    expect(row).to_contain_text("$104.47")
    row.get_by_role("link", name=f"Order #{order_id}").click()
    expect(heading(page)).to_have_text(f"Order #{order_id}")
    expect(page.get_by_role("row", name=re.compile("^Cast Iron Skillet"))).to_contain_text("$44.50")
    expect(page.get_by_role("region", name="Delivery")).to_contain_text("1 High Street")
    payment = page.get_by_role("region", name="Payment")
    expect(payment).to_contain_text("Visa ending 4242: $104.47 held on the card")

    # Cancel it while it is pending: the stock goes back and the hold is released.
    questions = accept_next_dialog(page)
    page.get_by_role("button", name="Cancel order").click()
    expect(flash(page)).to_have_text(f"Order #{order_id} is cancelled.")
    assert questions == [f"Cancel order #{order_id}?"]
    expect(page.locator(".order-heading")).to_contain_text("Cancelled")
    expect(page.get_by_role("button", name="Cancel order")).to_have_count(0)
    expect(page.get_by_role("region", name="History")).to_contain_text("Cancelled")
    expect(payment).to_contain_text("released: nothing was taken")

    order = shop.order(order_id)
    assert order["status"] == "cancelled"
    assert [step["status"] for step in order["history"]] == ["pending", "cancelled"]
    assert order["payment"]["status"] == "voided"
    assert shop.stock(mug["id"]) == stock_before[mug["id"]]
    assert shop.stock(skillet["id"]) == stock_before[skillet["id"]]


def test_a_product_name_that_is_markup_shows_as_text(page: Page, shop: Shop) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    product = shop.products[SCRIPT_NAME]

    page.goto("/?category=curiosities")
    expect(card_names(page)).to_have_text([SCRIPT_NAME])
    page.get_by_role("link", name=SCRIPT_NAME).click()
    expect(heading(page)).to_have_text(SCRIPT_NAME)
    expect(page).to_have_title(f"{SCRIPT_NAME} · Corner Shop")
    expect(page).to_have_url(re.compile(f"/products/{product['id']}$"))
    # The name is text, never an element, and no page carries an inline script at all.
    expect(page.locator("script:not([src])")).to_have_count(0)
    assert dialogs == []
