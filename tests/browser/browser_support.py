"""What the browser tests share: the running shop and its seed catalogue, API calls that set
up a scene and check what the pages did to the real services, and small page helpers."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from playwright.sync_api import BrowserContext, Locator, Page, expect
from support import REPO, eventually_sync, http, shopctl

SCREENSHOTS = REPO / "test-results" / "screenshots"
WIDTHS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
AXE_REPORTS = REPO / "test-results" / "axe"
FAILING_IMPACTS = ("serious", "critical")

RUN_AXE = """async () => {
    const results = await axe.run(document, {resultTypes: ["violations"]});
    return results.violations.map((violation) => ({
        id: violation.id,
        impact: violation.impact,
        help: violation.help,
        helpUrl: violation.helpUrl,
        nodes: violation.nodes.map((node) => ({
            target: node.target.join(" "),
            html: node.html,
            summary: node.failureSummary,
        })),
    }));
}"""
PASSWORD = "browser-test-password"
SCRIPT_NAME = "<script>alert(1)</script>"
# pytest-playwright's `new_context` fixture: a browser context made with these options (and
# closed after the test).
NewContext = Callable[..., BrowserContext]
# A product whose picture is gone: the page falls back to its generated one.
MISSING_IMAGE = "/static/images/pocket-notebook.jpg"

# The built-in test provider's cards (the checkout page lists them), an expiry that stays in
# the future, and an address in a country the shop delivers to.
ACCEPTED_CARD = "4242 4242 4242 4242"
DECLINED_CARD = "4000 0000 0000 0002"
EXPIRY_MONTH = "12"
EXPIRY_YEAR = str(datetime.now(UTC).year + 2)
ADDRESS = {
    "recipient": "Ann Shopper",
    "line1": "1 High Street",
    "city": "London",
    "postal_code": "SW1A 1AA",
    "country": "GB",
}
COUNTRY_NAMES = {"GB": "United Kingdom"}
# How long an e-mail may take from the order's commit to the sink's mail/ (the sender looks
# every second; a loaded machine is slower).
MAIL_DEADLINE_SECONDS = 60

# The seed catalogue. Only these products are in "kitchen" (the filter test counts on it);
# tests that need stock of their own create products in other categories.
SEED_PRODUCTS: list[dict[str, Any]] = [
    {
        "name": "Enamel Camping Mug",
        "description": "A sturdy enamel mug for coffee by the campfire.",
        "price": 19.99,
        "category": "kitchen",
        "stock": 25,
    },
    {
        "name": "Cast Iron Skillet",
        "description": "Pre-seasoned, 26 cm, for hob, oven and fire.",
        "price": 44.50,
        "category": "kitchen",
        "stock": 8,
    },
    {
        "name": "Chef's Knife",
        "description": "A 20 cm carbon steel blade with a walnut handle.",
        "price": 79.00,
        "category": "kitchen",
        "stock": 3,
    },
    {
        "name": "Copper Kettle",
        "description": "Whistles when the water boils.",
        "price": 34.99,
        "category": "kitchen",
        "stock": 0,
    },
    {
        "name": "Tea Towel Set",
        "description": "Three linen towels in stripes.",
        "price": 9.50,
        "category": "kitchen",
        "stock": 30,
    },
    {
        "name": "Watering Can",
        "description": "Galvanised steel, 5 litres, with a brass rose.",
        "price": 24.99,
        "category": "garden",
        "stock": 12,
    },
    {
        "name": "Pruning Shears",
        "description": "Bypass shears for stems up to 2 cm.",
        "price": 19.99,
        "category": "garden",
        "stock": 4,
    },
    {
        "name": "Seed Starter Kit",
        "description": "Trays, pots and compost for forty seedlings.",
        "price": 12.75,
        "category": "garden",
        "stock": 40,
    },
    {
        "name": "The Patient Gardener",
        "description": "A year of small jobs in a small garden, in 240 pages.",
        "price": 29.95,
        "category": "books",
        "stock": 15,
    },
    {
        "name": "Pocket Notebook",
        "description": "Dotted pages, 9 x 14 cm, lies flat.",
        "price": 4.99,
        "category": "books",
        "stock": 100,
        "imageUrl": MISSING_IMAGE,
    },
    {
        "name": "Desk Lamp",
        "description": "An adjustable arm and a warm LED.",
        "price": 39.99,
        "category": "home",
        "stock": 6,
    },
    {
        "name": "Wool Throw Blanket",
        "description": "130 x 170 cm of undyed wool.",
        "price": 59.00,
        "category": "home",
        "stock": 9,
    },
    {
        "name": "Insulated Travel Mug",
        "description": "Keeps tea hot for six hours.",
        "price": 27.50,
        "category": "outdoors",
        "stock": 14,
    },
    {
        "name": SCRIPT_NAME,
        "description": "A name that is markup: every page must show it as plain text.",
        "price": 9.99,
        "category": "curiosities",
        "stock": 5,
    },
]


@dataclass(frozen=True)
class Customer:
    id: int
    email: str
    first_name: str
    token: str
    password: str = PASSWORD


@dataclass(frozen=True)
class Shop:
    """The shop `shopctl up` started, reached over HTTP as any client would."""

    url: str
    data_dir: Path
    admin_password: str
    admin_token: str
    products: dict[str, dict[str, Any]]  # the seed catalogue by name, as created

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        expected_status: int = 200,
    ) -> dict[str, Any]:
        """The whole JSON envelope of an API call through the gateway, status checked."""
        status, reply = http(method, self.url + path, body, token)
        assert status == expected_status, f"{method} {path}: {status} {reply}"
        return reply

    def create_product(self, **fields: Any) -> dict[str, Any]:
        body = {"description": "Made for a browser test.", "category": "test", **fields}
        return self.api("POST", "/api/products", body, token=self.admin_token, expected_status=201)[
            "data"
        ]

    def stock(self, product_id: str) -> int:
        return self.api("GET", f"/api/products/{product_id}")["data"]["stock"]

    def register_customer(self, first_name: str = "Ann", last_name: str = "Shopper") -> Customer:
        email = f"{first_name.lower()}.{uuid.uuid4().hex[:10]}@example.com"
        body = {
            "email": email,
            "password": PASSWORD,
            "first_name": first_name,
            "last_name": last_name,
        }
        data = self.api("POST", "/api/users/register", body, expected_status=201)["data"]
        return Customer(data["user"]["id"], email, first_name, data["token"])

    def add_to_cart(self, customer: Customer, product_id: str, quantity: int) -> None:
        body = {"product_id": product_id, "quantity": quantity}
        self.api("POST", f"/api/cart/{customer.id}/items", body, token=customer.token)

    def cart(self, customer: Customer) -> dict[str, Any]:
        return self.api("GET", f"/api/cart/{customer.id}", token=customer.token)["data"]

    def log_in(self, email: str, password: str = PASSWORD) -> Customer:
        """A customer made through the pages, logged in through the API for its token."""
        body = {"email": email, "password": password}
        data = self.api("POST", "/api/users/login", body)["data"]
        return Customer(data["user"]["id"], email, data["user"]["first_name"], data["token"])

    def save_address(self, customer: Customer, **fields: str) -> dict[str, Any]:
        """An address kept in the customer's address book (ADDRESS, ``fields`` instead)."""
        body = {**ADDRESS, **fields}
        path = "/api/users/addresses"
        return self.api("POST", path, body, token=customer.token, expected_status=201)["data"]

    def addresses(self, customer: Customer) -> list[dict[str, Any]]:
        path = "/api/users/addresses"
        return self.api("GET", path, token=customer.token)["data"]["addresses"]

    def place_order(
        self,
        customer: Customer,
        items: list[tuple[str, int]],
        *,
        delivery: str | None = None,
    ) -> dict[str, Any]:
        """An order through the API; with ``delivery``, sent to ADDRESS and paid with the
        accepted test card, as the checkout page sends it."""
        body: dict[str, Any] = {
            "items": [{"product_id": pid, "quantity": quantity} for pid, quantity in items]
        }
        if delivery is not None:
            card = {
                "number": ACCEPTED_CARD.replace(" ", ""),
                "exp_month": int(EXPIRY_MONTH),
                "exp_year": int(EXPIRY_YEAR),
                "cvc": "123",
            }
            body |= {"address": ADDRESS, "delivery": delivery, "payment": {"card": card}}
        reply = self.api("POST", "/api/orders", body, token=customer.token, expected_status=201)
        return reply["data"]

    def orders_of(self, customer: Customer) -> list[dict[str, Any]]:
        path = f"/api/orders/user/{customer.id}?limit=100"
        return self.api("GET", path, token=customer.token)["data"]

    def order(self, order_id: int | str) -> dict[str, Any]:
        return self.api("GET", f"/api/orders/{order_id}", token=self.admin_token)["data"]

    def mail_to(self, email: str) -> list[dict[str, Any]]:
        """The e-mails the shop's SMTP sink kept for ``email``, as `shopctl mail` lists
        them (id, to, subject, file)."""
        listed = shopctl(
            "mail", "-n", "0", "-o", "json", "--to", email, "--data-dir", self.data_dir
        )
        assert listed.returncode == 0, listed.stdout + listed.stderr
        return [mail for mail in json.loads(listed.stdout) if mail["to"] == email]

    def wait_for_mail(self, email: str) -> list[dict[str, Any]]:
        """The e-mails kept for ``email``, once there is at least one (the order service
        sends from its outbox a moment after the commit)."""
        found: list[dict[str, Any]] = []

        def arrived() -> bool:
            found[:] = self.mail_to(email)
            return bool(found)

        what = f"an e-mail to {email} in {self.data_dir / 'mail'}"
        eventually_sync(arrived, what, MAIL_DEADLINE_SECONDS, interval=0.5)
        return found


# -- pages -----------------------------------------------------------------------------------


def flash(page: Page) -> Locator:
    """The flash messages' live region."""
    return page.get_by_role("status")


def heading(page: Page) -> Locator:
    return page.get_by_role("heading", level=1)


def cart_link(page: Page, count: int | None = None) -> Locator:
    """The header's Cart link, named with how many items the cart holds ("Cart (2 items in
    your cart)"); ``count`` None: whatever it holds."""
    if count is None:
        return page.get_by_role("link", name=re.compile(r"^Cart \(\d+ items? in your cart\)$"))
    items = "item" if count == 1 else "items"
    return page.get_by_role("link", name=f"Cart ({count} {items} in your cart)", exact=True)


def card_names(page: Page) -> Locator:
    """The names on the catalogue's product cards, in page order."""
    return page.get_by_role("article").get_by_role("heading", level=2)


def log_in(page: Page, email: str, password: str) -> None:
    """Log in through the login form, as a person would."""
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(flash(page)).to_contain_text("Welcome back")


def accept_next_dialog(page: Page) -> list[str]:
    """Say OK to the next confirm() the page asks; the list gets its question."""
    questions: list[str] = []

    def accept(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    return questions


CONFIRMATION_URL = re.compile(r"/orders/(\d+)/confirmation$")


def confirmed_order_id(page: Page) -> int:
    """The order id of the confirmation page the browser is on."""
    expect(page).to_have_url(CONFIRMATION_URL)
    expect(heading(page)).to_have_text("Thank you for your order!")
    match = CONFIRMATION_URL.search(page.url)
    assert match is not None, page.url
    return int(match.group(1))


def checkout_form_fields(page: Page) -> dict[str, str]:
    """What the checkout page's form sends as it is filled in now (the hidden CSRF token
    and idempotency key included), as the browser would encode it."""
    return page.locator("form[action='/checkout']").evaluate(
        "form => Object.fromEntries(new FormData(form))"
    )


def open_checkout(page: Page) -> None:
    """From the cart page, on to the checkout page by its link."""
    page.get_by_role("link", name="Check out", exact=True).click()
    expect(heading(page)).to_have_text("Checkout")


def address_group(page: Page) -> Locator:
    return page.get_by_role("group", name="Where it goes")


def fill_new_address(page: Page, address: dict[str, str] = ADDRESS, *, keep: bool = True) -> None:
    """Choose a new address ("A new address", or "This address" with none saved), type it
    in, and say whether to keep it in the address book."""
    group = address_group(page)
    group.get_by_role("radio", name=re.compile(r"^(A new address|This address)$")).check()
    group.get_by_label("Full name").fill(address["recipient"])
    group.get_by_label("Street and number").fill(address["line1"])
    group.get_by_label("Town or city").fill(address["city"])
    group.get_by_label("Postcode").fill(address.get("postal_code", ""))
    group.get_by_label("Country").select_option(label=COUNTRY_NAMES[address["country"]])
    group.get_by_label("Keep it in my addresses").set_checked(keep)


def choose_delivery(page: Page, option: str) -> None:
    """``option``: the start of its label, "Standard" or "Express"."""
    group = page.get_by_role("group", name="How it is delivered")
    group.get_by_role("radio", name=re.compile(rf"^{option} delivery")).check()


def fill_card(page: Page, number: str = ACCEPTED_CARD, cvc: str = "123") -> None:
    group = page.get_by_role("group", name="How you pay")
    group.get_by_label("Card number").fill(number)
    group.get_by_label("Expiry month").select_option(EXPIRY_MONTH)
    group.get_by_label("Expiry year").select_option(EXPIRY_YEAR)
    group.get_by_label("Security code").fill(cvc)


def check_out(page: Page, *, new_address: bool = False, delivery: str = "Standard") -> None:
    """From the cart page: open the checkout, fill it in (the saved address it offers first,
    or a new one kept in the book), pay with the accepted card and place the order."""
    open_checkout(page)
    if new_address:
        fill_new_address(page)
    choose_delivery(page, delivery)
    fill_card(page)
    page.get_by_role("button", name="Place order").click()


def axe_problems(page: Page, report: Path) -> list[str]:
    """axe-core's serious and critical violations, each with its rule, help and nodes; every
    violation (minor ones too) goes to a JSON report beside the screenshots."""
    violations = page.evaluate(RUN_AXE)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(violations, indent=2))
    problems = []
    for violation in violations:
        if violation["impact"] not in FAILING_IMPACTS:
            continue
        problems.append(
            f"axe {violation['impact']}: {violation['id']}: {violation['help']} "
            f"({violation['helpUrl']})"
        )
        for node in violation["nodes"]:
            problems.append(f"    {node['target']}: {node['html'][:160]}")
            problems.append("      " + node["summary"].replace("\n", "\n      "))
    return problems


def audit_in_place(page: Page, axe_script: Path, name: str) -> list[str]:
    """The page as the shopper has it now (also the answer to a POST, which a second visit
    could not show): a full-page screenshot, no sideways scrolling, and axe-core's serious
    and critical problems. axe is evaluated through the DevTools protocol, which the page's
    Content-Security-Policy does not govern, so the page keeps its policy in force."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)
    problems = []
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    if widths[0] > widths[1]:
        problems.append(f"scrolls sideways: {widths[0]} px wide in {widths[1]} px")
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(axe_script.read_text())
    problems += axe_problems(page, AXE_REPORTS / f"{name}.json")
    return [f"{name}: {problem}" for problem in problems]
