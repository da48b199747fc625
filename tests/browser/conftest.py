"""Browser tests: the whole shop started with `shopctl up` as a user would, driven through
its pages in Debian's Chromium with pytest-playwright (never a downloaded browser).

Without Chromium (a laptop) every test here is skipped with one reason; CI has it. These
tests are plain functions, which pytest-asyncio leaves alone; Playwright's own loop is
kept from the async tests as explained at the `playwright` fixture."""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from browser_support import SEED_PRODUCTS, Shop
from playwright.sync_api import Browser, BrowserType, Playwright, expect, sync_playwright
from support import http, running_shop, shop_admin_token

HERE = Path(__file__).resolve().parent
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Pages wait on several services (and nx-27017 is a Python process): a little more room
# than Playwright's 5 s default before an expectation fails.
expect.set_options(timeout=10_000)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(
        reason=f"no Chromium at {CHROMIUM}: `apt-get install chromium` (or set CHROMIUM)"
    )
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Debian's Chromium, with the flags that keep it from reaching for the network."""
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}


# Playwright's sync API runs its asyncio loop in a greenlet of the main thread and, between
# calls, leaves that loop marked as the thread's running loop (by design: see
# wait_for_future in playwright/_impl/_greenlets.py). While it is started, pytest-asyncio
# cannot run a test ("Runner.run() cannot be called from a running event loop"). So the
# Playwright fixtures that pytest-playwright keeps for the whole session live for one
# module here, and the async tests that run after these modules find no loop running.


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    """Playwright for this module only (see above)."""
    with sync_playwright() as started:
        yield started


@pytest.fixture(scope="module")
def browser_type(playwright: Playwright, browser_name: str) -> BrowserType:
    """The browser kind pytest-playwright's --browser names, from this module's Playwright."""
    return getattr(playwright, browser_name)


@pytest.fixture(scope="module")
def browser(
    browser_type: BrowserType, browser_type_launch_args: dict[str, Any]
) -> Iterator[Browser]:
    """The launched browser, for this module (see playwright)."""
    browser = browser_type.launch(**browser_type_launch_args)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def browser_context_args(base_url: str) -> dict[str, Any]:
    """What every page's browser context gets: the gateway as the base of relative URLs."""
    return {"base_url": base_url}


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """The whole shop on free ports and a fresh data dir, seeded; stopped whatever happens."""
    data_dir = tmp_path_factory.mktemp("browser") / "shop"
    with running_shop(data_dir) as (url, _):
        token = shop_admin_token(url, data_dir)
        products = {}
        for body in SEED_PRODUCTS:
            status, reply = http("POST", f"{url}/api/products", body, token)
            assert status == 201, reply
            products[body["name"]] = reply["data"]
        yield Shop(
            url=url,
            data_dir=data_dir,
            admin_password=(data_dir / "admin_password").read_text().strip(),
            admin_token=token,
            products=products,
        )


@pytest.fixture(scope="session")
def base_url(shop: Shop) -> str:
    """The gateway: pages are opened by their path (`page.goto("/cart")`)."""
    return shop.url


@pytest.fixture(scope="session")
def axe_script() -> Path:
    """axe-core's browser bundle, as the axe-playwright-python wheel (a dev dependency)
    ships it: no npm, no download when the tests run."""
    script = Path(str(files("axe_playwright_python").joinpath("axe.min.js")))
    assert script.is_file(), f"{script} is missing: pip install -e '.[dev]' installs it"
    return script
