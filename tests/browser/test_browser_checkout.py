"""Checkout's guards in the browser: a double-submitted checkout page buys once (and charges
once), and a form post without the right CSRF token is refused and changes nothing."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from browser_support import (
    CONFIRMATION_URL,
    Customer,
    NewContext,
    Shop,
    checkout_form_fields,
    confirmed_order_id,
    fill_card,
    heading,
    log_in,
    open_checkout,
)
from playwright.sync_api import BrowserContext, Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FORM_EXPIRED = "This form has expired"


@dataclass(frozen=True)
class Shopper:
    """A logged-in customer in the test's page, with two units of a product of its own (stock
    10) in the cart and an address in the book."""

    customer: Customer
    product: dict[str, Any]
    page: Page


@pytest.fixture
def shopper(shop: Shop, page: Page) -> Shopper:
    """A customer logged in on ``page``, two aprons in the cart, on the checkout page with
    the saved address and standard delivery chosen and the accepted card typed in: one
    press of Place order from buying."""
    product = shop.create_product(
        name=f"Linen Apron {uuid.uuid4().hex[:6]}", price=18.25, category="textiles", stock=10
    )
    customer = shop.register_customer("Cass")
    shop.add_to_cart(customer, product["id"], 2)
    shop.save_address(customer, label="Home")
    log_in(page, customer.email, customer.password)
    page.goto("/cart")
    expect(page.get_by_role("row", name=product["name"])).to_contain_text("$36.50")
    open_checkout(page)
    expect(page.get_by_role("radio", name=re.compile("^Home"))).to_be_checked()
    expect(page.get_by_role("radio", name=re.compile("^Standard delivery"))).to_be_checked()
    fill_card(page)
    return Shopper(customer, product, page)


def assert_bought_once(shop: Shop, shopper: Shopper, order_id: int) -> None:
    """Exactly one order, the confirmed one, paid once: the stock taken once, the card
    held once for goods + delivery."""
    orders = shop.orders_of(shopper.customer)
    assert [order["id"] for order in orders] == [order_id]
    [order] = orders
    assert order["total_amount"] == 41.45  # 2 x 18.25 + 4.95 standard delivery
    assert order["payment"]["status"] == "authorised"
    assert order["payment"]["amount"] == 41.45
    assert shop.stock(shopper.product["id"]) == 8
    assert shop.cart(shopper.customer)["items"] == []


def test_a_double_click_on_place_order_buys_once(shop: Shop, shopper: Shopper) -> None:
    page = shopper.page
    posts: list[str] = []
    page.on(
        "request", lambda request: posts.append(request.url) if request.method == "POST" else None
    )
    page.get_by_role("button", name="Place order").dblclick()
    assert_bought_once(shop, shopper, confirmed_order_id(page))
    # shop.js let the first submit through and held back the second.
    assert posts == [f"{shop.url}/checkout"]


def test_the_same_checkout_form_posted_again_buys_once(shop: Shop, shopper: Shopper) -> None:
    page = shopper.page
    form = checkout_form_fields(page)
    page.get_by_role("button", name="Place order").click()
    order_id = confirmed_order_id(page)

    # The same form again (as a refresh that re-posts does): the same order, nothing bought.
    again = page.request.post("/checkout", form=form, max_redirects=0)
    assert again.status == 303, again.text()
    assert again.headers["location"] == f"/orders/{order_id}/confirmation"

    # Back to the checkout page: the cart is empty now, so it sends the shopper to the
    # cart and there is nothing to submit twice.
    page.go_back()
    expect(heading(page)).to_have_text("Your cart")
    expect(page.get_by_role("main")).to_contain_text("Your cart is empty.")
    assert_bought_once(shop, shopper, order_id)


def test_two_checkouts_sent_at_once_buy_once(shop: Shop, shopper: Shopper) -> None:
    """The form sent twice at the same moment, as a double click does with JavaScript off:
    the idempotency key in the form makes the second one buy nothing."""
    final_urls = shopper.page.locator("form[action='/checkout']").evaluate(
        """async (form) => {
            const body = new URLSearchParams(new FormData(form));
            const send = () => fetch(form.action, {method: "POST", body});
            const replies = await Promise.all([send(), send()]);
            return replies.map((reply) => new URL(reply.url).pathname);
        }"""
    )
    # Both end on the one order's confirmation (the order service makes the second wait for
    # the first), so whichever answer the browser shows is the right one.
    first, second = final_urls
    assert first == second and CONFIRMATION_URL.search(first), final_urls
    assert_bought_once(shop, shopper, int(first.split("/")[2]))


# -- CSRF --------------------------------------------------------------------------------------


@pytest.fixture
def other_context(new_context: NewContext) -> BrowserContext:
    """A second browser (closed by pytest-playwright), for someone else's session."""
    return new_context()


def test_posts_without_the_right_csrf_token_are_refused_and_change_nothing(
    shop: Shop, shopper: Shopper, other_context: BrowserContext
) -> None:
    page = shopper.page
    form = checkout_form_fields(page)
    assert form["card_number"] == "4242 4242 4242 4242"
    without_token = {name: value for name, value in form.items() if name != "csrf_token"}

    # A valid token of another shopper's session does not pass for this one.
    other_page = other_context.new_page()
    someone_else = shop.register_customer("Eve")
    log_in(other_page, someone_else.email, someone_else.password)
    other_page.goto("/cart")
    foreign_token = other_page.locator("form[action='/logout'] input[name='csrf_token']")

    attempts = {
        "/checkout": [
            without_token,
            {**without_token, "csrf_token": ""},
            {**without_token, "csrf_token": "forged"},
            {**without_token, "csrf_token": foreign_token.input_value()},
        ],
        "/cart/clear": [{}],
        "/cart/items": [{"product_id": shopper.product["id"], "quantity": "5"}],
        f"/cart/items/{shopper.product['id']}/remove": [{}],
        "/logout": [{}],
    }
    for action, forms in attempts.items():
        for fields in forms:
            reply = page.request.post(action, form=fields, max_redirects=0)
            assert reply.status == 403, (action, fields, reply.status)
            assert reply.headers["content-type"].startswith("text/html")
            assert FORM_EXPIRED in reply.text(), (action, fields)

    # In the page itself: the checkout form without its token gets the 403 page.
    page.goto("/checkout")
    fill_card(page)
    page.locator("form[action='/checkout'] input[name='csrf_token']").evaluate("e => e.remove()")
    with page.expect_response(lambda reply: reply.url.endswith("/checkout")) as refused:
        page.get_by_role("button", name="Place order").click()
    assert refused.value.status == 403
    expect(heading(page)).to_have_text(FORM_EXPIRED)

    # Nothing changed: still logged in, no order, the cart and the stock as they were.
    page.goto("/cart")
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    expect(page.get_by_label(f"Quantity of {shopper.product['name']}")).to_have_value("2")
    assert shop.orders_of(shopper.customer) == []
    [line] = shop.cart(shopper.customer)["items"]
    assert (line["product_id"], line["quantity"]) == (shopper.product["id"], 2)
    assert shop.stock(shopper.product["id"]) == 10

    # And the same form with its token goes through (the refusals were about the token).
    open_checkout(page)
    fill_card(page)
    page.get_by_role("button", name="Place order").click()
    assert_bought_once(shop, shopper, confirmed_order_id(page))
