"""The API's documentation in the browser: Swagger UI at /api/docs shows every operation of
the shop's one merged document, "Try it out" calls this same shop (anonymously, and with a
token given to Authorize), and the page's CSP is never broken: no request leaves the shop,
nothing is refused, nothing is logged as an error."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from browser_support import SCREENSHOTS, NewContext, Shop
from playwright.sync_api import ConsoleMessage, Locator, Page, expect
from support import http

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Runs before any of the page's scripts: a CSP refusal shows up as this event as well as in
# the console (an init script is Playwright's, so the page's CSP does not apply to it).
RECORD_CSP_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  const where = `${event.sourceFile}:${event.lineNumber}`;
  window.cspViolations.push(`${event.effectiveDirective} refused ${event.blockedURI} (${where})`);
});
"""


@dataclass
class DocsPage:
    page: Page
    problems: list[str] = field(default_factory=list)  # keeps filling while the page is used

    def operation(self, method: str, path: str) -> Locator:
        """An operation's block, e.g. GET /api/products (Swagger UI's own markup)."""
        return self.page.locator(
            f'.opblock-{method.lower()}:has(.opblock-summary-path[data-path="{path}"])'
        )

    def run(self, method: str, path: str, **parameters: str) -> Locator:
        """Open an operation, "Try it out" with these parameters, Execute: its answer."""
        block = self.operation(method, path)
        block.locator(".opblock-summary-control").click()
        block.get_by_role("button", name="Try it out").click()
        for name, value in parameters.items():
            block.locator(f'tr[data-param-name="{name}"] input').fill(value)
        block.get_by_role("button", name="Execute").click()
        return block.locator(".live-responses-table tbody")

    def all_problems(self) -> list[str]:
        return self.problems + self.page.evaluate("window.cspViolations")


@pytest.fixture
def docs(new_context: NewContext, shop: Shop, request: pytest.FixtureRequest) -> Iterator[DocsPage]:
    """/api/docs in a fresh browser, with every console error, uncaught exception, CSP
    refusal and request to another origin recorded; a screenshot of it afterwards."""
    context = new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(RECORD_CSP_VIOLATIONS)
    page = context.new_page()
    docs = DocsPage(page)

    def console_error(message: ConsoleMessage) -> None:
        if message.type == "error":
            docs.problems.append(f"console: {message.text}")

    page.on("console", console_error)
    page.on("pageerror", lambda error: docs.problems.append(f"uncaught: {error}"))
    page.on(
        "request",
        lambda request: (
            None
            if request.url.startswith(shop.url + "/")
            else docs.problems.append(f"request elsewhere: {request.url}")
        ),
    )
    response = page.goto("/api/docs")
    assert response is not None and response.status == 200
    expect(page.locator(".info .title")).to_contain_text("Corner Shop API")
    yield docs
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    name = request.node.originalname.removeprefix("test_")
    page.screenshot(path=SCREENSHOTS / f"api-docs-{name}.png")


def test_swagger_ui_shows_every_operation_of_the_shop(docs: DocsPage, shop: Shop) -> None:
    status, document = http("GET", f"{shop.url}/api/docs/openapi.json")
    assert status == 200
    page = docs.page
    for tag in ("products", "users", "cart", "orders", "gateway"):
        expect(page.locator(f'.opblock-tag[data-tag="{tag}"]')).to_be_visible()
    operations = [(method, path) for path, item in document["paths"].items() for method in item]
    assert len(operations) > 20
    expect(page.locator(".opblock")).to_have_count(len(operations))
    for method, path in operations:
        expect(docs.operation(method, path)).to_have_count(1)
    expect(docs.operation("GET", "/api/products")).to_contain_text("List products")
    # Routes that need a login show Authorize's lock; the Authorize button is there.
    expect(
        docs.operation("GET", "/api/users/profile").locator(".authorization__btn")
    ).to_be_visible()
    expect(page.locator(".auth-wrapper").get_by_role("button", name="Authorize")).to_be_visible()
    # Nothing from the backends that is not public.
    for hidden in ("/internal/", "/health", "/metrics", "{tail}"):
        assert hidden not in page.content(), hidden
    assert docs.all_problems() == []


def test_try_it_out_calls_this_shop(docs: DocsPage, shop: Shop) -> None:
    answer = docs.run("GET", "/api/products", category="garden")
    expect(answer.locator(".response-col_status")).to_have_text("200")
    expect(answer).to_contain_text("Watering Can")
    expect(answer).not_to_contain_text("Enamel Camping Mug")  # kitchen, not garden
    request_url = docs.operation("GET", "/api/products").locator(".request-url pre")
    # Swagger UI sends the parameters' defaults too (page, limit, sort...).
    expect(request_url).to_have_text(re.compile(rf"^{re.escape(shop.url)}/api/products\?"))
    expect(request_url).to_contain_text("category=garden")
    assert docs.all_problems() == []


def test_a_token_given_to_authorize_is_sent(docs: DocsPage, shop: Shop) -> None:
    customer = shop.register_customer("Ada")
    page = docs.page
    anonymous = docs.run("GET", "/api/users/profile")
    expect(anonymous.locator(".response-col_status")).to_have_text("401")

    page.locator(".auth-wrapper").get_by_role("button", name="Authorize").click()
    dialog = page.locator(".dialog-ux")
    dialog.get_by_label("auth-bearer-value").fill(customer.token)
    dialog.get_by_role("button", name="Apply credentials").click()
    dialog.get_by_role("button", name="Close").click()

    profile = docs.operation("GET", "/api/users/profile")
    profile.get_by_role("button", name="Execute").click()
    expect(profile.locator(".live-responses-table tbody .response-col_status")).to_have_text("200")
    body = profile.locator(".live-responses-table tbody .response-col_description pre").first
    expect(body).to_contain_text(customer.email)
    assert json.loads(body.inner_text())["data"]["email"] == customer.email
    # The browser logs the first, anonymous answer (a 401) as an error: that one was meant.
    unauthorized = "the server responded with a status of 401 (Unauthorized)"
    assert docs.all_problems() == [f"console: Failed to load resource: {unauthorized}"]
