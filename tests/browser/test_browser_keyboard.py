"""Checkout with the keyboard alone: log in, add a product, open the cart, and on the checkout
page reach and use every control (the address radios, a new address's fields, the keep-it
box, the delivery radios, the card's fields and selects) with Tab, Shift+Tab, the arrow
keys, Enter, Space and typing, seeing where the focus is at every step."""

from __future__ import annotations

import re
import uuid

import pytest
from browser_support import (
    ACCEPTED_CARD,
    EXPIRY_MONTH,
    EXPIRY_YEAR,
    Shop,
    cart_link,
    confirmed_order_id,
    flash,
    heading,
)
from playwright.sync_api import Locator, Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The focused element's outline, or that of the nearest ancestor that draws one for it (a
# product card outlines itself when its link has the focus).
FOCUS_RING = """() => {
    const focused = document.activeElement;
    let element = focused;
    for (let depth = 0; element && depth < 4; depth += 1) {
        const style = getComputedStyle(element);
        if (style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2) {
            return {
                on: element === focused ? "itself" : element.tagName.toLowerCase(),
                outline: `${style.outlineWidth} ${style.outlineStyle} ${style.outlineColor}`,
                focusVisible: focused.matches(":focus-visible"),
            };
        }
        element = element.parentElement;
    }
    return null;
}"""


def tab_to(page: Page, target: Locator, *, key: str = "Tab", limit: int = 80) -> None:
    """Press Tab (or Shift+Tab) until `target` has the focus, and check it shows."""
    for _ in range(limit):
        page.keyboard.press(key)
        if target.evaluate("element => element === document.activeElement"):
            assert_focus_visible(page)
            return
    raise AssertionError(f"{limit} presses of {key} never reached {target}")


def tab_once_to(page: Page, target: Locator) -> None:
    """One press of Tab lands on `target` (the next control in the page's order)."""
    page.keyboard.press("Tab")
    expect(target).to_be_focused()
    assert_focus_visible(page)


def assert_focus_visible(page: Page) -> None:
    ring = page.evaluate(FOCUS_RING)
    focused = page.evaluate("() => document.activeElement.outerHTML.slice(0, 120)")
    assert ring is not None, f"no visible focus indicator on {focused}"
    assert ring["focusVisible"], f"{focused} has the focus but not :focus-visible"


def test_checkout_with_the_keyboard_alone(page: Page, shop: Shop) -> None:
    customer = shop.register_customer("Kim")
    shop.save_address(customer, label="Home")
    product = shop.create_product(
        name=f"Keyboard Wrist Rest {uuid.uuid4().hex[:6]}",
        price=16.40,
        category="office",
        stock=9,
    )
    page.goto("/")

    # The first Tab lands on the skip link, which shows itself.
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to main content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    assert_focus_visible(page)

    tab_to(page, page.get_by_role("link", name="Log in", exact=True))
    page.keyboard.press("Enter")
    expect(heading(page)).to_have_text("Log in")
    tab_to(page, page.get_by_label("Email"))
    page.keyboard.type(customer.email)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password", exact=True)).to_be_focused()
    page.keyboard.type(customer.password)
    page.keyboard.press("Enter")
    expect(flash(page)).to_contain_text("Welcome back, Kim.")

    # The newest product is near the top of the catalogue; its card shows the focus.
    tab_to(page, page.get_by_role("link", name=product["name"]))
    page.keyboard.press("Enter")
    expect(heading(page)).to_have_text(product["name"])
    quantity = page.get_by_label("Quantity")
    tab_to(page, quantity)
    page.keyboard.press("Control+A")
    page.keyboard.type("2")
    expect(quantity).to_have_value("2")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Add to cart")).to_be_focused()
    assert_focus_visible(page)
    page.keyboard.press("Space")
    expect(flash(page)).to_have_text(f"Added 2 units of {product['name']} to your cart.")

    # Backwards this time, from the end of the page up to the header's Cart link.
    tab_to(page, cart_link(page, 2), key="Shift+Tab")
    page.keyboard.press("Enter")
    expect(heading(page)).to_have_text("Your cart")
    expect(page.get_by_role("row", name=re.compile(r"^Total"))).to_contain_text("$32.80")
    tab_to(page, page.get_by_role("link", name="Check out", exact=True))
    page.keyboard.press("Enter")
    expect(heading(page)).to_have_text("Checkout")

    # Where it goes: Tab enters the group at the saved address (checked); the arrow key
    # moves to "A new address", then each of its fields in turn.
    where = page.get_by_role("group", name="Where it goes")
    saved = where.get_by_role("radio", name=re.compile("^Home"))
    tab_to(page, saved)
    expect(saved).to_be_checked()
    page.keyboard.press("ArrowDown")
    new_address = where.get_by_role("radio", name="A new address")
    expect(new_address).to_be_focused()
    expect(new_address).to_be_checked()
    assert_focus_visible(page)
    typed = {
        "Full name": "Kim Keys",
        "Street and number": "2 Tab Lane",
        "Flat, floor, company": "",
        "Town or city": "Leeds",
        "Postcode": "LS1 4AP",
        "County, state or province": "",
    }
    for label, text in typed.items():
        tab_once_to(page, where.get_by_label(label))
        page.keyboard.type(text)
    country = where.get_by_label("Country")
    tab_once_to(page, country)
    page.keyboard.type("United Kingdom")  # a closed select picks the option typed
    expect(country).to_have_value("GB")
    tab_once_to(page, where.get_by_label("Phone"))
    tab_once_to(page, where.get_by_label("Name for it"))
    page.keyboard.type("Work")
    keep = where.get_by_label("Keep it in my addresses")
    tab_once_to(page, keep)
    expect(keep).to_be_checked()
    page.keyboard.press("Space")
    expect(keep).not_to_be_checked()
    page.keyboard.press("Space")
    expect(keep).to_be_checked()

    # How it is delivered: Tab reaches the chosen option, the arrow key takes express.
    delivered = page.get_by_role("group", name="How it is delivered")
    standard = delivered.get_by_role("radio", name=re.compile("^Standard delivery"))
    tab_once_to(page, standard)
    expect(standard).to_be_checked()
    page.keyboard.press("ArrowDown")
    express = delivered.get_by_role("radio", name=re.compile("^Express delivery"))
    expect(express).to_be_focused()
    expect(express).to_be_checked()
    assert_focus_visible(page)

    # How you pay: the number, the month and year (typed into the closed selects), the code.
    paid = page.get_by_role("group", name="How you pay")
    tab_once_to(page, paid.get_by_label("Card number"))
    page.keyboard.type(ACCEPTED_CARD)
    month, year = paid.get_by_label("Expiry month"), paid.get_by_label("Expiry year")
    tab_once_to(page, month)
    page.keyboard.type(EXPIRY_MONTH)
    expect(month).to_have_value(EXPIRY_MONTH)
    tab_once_to(page, year)
    page.keyboard.type(EXPIRY_YEAR)
    expect(year).to_have_value(EXPIRY_YEAR)
    tab_once_to(page, paid.get_by_label("Security code"))
    page.keyboard.type("321")
    tab_once_to(page, page.get_by_role("button", name="Place order"))
    page.keyboard.press("Enter")

    order_id = confirmed_order_id(page)
    [order] = shop.orders_of(customer)
    assert order["id"] == order_id
    assert [(line["product_id"], line["quantity"]) for line in order["items"]] == [
        (product["id"], 2)
    ]
    assert order["delivery"]["option"] == "express"
    assert order["total_amount"] == 42.75  # 2 x 16.40 + 9.95 express
    assert (order["address"]["recipient"], order["address"]["city"]) == ("Kim Keys", "Leeds")
    assert (order["payment"]["brand"], order["payment"]["last4"]) == ("visa", "4242")
    assert shop.stock(product["id"]) == 7
    assert sorted(address["label"] for address in shop.addresses(customer)) == ["Home", "Work"]
