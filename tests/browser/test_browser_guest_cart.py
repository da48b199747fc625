"""A guest's cart in the browser: filled without an account, counted in the header, and
found merged into the account's cart after logging in from the cart page (capped at the
stock, with the shopper told), then bought; at desktop and phone widths, axe-core clean."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_support import (
    AXE_REPORTS,
    PASSWORD,
    SCREENSHOTS,
    WIDTHS,
    NewContext,
    Shop,
    axe_problems,
    check_out,
    confirmed_order_id,
    flash,
    heading,
)
from playwright.sync_api import BrowserContext, Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def look(
    context: BrowserContext, page: Page, new_context: NewContext, axe_script: Path, name: str
) -> list[str]:
    """A screenshot of the page as the shopper sees it, and axe-core's serious and critical
    problems with it, from a context that shares the cookies and lets axe's script in."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)
    audit = new_context(
        viewport=page.viewport_size, storage_state=context.storage_state(), bypass_csp=True
    )
    audited = audit.new_page()
    audited.goto(page.url)
    audited.add_script_tag(path=axe_script)
    problems = axe_problems(audited, AXE_REPORTS / f"{name}.json")
    audit.close()
    return [f"{name}: {problem}" for problem in problems]


@pytest.mark.parametrize("width", list(WIDTHS))
def test_a_guest_fills_a_cart_logs_in_and_buys_it(
    new_context: NewContext, shop: Shop, axe_script: Path, width: str
) -> None:
    customer = shop.register_customer("Ada")
    lamp = shop.create_product(name=f"Brass Desk Lamp ({width})", price=30, stock=3)
    shop.add_to_cart(customer, lamp["id"], 1)  # from another visit, logged in
    context = new_context(viewport=WIDTHS[width])
    page = context.new_page()
    problems: list[str] = []

    page.goto(f"/products/{lamp['id']}")
    expect(page.get_by_role("link", name="Cart (0 items in your cart)")).to_be_visible()
    page.get_by_label("Quantity").fill("3")
    page.get_by_role("button", name="Add to cart").click()
    expect(flash(page)).to_have_text(f"Added 3 units of {lamp['name']} to your cart.")
    cart_link = page.get_by_role("link", name="Cart (3 items in your cart)")
    expect(cart_link).to_be_visible()
    # The words are for screen readers; the eye sees "Cart (3)".
    expect(cart_link.locator(".cart-link__count")).to_have_text("(3)")

    cart_link.click()
    expect(heading(page)).to_have_text("Your cart")
    expect(page.get_by_label(f"Quantity of {lamp['name']}")).to_have_value("3")
    expect(page.get_by_role("link", name="Check out", exact=True)).to_have_count(0)
    problems += look(context, page, new_context, axe_script, f"guest-cart-{width}")

    page.get_by_role("link", name="Log in to check out").click()
    expect(heading(page)).to_have_text("Log in")
    page.get_by_label("Email").fill(customer.email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()

    # Back on the cart: 1 + 3 capped at the stock of 3, and the shopper is told.
    expect(page).to_have_url(re.compile(r"/cart$"))
    expect(flash(page)).to_contain_text("Welcome back, Ada.")
    expect(flash(page)).to_contain_text(
        "The 2 items you put in your cart before logging in are in it now."
    )
    expect(flash(page)).to_contain_text(
        f"Not everything from before you logged in could be added to your cart: "
        f"{lamp['name']}: 2 of 3 (that is all the stock)."
    )
    expect(page.get_by_label(f"Quantity of {lamp['name']}")).to_have_value("3")
    expect(page.get_by_role("link", name="Cart (3 items in your cart)")).to_be_visible()
    problems += look(context, page, new_context, axe_script, f"guest-cart-merged-{width}")
    assert [item["quantity"] for item in shop.cart(customer)["items"]] == [3]

    check_out(page, new_address=True)
    order_id = confirmed_order_id(page)
    expect(page.get_by_role("link", name="Cart (0 items in your cart)")).to_be_visible()
    assert shop.order(order_id)["total_amount"] == 90  # delivery is free from $50
    assert shop.stock(lamp["id"]) == 0
    context.close()
    assert not problems, "\n".join(problems)
