"""Checkout with the keyboard alone: log in, add a product, open the cart and place the order
with Tab, Shift+Tab, Enter, Space and typing, seeing where the focus is at every step."""

from __future__ import annotations

import re
import uuid

import pytest
from browser_support import Shop, confirmed_order_id, flash, heading
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


def assert_focus_visible(page: Page) -> None:
    ring = page.evaluate(FOCUS_RING)
    focused = page.evaluate("() => document.activeElement.outerHTML.slice(0, 120)")
    assert ring is not None, f"no visible focus indicator on {focused}"
    assert ring["focusVisible"], f"{focused} has the focus but not :focus-visible"


def test_checkout_with_the_keyboard_alone(page: Page, shop: Shop) -> None:
    customer = shop.register_customer("Kim")
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
    tab_to(page, page.get_by_role("link", name="Cart", exact=True), key="Shift+Tab")
    page.keyboard.press("Enter")
    expect(heading(page)).to_have_text("Your cart")
    expect(page.get_by_role("row", name=re.compile(r"^Total"))).to_contain_text("$32.80")
    tab_to(page, page.get_by_role("button", name="Place order"))
    page.keyboard.press("Enter")

    order_id = confirmed_order_id(page)
    [order] = shop.orders_of(customer)
    assert order["id"] == order_id
    assert [(line["product_id"], line["quantity"]) for line in order["items"]] == [
        (product["id"], 2)
    ]
    assert shop.stock(product["id"]) == 7
