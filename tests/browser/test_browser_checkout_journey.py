"""The whole #17 journey in the browser, at desktop and phone widths: a guest fills a cart
(counted in the header), registers from the cart to check out and finds the cart merged,
sends the order to a new address kept in the book, by express delivery, has a card declined
(told so next to the card, nothing bought, charged or lost), pays with another, sees the
confirmation with the address, the delivery and the card, and gets one e-mail; every page
of it axe-core clean, as the shopper has it (its Content-Security-Policy in force)."""

from __future__ import annotations

import re
import uuid
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest
from browser_support import (
    ADDRESS,
    DECLINED_CARD,
    PASSWORD,
    WIDTHS,
    NewContext,
    Shop,
    address_group,
    audit_in_place,
    cart_link,
    choose_delivery,
    confirmed_order_id,
    fill_card,
    fill_new_address,
    flash,
    heading,
    open_checkout,
)
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DECLINED = "Your card was declined. No order was placed and nothing was charged; try another card."


@pytest.mark.parametrize("width", list(WIDTHS))
def test_a_guest_registers_pays_after_a_decline_and_gets_one_email(
    new_context: NewContext, shop: Shop, axe_script: Path, width: str
) -> None:
    candle = shop.create_product(name=f"Beeswax Candle ({width})", price=12.40, stock=5)
    email = f"jo.{width}.{uuid.uuid4().hex[:8]}@example.com"
    page = new_context(viewport=WIDTHS[width]).new_page()
    problems: list[str] = []

    def look(step: str) -> None:
        problems.extend(audit_in_place(page, axe_script, f"journey-{step}-{width}"))

    # A guest: the header counts the cart from the first page on.
    page.goto(f"/products/{candle['id']}")
    expect(cart_link(page, 0)).to_be_visible()
    look("product")
    page.get_by_label("Quantity").fill("2")
    page.get_by_role("button", name="Add to cart").click()
    expect(flash(page)).to_have_text(f"Added 2 units of {candle['name']} to your cart.")
    cart_link(page, 2).click()
    expect(heading(page)).to_have_text("Your cart")
    look("guest-cart")

    # Checking out asks for an account: log in, or (new here) register.
    page.get_by_role("link", name="Log in to check out").click()
    expect(heading(page)).to_have_text("Log in")
    page.get_by_role("link", name="Create an account").click()
    expect(heading(page)).to_have_text("Create an account")
    look("register")
    page.get_by_label("Email").fill(email)
    page.get_by_label("First name").fill("Jo")
    page.get_by_label("Last name").fill("Journey")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()

    # Back on the cart, the guest's cart now the account's.
    expect(page).to_have_url(re.compile(r"/cart$"))
    expect(flash(page)).to_contain_text("Welcome, Jo!")
    expect(flash(page)).to_contain_text(
        "The 2 items you put in your cart before logging in are in it now."
    )
    expect(page.get_by_label(f"Quantity of {candle['name']}")).to_have_value("2")
    expect(cart_link(page, 2)).to_be_visible()
    look("merged-cart")
    customer = shop.log_in(email)
    merged = [(line["product_id"], line["quantity"]) for line in shop.cart(customer)["items"]]
    assert merged == [(candle["id"], 2)]

    # The checkout: no saved address yet, so "This address"; kept; express delivery.
    open_checkout(page)
    expect(address_group(page).get_by_role("radio", name="This address")).to_be_checked()
    fill_new_address(page, keep=True)
    choose_delivery(page, "Express")
    express = page.get_by_role("radio", name="Express delivery (next working day): $9.95")
    expect(express).to_have_accessible_description("Order total with it: $34.75")
    look("checkout")

    # A declined card: said next to the card number (which is not shown again), nothing
    # bought, nothing held, nothing lost; what was chosen stays chosen.
    fill_card(page, DECLINED_CARD)
    page.get_by_role("button", name="Place order").click()
    expect(page.get_by_role("alert")).to_have_text("Please correct the fields marked below.")
    expect(page.get_by_role("alert")).to_be_focused()  # read first, and Tab goes on from it
    card_number = page.get_by_label("Card number")
    expect(card_number).to_have_value("")
    expect(card_number).to_have_attribute("aria-invalid", "true")
    expect(card_number).to_have_accessible_description(re.compile(re.escape(DECLINED) + "$"))
    expect(page.get_by_label("Security code")).to_have_value("")
    kept = address_group(page).get_by_role("radio", name=re.compile("^Ann Shopper"))
    expect(kept).to_be_checked()  # kept in the book with the first press: chosen from it
    expect(express).to_be_checked()
    expect(cart_link(page, 2)).to_be_visible()
    look("checkout-declined")
    assert shop.orders_of(customer) == []
    assert shop.stock(candle["id"]) == 5
    assert [(line["product_id"], line["quantity"]) for line in shop.cart(customer)["items"]] == [
        (candle["id"], 2)
    ]
    [address] = shop.addresses(customer)
    assert {name: address[name] for name in ADDRESS} == ADDRESS

    # The accepted card: the confirmation says where, how and how it was paid.
    fill_card(page)
    page.get_by_role("button", name="Place order").click()
    order_id = confirmed_order_id(page)
    expect(page.get_by_role("main")).to_contain_text("$34.75 in total")
    delivery_row = page.get_by_role("row", name=re.compile(r"^Express delivery"))
    expect(delivery_row).to_contain_text("$9.95")
    where = page.get_by_role("region", name="Delivery")
    for line in ("Ann Shopper", "1 High Street", "London SW1A 1AA", "United Kingdom"):
        expect(where).to_contain_text(line)
    expect(where).to_contain_text("Express delivery (next working day)")
    paid = page.get_by_role("region", name="Payment")
    expect(paid).to_contain_text("Visa ending 4242: $34.75 held on the card")
    expect(cart_link(page, 0)).to_be_visible()
    look("confirmation")

    [order] = shop.orders_of(customer)
    assert order["id"] == order_id
    assert (order["subtotal_amount"], order["total_amount"]) == (24.80, 34.75)
    assert (order["delivery"]["option"], order["delivery"]["price"]) == ("express", 9.95)
    assert {name: order["address"][name] for name in ADDRESS} == ADDRESS
    payment = order["payment"]
    assert (payment["brand"], payment["last4"], payment["status"]) == ("visa", "4242", "authorised")
    assert payment["amount"] == 34.75
    assert order["customer"]["email"] == email
    assert shop.stock(candle["id"]) == 3
    assert shop.cart(customer)["items"] == []
    assert len(shop.addresses(customer)) == 1  # kept once, though the form went twice

    # One e-mail, "placed", to this customer (the declined attempt sent none), as the
    # shop's SMTP sink kept it.
    mails = shop.wait_for_mail(email)
    assert [mail["subject"] for mail in mails] == [f"Your order #{order_id} is placed"], mails
    message = message_from_bytes(Path(mails[0]["file"]).read_bytes(), policy=default_policy)
    assert isinstance(message, EmailMessage)
    assert message["To"] == email
    plain = message.get_body(preferencelist=("plain",))
    assert plain is not None
    text = plain.get_content().replace("\r\n", "\n")
    assert f"We have your order #{order_id}" in text
    assert (
        f"  {candle['name']}: 2 at $12.40 = $24.80\n"
        "  Goods: $24.80\n"
        "  Express delivery (next working day): $9.95\n"
        "  Total: $34.75\n"
    ) in text
    assert "Delivery address:\n  Ann Shopper\n  1 High Street\n  London SW1A 1AA\n" in text

    assert not problems, "\n".join(problems)
