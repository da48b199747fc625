"""Every page at desktop and phone widths: a full-page screenshot under
test-results/screenshots/ to look at, the layout checks a person would make (no sideways
scrolling on a phone, every picture shown, no errors in the console), and axe-core with no
serious or critical violations."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser_support import (
    AXE_REPORTS,
    DECLINED_CARD,
    MISSING_IMAGE,
    SCREENSHOTS,
    WIDTHS,
    Customer,
    NewContext,
    Shop,
    axe_problems,
    cart_link,
    fill_card,
    heading,
    log_in,
)
from playwright.sync_api import Browser, ConsoleMessage, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from support import SHOP_ADMIN_EMAIL

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Images that have not rendered (yet): lazy ones are asked for at once, then waited for.
LOAD_IMAGES = "() => { for (const image of document.images) image.loading = 'eager'; }"
ALL_IMAGES_SHOWN = "() => [...document.images].every((i) => i.complete && i.naturalWidth > 0)"
UNSHOWN_IMAGES = """() => [...document.images]
    .filter((i) => !(i.complete && i.naturalWidth > 0))
    .map((i) => i.currentSrc.slice(0, 80) || i.outerHTML.slice(0, 80))"""
SIDEWAYS_OVERFLOW = """() => {
    const width = document.documentElement.clientWidth;
    const wide = [...document.querySelectorAll("body *")].filter((element) => {
        const box = element.getBoundingClientRect();
        return box.width > 0 && (box.right > width + 1 || box.left < -1)
            && !element.closest(".visually-hidden, .skip-link");
    });
    return {
        scrollWidth: document.documentElement.scrollWidth,
        width,
        elements: wide.slice(0, 5).map((e) => e.outerHTML.slice(0, 100)),
    };
}"""


@dataclass(frozen=True)
class Scene:
    """What the pages show: a customer with an order and a full cart, and who is logged in
    (Playwright storage states, made by logging in through the form)."""

    names: dict[str, str]  # values for the {placeholders} in paths and headings
    logins: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class ShopPage:
    name: str
    path: str
    title: str  # the h1, with {placeholders}
    viewer: str | None = None  # "customer", "newcomer", "admin" or nobody
    status: int = 200
    act: Callable[[Page], None] | None = None  # what the person does before we look


def submit_empty_registration(page: Page) -> None:
    page.get_by_label("Email").fill("not-an-email")
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("alert")).to_be_visible()


def submit_bad_product(page: Page) -> None:
    page.get_by_label("Name", exact=True).fill("Bad Price Vase")
    page.get_by_label("Price ($)").fill("-3")
    page.get_by_role("button", name="Create product").click()
    expect(page.get_by_role("alert")).to_be_visible()


def submit_empty_address(page: Page) -> None:
    page.get_by_role("button", name="Save address").click()
    expect(page.get_by_role("alert")).to_be_visible()


def submit_empty_checkout(page: Page) -> None:
    page.get_by_role("button", name="Place order").click()
    expect(page.get_by_role("alert")).to_be_visible()


def pay_with_a_declined_card(page: Page) -> None:
    fill_card(page, DECLINED_CARD)
    page.get_by_role("button", name="Place order").click()
    expect(page.get_by_role("alert")).to_be_visible()
    card_number = page.get_by_label("Card number")
    expect(card_number).to_have_value("")  # never echoed back
    expect(card_number).to_have_accessible_description(
        re.compile(r"Your card was declined\. .*try another card\.$")
    )
    expect(cart_link(page, 3)).to_be_visible()  # the page answers a POST: still counted


PAGES = [
    ShopPage("home", "/", "All products"),
    ShopPage(
        "home-filtered",
        "/?category=kitchen&minPrice=10&maxPrice=100&inStock=true&sort=price",
        "Kitchen",
    ),
    ShopPage("search-no-results", "/?q=unicorn", "Results for “unicorn”"),
    ShopPage("product", "/products/{mug}", "Enamel Camping Mug", "customer"),
    ShopPage("product-sold-out", "/products/{kettle}", "Copper Kettle"),
    ShopPage("register", "/register", "Create an account"),
    ShopPage("register-errors", "/register", "Create an account", act=submit_empty_registration),
    ShopPage("login", "/login", "Log in"),
    ShopPage("cart", "/cart", "Your cart", "customer"),
    ShopPage(
        "confirmation", "/orders/{order}/confirmation", "Thank you for your order!", "customer"
    ),
    ShopPage("checkout-saved-address", "/checkout", "Checkout", "customer"),
    ShopPage("checkout-new-address", "/checkout", "Checkout", "newcomer"),
    ShopPage("checkout-errors", "/checkout", "Checkout", "newcomer", act=submit_empty_checkout),
    ShopPage(
        "checkout-declined", "/checkout", "Checkout", "customer", act=pay_with_a_declined_card
    ),
    ShopPage(
        "confirmation-delivery",
        "/orders/{paid_order}/confirmation",
        "Thank you for your order!",
        "customer",
    ),
    ShopPage("orders", "/orders", "My orders", "customer"),
    ShopPage("order", "/orders/{order}", "Order #{order}", "customer"),
    ShopPage("order-delivery", "/orders/{paid_order}", "Order #{paid_order}", "customer"),
    ShopPage("profile", "/profile", "Your profile", "customer"),
    ShopPage("addresses", "/profile/addresses", "Your addresses", "customer"),
    ShopPage(
        "addresses-errors",
        "/profile/addresses",
        "Your addresses",
        "customer",
        act=submit_empty_address,
    ),
    ShopPage("admin-products", "/admin/products", "Manage products", "admin"),
    ShopPage(
        "admin-products-kitchen", "/admin/products?category=kitchen", "Manage products", "admin"
    ),
    ShopPage("admin-product-new", "/admin/products/new", "New product", "admin"),
    ShopPage(
        "admin-product-errors",
        "/admin/products/new",
        "New product",
        "admin",
        act=submit_bad_product,
    ),
    ShopPage(
        "admin-product-edit", "/admin/products/{mug}/edit", "Edit “Enamel Camping Mug”", "admin"
    ),
    ShopPage("admin-orders", "/admin/orders", "Manage orders", "admin"),
    ShopPage("admin-order", "/orders/{order}", "Order #{order}", "admin"),
    ShopPage("not-found", "/no-such-page", "Page not found", status=404),
]


def storage_state_after_login(browser: Browser, shop: Shop, email: str, password: str) -> Any:
    context = browser.new_context(base_url=shop.url)
    try:
        log_in(context.new_page(), email, password)
        return context.storage_state()
    finally:
        context.close()


@pytest.fixture(scope="module")
def scene(shop: Shop, browser: Browser) -> Scene:
    """A customer with a saved address, two orders (pending: one placed without delivery,
    as before the checkout page, one with express delivery and a card) and two products in
    the cart; a newcomer with no address and one product in the cart."""
    products = shop.products
    mug, skillet = products["Enamel Camping Mug"], products["Cast Iron Skillet"]
    notebook, seeds = products["Pocket Notebook"], products["Seed Starter Kit"]
    customer: Customer = shop.register_customer("Ada", "Lovelace")
    shop.save_address(customer, label="Home", recipient="Ada Lovelace", phone="+44 20 7946 0000")
    order = shop.place_order(customer, [(mug["id"], 1), (skillet["id"], 2)])
    paid_order = shop.place_order(
        customer, [(notebook["id"], 2), (seeds["id"], 1)], delivery="express"
    )
    shop.add_to_cart(customer, mug["id"], 2)
    shop.add_to_cart(customer, products["Watering Can"]["id"], 1)
    newcomer = shop.register_customer("Noor", "Newcomer")
    shop.add_to_cart(newcomer, products["Tea Towel Set"]["id"], 1)
    return Scene(
        names={
            "mug": mug["id"],
            "kettle": products["Copper Kettle"]["id"],
            "order": str(order["id"]),
            "paid_order": str(paid_order["id"]),
        },
        logins={
            "customer": storage_state_after_login(browser, shop, customer.email, customer.password),
            "newcomer": storage_state_after_login(browser, shop, newcomer.email, newcomer.password),
            "admin": storage_state_after_login(
                browser, shop, SHOP_ADMIN_EMAIL, shop.admin_password
            ),
        },
    )


def open_page(
    new_context: NewContext, scene: Scene, shop_page: ShopPage, **extra: Any
) -> tuple[Page, list[str]]:
    """The page in a fresh desktop-sized browser, as its viewer, after what the person does;
    and the errors it logs (a list that keeps filling)."""
    context = new_context(
        viewport=WIDTHS["desktop"],
        storage_state=scene.logins.get(shop_page.viewer or "", None),
        **extra,
    )
    page = context.new_page()
    errors: list[str] = []

    def console_error(message: ConsoleMessage) -> None:
        source = message.location.get("url", "")
        # The document's own status (a 404 page, a form sent back with a 400) is meant.
        if message.type == "error" and source != page.url and MISSING_IMAGE not in source:
            errors.append(f"console: {message.text} ({source})")

    page.on("console", console_error)
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    response = page.goto(shop_page.path.format(**scene.names))
    assert response is not None and response.status == shop_page.status, shop_page.path
    expect(heading(page)).to_have_text(shop_page.title.format(**scene.names))
    if shop_page.act is not None:
        shop_page.act(page)
    return page, errors


def look_at(page: Page, width: str) -> list[str]:
    """What a person would see is wrong: missing pictures, a page wider than a phone, no
    title."""
    problems = []
    page.evaluate(LOAD_IMAGES)
    try:
        page.wait_for_function(ALL_IMAGES_SHOWN, timeout=10_000)
    except PlaywrightTimeout:
        problems.append(f"images not shown: {page.evaluate(UNSHOWN_IMAGES)}")
    if width == "phone":
        overflow = page.evaluate(SIDEWAYS_OVERFLOW)
        if overflow["scrollWidth"] > overflow["width"]:
            problems.append(f"wider than the phone, scrolls sideways: {overflow}")
    title = page.title()
    if not title.endswith(" · Corner Shop") or title.startswith(" ·"):
        problems.append(f"title {title!r}")
    return problems


@pytest.mark.parametrize("shop_page", PAGES, ids=lambda shop_page: shop_page.name)
def test_page_at_desktop_and_phone_width(
    shop_page: ShopPage,
    scene: Scene,
    new_context: NewContext,
    axe_script: Path,
) -> None:
    problems: list[str] = []
    # As the shopper gets it, its Content-Security-Policy in force: what it looks like.
    page, errors = open_page(new_context, scene, shop_page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width, size in WIDTHS.items():
        page.set_viewport_size(size)
        problems += [f"{width}: {problem}" for problem in look_at(page, width)]
        page.screenshot(path=SCREENSHOTS / f"{shop_page.name}-{width}.png", full_page=True)
    problems += errors
    page.context.close()

    # axe-core is injected as a script, which that policy rightly forbids: a context that
    # bypasses it, for the audit only.
    page, _ = open_page(new_context, scene, shop_page, bypass_csp=True)
    page.add_script_tag(path=axe_script)
    for width, size in WIDTHS.items():
        page.set_viewport_size(size)
        report = AXE_REPORTS / f"{shop_page.name}-{width}.json"
        problems += [f"{width}: {problem}" for problem in axe_problems(page, report)]
    page.context.close()
    assert not problems, f"{shop_page.name} ({shop_page.path}):\n" + "\n".join(problems)
