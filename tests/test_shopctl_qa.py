"""`shopctl seed` and `shopctl checkout` against a real shop started by the tests with
`shopctl up` (embedded servers, free ports), driven as a user would (`python -m shopctl`);
every claim the commands make is checked again through the shop's own API."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from support import REPO, QaShop, eventually_sync, http, running_shop, shop_admin_token, shopctl

from shopctl import processes
from shopctl.seeding import load_demo_data
from shopctl.state import load_state

pytestmark = pytest.mark.slow

DEMO = load_demo_data()


def start_shop(tmp_path: Path) -> Iterator[QaShop]:
    data_dir = tmp_path / "shop"
    with running_shop(data_dir) as (url, env):
        yield QaShop(url, data_dir, env, shop_admin_token(url, data_dir))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QaShop]:
    """One shop for this module's seed and checkout runs."""
    yield from start_shop(tmp_path_factory.mktemp("qa"))


def counts(output: str, kind: str) -> list[int]:
    """The numbers in the summary table's row for `kind` (created, updated, unchanged,
    deleted, failed)."""
    row = next(line for line in output.splitlines() if re.search(rf"│ {kind}\s+│", line))
    return [int(number) for number in re.findall(r"\b\d+\b", row)]


def test_seed_completes_a_shop_that_has_some_of_the_products(shop: QaShop) -> None:
    shop.delete_all_products()
    kept, changed = DEMO.products[0], DEMO.products[1]
    for product, price in ((kept, kept.price), (changed, changed.price + 1)):
        body = {**product.body(), "price": float(price)}
        code, reply = http("POST", f"{shop.url}/api/products", body, shop.token)
        assert code == 201, reply

    seeded = shop.run("seed")

    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    total = len(DEMO.products)
    assert counts(seeded.stdout, "products") == [total - 2, 1, 1, 0, 0]
    products = shop.by_name()
    assert len(products) == total
    # Put back as shipped (json reads 19.50 as the float 19.5: compare as decimals).
    assert Decimal(str(products[changed.name]["price"])) == changed.price
    for demo in DEMO.products:
        product = products[demo.name]
        assert (product["stock"], product["category"]) == (demo.stock, demo.category)
    assert len(DEMO.categories) >= 8


def test_a_second_seed_changes_nothing_and_says_so(shop: QaShop) -> None:
    first = shop.run("seed")
    assert first.returncode == 0, first.stdout + first.stderr
    before = shop.by_name()

    again = shop.run("seed")

    assert again.returncode == 0, again.stdout + again.stderr
    assert counts(again.stdout, "products") == [0, 0, len(DEMO.products), 0, 0]
    assert counts(again.stdout, "customers") == [0, 0, len(DEMO.customers), 0, 0]
    assert "Nothing changed" in again.stdout
    assert shop.by_name() == before
    # The demo customers can log in with the demo password.
    login = {"email": DEMO.customers[0].email, "password": "shop-demo-password"}
    code, reply = http("POST", f"{shop.url}/api/users/login", login)
    assert code == 200, reply


def test_dry_run_tells_what_would_change_and_changes_nothing(shop: QaShop) -> None:
    assert shop.run("seed").returncode == 0
    product = shop.by_name()[DEMO.products[2].name]
    path = f"{shop.url}/api/products/{product['id']}"
    code, reply = http("PUT", path, {"stock": product["stock"] + 7}, shop.token)
    assert code == 200, reply

    dry = shop.run("seed", "--dry-run")

    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "dry run" in dry.stdout and "to update" in dry.stdout
    assert counts(dry.stdout, "products") == [0, 1, len(DEMO.products) - 1, 0, 0]
    assert shop.by_name()[product["name"]]["stock"] == product["stock"] + 7

    real = shop.run("seed", "--no-customers")
    assert counts(real.stdout, "products") == [0, 1, len(DEMO.products) - 1, 0, 0]
    assert shop.by_name()[product["name"]]["stock"] == product["stock"]


def test_reset_asks_first_and_then_reloads_everything(shop: QaShop) -> None:
    assert shop.run("seed").returncode == 0
    before = {product["id"] for product in shop.products()}

    refused = shop.run("seed", "--reset")  # no terminal to ask at: refused, not guessed

    assert refused.returncode == 1
    assert f"--reset deletes all {len(before)} products" in refused.stderr
    assert "--yes" in refused.stderr
    assert {product["id"] for product in shop.products()} == before

    reset = shop.run("seed", "--reset", "--yes", "--no-customers")

    assert reset.returncode == 0, reset.stdout + reset.stderr
    total = len(DEMO.products)
    assert counts(reset.stdout, "products") == [total, 0, 0, total, 0]
    after = {product["id"] for product in shop.products()}
    assert len(after) == total and not after & before


def test_a_checkout_run_with_every_scenario_passes_and_adds_up(
    shop: QaShop, tmp_path: Path
) -> None:
    assert shop.run("seed", "--no-customers").returncode == 0
    stock_before = {p["id"]: p["stock"] for p in shop.products()}
    orders_before = {order["id"] for order in shop.orders()}
    report = tmp_path / "report.json"

    run = shop.run(
        "checkout",
        "--users", "16", "--concurrency", "6", "--seed", "11",
        "-s", "happy", "-s", "short-stock", "-s", "cancel", "-s", "idempotent-retry",
        "--json", report,
    )  # fmt: skip

    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASSED" in run.stdout
    result = json.loads(report.read_text())
    assert result["passed"] and result["failure_count"] == 0
    assert result["sessions"] == 16
    steps = {step["step"]: step for step in result["steps"]}
    for name in ("register", "browse", "search", "add to cart", "checkout", "cancel"):
        assert steps[name]["count"] > 0 and steps[name]["failures"] == 0
        assert steps[name]["p50_ms"] <= steps[name]["p95_ms"] <= steps[name]["p99_ms"]
    assert steps["retry checkout"]["count"] == 4
    # 4 shoppers want one unit of a product with 2: exactly 2 sold, 2 refused.
    assert result["orders"]["sold_out_answers"] == 2
    assert result["conservation"]["ok"]

    # What it verified of every order: totals, payments, one e-mail per event.
    verified = result["verified"]
    placed, cancelled_count = result["orders"]["placed"], result["orders"]["cancelled"]
    assert verified["totals_checked"] == placed
    assert verified["payments"] == {"authorised": placed - 4, "voided": 4}
    emails = verified["emails"]
    assert emails["checked"] and emails["expected"] == placed + cancelled_count
    assert emails["found_once"] == emails["expected"] and emails["duplicates"] == 0
    assert "E-mails: " in run.stdout and "arrived exactly once" in run.stdout

    # Check it again through the shop: the new orders account for every unit of stock gone.
    new_orders = shop.assert_stock_went_only_to_orders(stock_before, orders_before)
    assert len(new_orders) == placed
    cancelled = [o for o in new_orders if o["status"] == "cancelled"]
    assert len(cancelled) == cancelled_count == 4
    for order in new_orders:
        status = "voided" if order["status"] == "cancelled" else "authorised"
        assert order["payment"]["status"] == status, order
        total = Decimal(str(order["subtotal_amount"])) + Decimal(str(order["delivery"]["price"]))
        assert Decimal(str(order["total_amount"])) == total
    references = [order["payment"]["reference"] for order in new_orders]
    assert len(set(references)) == len(references)
    # And through `shopctl mail`: one e-mail per event of those orders.
    events = Counter(
        re.match(r"<order-(\d+)\.(\w+)\.", mail["message_id"]).groups() for mail in shop.mail()
    )
    for order in new_orders:
        assert events[(str(order["id"]), "placed")] == 1, order["id"]
        cancelled_mails = events[(str(order["id"]), "cancelled")]
        assert cancelled_mails == (order["status"] == "cancelled"), order["id"]


def test_the_same_seed_logs_the_shoppers_in_again_and_url_targets_any_shop(
    shop: QaShop, tmp_path: Path
) -> None:
    assert shop.run("seed", "--no-customers").returncode == 0
    args = ("checkout", "--users", "3", "--concurrency", "3", "--seed", "23", "--json", "-")
    first = shop.run(*args)
    assert first.returncode == 0, first.stdout + first.stderr

    # From anywhere, by URL (no data dir of that shop), with the admin's password given.
    env = {**shop.env, "SHOP_DATA_DIR": str(tmp_path / "elsewhere")}
    password = (shop.data_dir / "admin_password").read_text().strip()
    env["SHOP_ADMIN_PASSWORD"] = password
    again = shopctl(*args, "--url", shop.url, "-s", "happy", "-s", "short-stock", env=env)

    assert again.returncode == 0, again.stdout + again.stderr
    result = json.loads(again.stdout)  # with --json -, stdout is only the JSON
    assert result["url"] == shop.url and result["passed"]
    steps = {step["step"]: step["count"] for step in result["steps"]}
    assert steps["register"] == 3 and steps["login"] == 3  # taken: logged in instead
    assert "Steps" in again.stderr
    # That shop's e-mails are out of reach from here: not checked, and the report says why.
    emails = result["verified"]["emails"]
    assert not emails["checked"] and "out of reach" in emails["skipped_because"]
    assert "E-mails not checked: " in again.stderr


def test_declined_cards_place_no_order_keep_the_cart_and_the_report_counts_each(
    shop: QaShop, tmp_path: Path
) -> None:
    assert shop.run("seed", "--no-customers").returncode == 0
    stock_before = {p["id"]: p["stock"] for p in shop.products()}
    orders_before = {order["id"] for order in shop.orders()}
    report = tmp_path / "declined.json"

    run = shop.run(
        "checkout", "-s", "declined-card", "--users", "6", "--concurrency", "3",
        "--seed", "41", "--json", report,
    )  # fmt: skip

    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(report.read_text())
    verified = result["verified"]
    # Six shoppers: each refusing test card once, each refusal as the card says.
    assert verified["payment_refusals"] == {
        "card_declined": 1,
        "insufficient_funds": 1,
        "expired_card": 1,
        "incorrect_number": 1,
        "provider_error": 1,
        "provider_timeout": 1,
    }
    steps = {step["step"]: step for step in result["steps"]}
    assert steps["refused checkout"]["count"] == 6 and steps["cart kept"]["count"] == 6
    assert "Cards refused as the test cards say" in run.stdout
    # Then each paid with the other card: six orders, nothing from the refused attempts.
    assert result["orders"]["placed"] == 6 and verified["payments"]["authorised"] == 6
    new_orders = shop.assert_stock_went_only_to_orders(stock_before, orders_before)
    assert len(new_orders) == 6
    assert {(o["payment"]["brand"], o["payment"]["last4"]) for o in new_orders} == {
        ("mastercard", "4444")
    }
    assert verified["emails"]["found_once"] == 6


def test_saved_address_express_and_guest_merge_journeys_pass_and_say_what_they_checked(
    shop: QaShop, tmp_path: Path
) -> None:
    assert shop.run("seed", "--no-customers").returncode == 0
    orders_before = {order["id"] for order in shop.orders()}
    args = (
        "checkout", "-s", "saved-address", "-s", "express", "-s", "guest-merge",
        "--users", "6", "--concurrency", "3", "--seed", "43",
    )  # fmt: skip
    report = tmp_path / "journeys.json"

    run = shop.run(*args, "--json", report)

    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(report.read_text())
    verified = result["verified"]
    assert verified["saved_addresses"] == 2 and verified["guest_carts_merged"] == 2
    assert verified["delivery"] == {"express": 2, "standard": 4}
    steps = {step["step"]: step["count"] for step in result["steps"]}
    # Guests registered on the page (a GET and a POST each), then logged in by the API
    # for their token; the others registered by the API.
    assert steps["guest: register"] == 4 and steps["login"] == 2 and steps["register"] == 4
    assert "2 guest carts merged at login" in run.stdout

    # Through the shop: what each shopper's orders hold.
    new_orders = [o for o in shop.orders() if o["id"] not in orders_before]
    assert len(new_orders) == 6
    by_shopper = {int(o["customer"]["email"].split("-")[2].split("@")[0]): o for o in new_orders}
    for number, order in by_shopper.items():
        scenario = ("saved-address", "express", "guest-merge")[(number - 1) % 3]
        delivery = order["delivery"]
        if scenario == "express":
            assert delivery["option"] == "express" and Decimal(str(delivery["price"])) > 0
        else:
            assert delivery["option"] == "standard"
        if scenario == "saved-address":
            assert order["address"]["recipient"] == f"QA Shopper {number}"
            token = shop.login(order["customer"]["email"], "qa-shopper-43")
            code, book = http("GET", f"{shop.url}/api/users/addresses", None, token)
            assert code == 200 and len(book["data"]["addresses"]) == 1, book

    # Again with the same seed: the accounts exist, so the guests log in on the page
    # (their register form refused), their guest carts merged all the same.
    again = shop.run(*args, "--json", "-")

    assert again.returncode == 0, again.stdout + again.stderr
    result = json.loads(again.stdout)
    assert result["verified"]["guest_carts_merged"] == 2
    assert result["verified"]["saved_addresses"] == 2
    steps = {step["step"]: step["count"] for step in result["steps"]}
    assert steps["guest: log in"] == 4


def test_a_run_that_cannot_be_served_says_so_before_starting(shop: QaShop) -> None:
    assert shop.run("seed", "--no-customers").returncode == 0
    greedy = shop.run("checkout", "--users", "2000", "--concurrency", "1", "--seed", "1")
    assert greedy.returncode == 1
    # Named as it was run: `python -m shopctl` here.
    assert "-m shopctl seed` or use fewer --users" in greedy.stderr
    assert "Traceback" not in greedy.stderr


def test_a_long_run_never_sells_out_under_its_own_shoppers(shop: QaShop, tmp_path: Path) -> None:
    """A --duration run on a catalogue it buys out in a few sessions (one product of 10,
    the fewest a run shops from; about 7 orders of 1-2 units): its sessions claim what they
    put in their carts, so no add to cart meets a product the run itself sold out; once
    nothing is left to claim, sessions only browse, and the report says so."""
    shop.delete_all_products()
    body = {"name": "Last few", "price": 4.5, "category": "Test", "stock": 10}
    code, reply = http("POST", f"{shop.url}/api/products", body, shop.token)
    assert code == 201, reply
    report = tmp_path / "report.json"
    try:
        run = shop.run(
            "checkout", "--users", "4", "--concurrency", "4", "--duration", "10s",
            "--seed", "31", "-s", "happy", "-s", "cancel", "--json", report,
        )  # fmt: skip

        assert run.returncode == 0, run.stdout + run.stderr
        result = json.loads(report.read_text())
        assert result["passed"] and result["failure_count"] == 0
        assert result["sessions_browse_only"] > 0
        assert f"{result['sessions_browse_only']} session" in run.stdout
        assert "only browsed" in run.stdout
        sold = sum(product["sold"] for product in result["conservation"]["products"])
        left = sum(product["left"] for product in result["conservation"]["products"])
        assert result["conservation"]["ok"] and sold + left == 10 and sold > 0
    finally:
        shop.delete_all_products()
        assert shop.run("seed", "--no-customers").returncode == 0


def test_output_fits_80_columns_and_has_no_colour_without_a_terminal(shop: QaShop) -> None:
    narrow = {"COLUMNS": "80"}
    for args in (("seed", "--dry-run"), ("checkout", "--users", "2", "--seed", "3")):
        result = shop.run(*args, **narrow)
        assert result.returncode == 0, result.stdout + result.stderr
        for line in (result.stdout + result.stderr).splitlines():
            assert len(line) <= 80, line
        assert "\x1b[" not in result.stdout + result.stderr
    forced = shop.run("seed", "--dry-run", FORCE_COLOR="1", **narrow)
    assert re.search(r"\x1b\[[0-9;]*3\dm", forced.stdout)
    plain = shop.run("seed", "--dry-run", FORCE_COLOR="1", NO_COLOR="1", **narrow)
    assert not re.search(r"\x1b\[[0-9;]*3\dm", plain.stdout)


@pytest.fixture
def broken_shop(tmp_path: Path) -> Iterator[QaShop]:
    """A shop of its own, seeded, for a test that stops one of its services."""
    for shop in start_shop(tmp_path):
        assert shop.run("seed", "--no-customers").returncode == 0
        yield shop


def stop_service(shop: QaShop, name: str) -> None:
    state = load_state(shop.data_dir)
    assert state is not None
    service = next(service for service in state.services if service.name == name)
    processes.stop(service.process, timeout=10)


def test_a_broken_shop_fails_the_run_with_a_clear_report(broken_shop: QaShop) -> None:
    shop = broken_shop
    orders_before = len(shop.orders())
    command = [sys.executable, "-m", "shopctl", "checkout", "--data-dir", str(shop.data_dir)]
    command += ["--users", "4", "--concurrency", "2", "--duration", "2m", "--seed", "5"]
    command += ["--max-failures", "3"]
    # The product service stops in the middle of a run.
    running = subprocess.Popen(
        command, env=shop.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        eventually_sync(lambda: len(shop.orders()) > orders_before, "an order placed", 60)
        stop_service(shop, "product")
        stdout, stderr = running.communicate(timeout=120)
    finally:
        running.kill()
    assert running.returncode == 1, stdout + stderr
    assert "FAILED" in stderr
    failures = [line for line in stderr.splitlines() if line.startswith("✗")]
    assert failures, stderr
    assert any("503 upstream_unavailable" in line for line in failures), failures
    assert all(re.search(r"\[request qa-[0-9a-f]{8}-\d{6}\]", line) for line in failures)

    # And a run against the shop as it is now refuses to start, naming what is down.
    refused = shop.run("checkout", "--users", "2")
    assert refused.returncode == 1
    assert "is not ready: product not ready; no shopper was started" in refused.stderr
