"""`shopctl checkout --chaos` against a real shop from `shopctl up` (its services killed,
paused and restarted while scripted shoppers shop), the fault schedule it draws from
--seed, and what `seed` and `checkout` say when Ctrl-C stops them."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import QaShop, eventually_sync, running_shop, shop_admin_token, shopctl

from shopctl.chaos import MAX_HOLD, FaultKind, FaultLog, FaultRecord, plan_round
from shopctl.seeding import load_demo_data
from shopctl.state import load_state

SERVICES = ["gateway", "product", "user", "order", "cart"]
# The embedded servers `shopctl up` runs, the SMTP sink among them.
SERVERS = ["mongodb", "postgres", "redis", "smtp"]


# -- the schedule --------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_faults_and_another_seed_others() -> None:
    first = plan_round(7, 0, SERVICES, SERVERS)
    assert plan_round(7, 0, list(reversed(SERVICES)), SERVERS) == first
    assert plan_round(8, 0, SERVICES, SERVERS) != first
    assert plan_round(7, 1, SERVICES, SERVERS) != first


@pytest.mark.parametrize("seed", range(20))
def test_a_round_kills_every_service_and_takes_down_every_server(seed: int) -> None:
    faults = plan_round(seed, 0, SERVICES, SERVERS)
    kills = sorted(f.target for f in faults if f.kind is FaultKind.KILL and f.target in SERVICES)
    assert kills == sorted(SERVICES)
    for server in SERVERS:
        kinds = [f.kind for f in faults if f.target == server and f.kind is not FaultKind.PAUSE]
        assert kinds in ([FaultKind.KILL], [FaultKind.RESTART]), (server, kinds)
    assert {f.kind for f in faults} == set(FaultKind)
    assert [f.target for f in faults if f.kind is FaultKind.PAUSE] != []
    assert all(0 < f.hold <= MAX_HOLD for f in faults if f.kind is not FaultKind.RESTART)
    assert all(f.gap > 0 for f in faults)


def test_later_rounds_still_hurt_every_process_once_and_only_what_exists() -> None:
    faults = plan_round(3, 2, ["order"], [])
    assert [f.target for f in faults].count("order") == 2  # its fault, and a pause
    assert {f.target for f in faults} == {"order"}
    assert plan_round(3, 0, [], []) == []


def test_an_answer_is_excused_only_during_a_fault_and_its_grace() -> None:
    log = FaultLog()
    log.records.append(FaultRecord(at=10.0, kind=FaultKind.KILL, target="order", hold=1.0))
    assert log.during_fault(11.0, 12.0)  # not recovered yet: the window is open
    log.records[0].ready_after = 2.0  # ready at 12.0, excused until 12.0 + GRACE
    assert log.during_fault(9.0, 10.5) and log.during_fault(13.0, 14.0)
    assert not log.during_fault(1.0, 9.9) and not log.during_fault(30.0, 31.0)


# -- against a real shop -------------------------------------------------------------------

DEMO = load_demo_data()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QaShop]:
    """A shop whose order service gives up on a hung checkout and runs its recovery
    quickly, so a run that killed it settles in seconds rather than half a minute, and
    tries again soon an e-mail the SMTP sink was away for."""
    data_dir = tmp_path_factory.mktemp("chaos") / "shop"
    settings = {
        "CHECKOUT_LEASE_SECONDS": "5",
        "RECOVERY_INTERVAL_SECONDS": "1",
        "EMAIL_RETRY_SECONDS": "1",
    }
    with running_shop(data_dir, **settings) as (url, env):
        yield QaShop(url, data_dir, env, shop_admin_token(url, data_dir))
    # `down` stopped everything, the processes chaos started included.
    state_left = load_state(data_dir)
    assert state_left is None


def interrupt(process: subprocess.Popen) -> tuple[str, str]:
    process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=120)
    finally:
        process.kill()


def test_guest_merge_is_refused_under_chaos_before_anything_starts(tmp_path: Path) -> None:
    refused = shopctl(
        "checkout", "--chaos", "-s", "guest-merge", "--data-dir", tmp_path / "none"
    )  # fmt: skip
    assert refused.returncode == 1
    assert "guest-merge scenario drives the web pages and is not played under --chaos" in (
        refused.stderr
    )
    assert "Traceback" not in refused.stderr


@pytest.mark.slow
def test_ctrl_c_during_seed_says_what_was_done_and_what_finishes_it(shop: QaShop) -> None:
    assert shop.run("seed", "--no-customers").returncode == 0
    total = len(DEMO.products)
    seeding = shop.start("seed", "--reset", "--yes", "--concurrency", "1", "--no-customers")
    eventually_sync(lambda: shop.product_count() < total, "products being deleted", 30)

    stdout, stderr = interrupt(seeding)

    assert seeding.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    assert "Ctrl-C: stopping" in stdout
    assert "Interrupted (Ctrl-C) while" in stderr
    assert "(kept); not done: " in stderr and "products to load" in stderr
    assert "Seed of local" in stdout  # the table of what was done
    deleting = "while deleting" in stderr
    next_command = "shopctl seed --reset --yes" if deleting else "shopctl seed"
    assert f"Next: `{next_command}" in stderr, stderr
    assert shop.product_count() < total or not deleting

    finished = shop.run(*next_command.split()[1:], "--no-customers")

    assert finished.returncode == 0, finished.stdout + finished.stderr
    products = shop.products()
    assert sorted(p["name"] for p in products) == sorted(p.name for p in DEMO.products)


@pytest.mark.slow
def test_ctrl_c_during_checkout_prints_the_partial_report_and_the_next_command(
    shop: QaShop, tmp_path: Path
) -> None:
    assert shop.run("seed", "--no-customers").returncode == 0
    orders_before = len(shop.orders())
    report = tmp_path / "partial.json"
    running = shop.start(
        "checkout", "--users", "4", "--concurrency", "2", "--duration", "5m", "--seed", "31",
        "--json", report,
    )  # fmt: skip
    eventually_sync(lambda: len(shop.orders()) > orders_before, "an order", 60)

    stdout, stderr = interrupt(running)

    assert running.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    assert "Ctrl-C: stopping: no new shoppers" in stderr
    assert "Interrupted (Ctrl-C) after" in stdout
    assert "Steps (latency in ms)" in stdout and "Stock conservation holds" in stdout
    assert "INTERRUPTED: " in stdout and "no failure so far" in stdout
    assert "Next: `shopctl seed` puts the stock back, then `shopctl checkout --seed 31`" in stdout
    result = json.loads(report.read_text())
    assert result["interrupted"]
    assert result["orders"]["placed"] >= 1 and result["conservation"]["ok"]
    assert result["failure_count"] == 0 and result["sessions_cut_short"] == 0
    placed = len(shop.orders()) - orders_before
    assert placed == result["orders"]["placed"]


@pytest.mark.slow
def test_chaos_kills_every_service_and_the_shop_recovers_with_nothing_lost(
    shop: QaShop, tmp_path: Path
) -> None:
    assert shop.run("seed", "--no-customers").returncode == 0
    before = load_state(shop.data_dir)
    assert before is not None
    pids_before = {s.name: s.process.pid for s in [*before.services, *before.embedded]}
    stock_before = {p["id"]: p["stock"] for p in shop.products()}
    orders_before = {o["id"] for o in shop.orders()}
    report = tmp_path / "chaos.json"

    run = shop.run(
        "checkout", "--chaos", "--seed", "5", "--users", "6", "--concurrency", "4",
        "--json", report,
    )  # fmt: skip

    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASSED" in run.stdout and "Faults injected" in run.stdout
    result = json.loads(report.read_text())
    chaos = result["chaos"]
    faults = chaos["faults"]
    killed = {f["target"] for f in faults if f["kind"] == "kill"}
    assert set(SERVICES) <= killed
    downed = {f["target"] for f in faults if f["kind"] in ("kill", "restart")}
    assert set(SERVERS) <= downed
    assert {f["kind"] for f in faults} == {"kill", "pause", "restart"}
    assert all(f["ready_after_s"] is not None and not f["error"] for f in faults)
    assert [f["at_s"] for f in faults] == sorted(f["at_s"] for f in faults)
    # The report names the same schedule the seed plans.
    planned = plan_round(5, 0, SERVICES, SERVERS)
    assert [(f["kind"], f["target"]) for f in faults] == [(p.kind, p.target) for p in planned]
    assert chaos["recovered"] and chaos["restarted_at_end"] == []
    assert result["passed"] and result["failure_count"] == 0 and result["conservation"]["ok"]
    placed = result["orders"]["placed"]
    assert placed > 0 and chaos["keys_replayed"] == placed == chaos["orders_checked"]
    assert sum(step["refused_during_faults"] for step in result["steps"]) > 0
    # Every order's payment and e-mails checked too; an e-mail lost to a fault (given up
    # rather than sent twice) is counted apart, never sent twice.
    verified = result["verified"]
    cancelled = result["orders"]["cancelled"]
    assert verified["payments"] == {"authorised": placed - cancelled, "voided": cancelled}
    assert verified["totals_checked"] == placed
    assert verified["payment_refusals"] and verified["saved_addresses"] > 0
    emails = verified["emails"]
    assert emails["checked"] and emails["duplicates"] == emails["missing"] == 0
    assert emails["found_once"] + emails["not_verifiable"] == emails["expected"]
    assert emails["expected"] == placed + cancelled

    # Every process is a new one now, and state.json knows them all: status says ready.
    after = load_state(shop.data_dir)
    assert after is not None
    for name, process in [(s.name, s.process) for s in [*after.services, *after.embedded]]:
        assert process.alive(), name
        if name in SERVICES or name in downed:
            assert process.pid != pids_before[name], name
    status = shop.run("status")
    assert status.returncode == 0, status.stdout + status.stderr

    # And through the shop: the new orders account for every unit of stock gone.
    new_orders = shop.assert_stock_went_only_to_orders(stock_before, orders_before)
    assert len(new_orders) == placed
