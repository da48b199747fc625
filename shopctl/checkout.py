"""`shopctl checkout`: scripted shoppers that drive and verify a shop, for QA."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from shopctl.chaos import FaultInjector, FaultLog, FaultRecord, chaos_state, probe_session
from shopctl.console import Consoles, failures_reported, get_consoles, plural
from shopctl.environments import (
    AdminCredentials,
    Environment,
    admin_credentials,
    running_target,
)
from shopctl.errors import ShopctlError
from shopctl.interrupts import Interrupts, interrupts
from shopctl.options import DataDir, EnvName, TargetUrl
from shopctl.qa_flows import QaRun, RunConfig, Scenario, run_checkout, start_run
from shopctl.qa_report import (
    RunSummary,
    conservation_table,
    faults_table,
    outcome_lines,
    steps_table,
)
from shopctl.shop_client import ShopClient, new_run_id
from shopctl.state import ShopState, load_state

# What --chaos plays unless --scenario says otherwise: every scenario but guest-merge (the
# web pages, whose refusals during a fault it cannot tell from a broken page).
CHAOS_SCENARIOS = [
    Scenario.HAPPY,
    Scenario.CANCEL,
    Scenario.RETRY,
    Scenario.SHORT_STOCK,
    Scenario.DECLINED,
    Scenario.SAVED_ADDRESS,
    Scenario.EXPRESS,
]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h)?$")


def parse_duration(text: str | None) -> float | None:
    """`90`, `90s`, `5m`, `1h` -> seconds."""
    if text is None:
        return None
    match = _DURATION.match(text.strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise typer.BadParameter(
            f"{text!r} is not a duration like 30s, 5m or 1h", param_hint="'--duration'"
        )
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]


def checkout(
    ctx: typer.Context,
    data_dir: DataDir,
    env: EnvName = None,
    url: TargetUrl = None,
    users: Annotated[
        int, typer.Option("--users", "-u", help="How many shoppers.", min=1, max=10_000)
    ] = 10,
    concurrency: Annotated[
        int,
        typer.Option("--concurrency", "-c", help="Shoppers active at once.", min=1, max=500),
    ] = 5,
    duration: Annotated[
        str | None,
        typer.Option(
            help="Keep the shoppers shopping until this much time has passed (30s, 5m); "
            "without it each shopper shops once.",
            show_default=False,
        ),
    ] = None,
    scenario: Annotated[
        list[Scenario] | None,
        typer.Option(
            "--scenario",
            "-s",
            help="What the shoppers do: happy, short-stock, cancel, idempotent-retry, "
            "declined-card, saved-address, express or guest-merge; repeat to mix (shoppers "
            "take them in turn). short-stock needs the admin's credentials.",
            metavar="NAME",
            case_sensitive=False,
            show_default="happy",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Makes a run repeatable: the same carts, and the same shopper accounts "
            "(which log in instead of registering). Default: a new random seed.",
            min=0,
            show_default=False,
        ),
    ] = None,
    max_failures: Annotated[
        int | None,
        typer.Option(
            help="Stop starting new sessions after this many failures (a broken shop "
            "fails fast). Default: no limit.",
            min=1,
            show_default=False,
        ),
    ] = None,
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Also write the report as JSON to this file ('-' for stdout), for CI.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    chaos: Annotated[
        bool,
        typer.Option(
            "--chaos",
            help="While the shoppers shop, kill, pause and restart the shop's services and "
            "embedded servers on a schedule made from --seed, then check it recovered and "
            "lost nothing. Only for a shop `shopctl up` started from --data-dir.",
        ),
    ] = False,
) -> None:
    """Drive scripted shoppers through the shop and verify every step against the contract.

    Each shopper registers (or logs in), browses and searches, fills a cart, checks out
    (an address, a delivery option, a test card) and reads its order back. Totals must be
    exact to the cent from the prices seen and the delivery rules, carts empty after
    checkout, and for every product touched: units sold + stock left = stock at start (so
    run it where nobody else is buying those products). At the end every order is read
    back: one payment authorised for its total, voided if it was cancelled; and for the
    shop `shopctl up` runs from --data-dir, one e-mail per event (placed, cancelled) in its
    SMTP sink. Exits 1 on any failure, printing the first ones with their request ids.

    Scenarios: **happy** (standard delivery, the card that succeeds); **cancel** (then
    cancels: stock back, payment voided); **idempotent-retry** (one key sent three times:
    one order); **short-stock** (too few for everyone: exactly the stock sold, 409 to the
    rest); **declined-card** (each test card that refuses in turn: the decline code or
    503 payment_unavailable it names, no order, cart and stock as they were; then another
    card pays); **saved-address** (saved twice, kept once, the order sent there);
    **express** (express delivery, never free); **guest-merge** (a guest fills a cart on
    the web pages, then registers or logs in there: the account's cart holds the guest's
    lines; not under --chaos).

    Examples:

    * `shopctl checkout --users 50 --concurrency 10`
    * `shopctl checkout -s cancel -s short-stock --duration 1m --seed 7 --json out.json`
    * `shopctl checkout -s declined-card -s guest-merge -s express --users 12`
    * `shopctl checkout --chaos --seed 7 --json chaos.json`

    **--chaos**: one round of faults, one at a time while the shoppers keep shopping (with
    --duration, rounds until it has passed): every service is killed (SIGKILL) and started
    again, every embedded server killed or restarted, one service restarted gracefully,
    one service and one server paused (SIGSTOP, then SIGCONT); after each the run waits
    until every /ready answers 200. The same --seed gives the same faults in the same
    order. Expected during a fault (and for a few seconds after): no answer, 502, 503,
    504, 429, and 409 checkout_in_progress; such a step is counted as refused and tried
    again once the shop is ready (a checkout with the same Idempotency-Key; an add to cart
    or a cancel only after reading whether it took effect). Failures: any other
    unexpected answer, a 500, a refusal with no fault under way, a 503'd checkout that
    changed the cart, a shop not ready within 60 s of a fault, stock that does not add up
    once the shop settled, an order no answer told of (or one missing), a replayed
    Idempotency-Key answering another order. An e-mail that never came after a fault is
    counted as not verifiable rather than failed (the outbox gives up one whose sending a
    fault cut off rather than send it twice). The shop is left running and ready, also
    after Ctrl-C.

    **Ctrl-C** stops starting shoppers and lets those under way finish (a second Ctrl-C
    ends them at once), then prints the partial report and exits 130.
    """
    consoles = get_consoles(ctx)
    default_scenarios = CHAOS_SCENARIOS if chaos else [Scenario.HAPPY]
    config = RunConfig(
        users=users,
        concurrency=concurrency,
        duration=parse_duration(duration),
        seed=secrets.randbelow(1_000_000) if seed is None else seed,
        scenarios=list(dict.fromkeys(scenario or default_scenarios)),
        max_failures=max_failures,
        chaos=chaos,
    )
    with failures_reported(consoles):
        if chaos and Scenario.GUEST_MERGE in config.scenarios:
            raise ShopctlError(
                "the guest-merge scenario drives the web pages and is not played under "
                "--chaos: leave it out"
            )
        target = running_target(env, url, data_dir)
        state = _chaos_target(target, data_dir) if chaos else None
        token_source = None
        if Scenario.SHORT_STOCK in config.scenarios:
            token_source = admin_credentials(target, data_dir)
        mail = _mail_access(target, data_dir)
        summary = asyncio.run(_run(target, config, token_source, consoles, state, mail))
        _report(consoles, summary, json_path)
    if summary.interrupted:
        raise typer.Exit(128 + (2 if summary.interrupted == "Ctrl-C" else 15))
    if not summary.passed:
        raise typer.Exit(1)


@dataclass(frozen=True)
class MailAccess:
    """Where the e-mails of the shop the shoppers go to arrive (the folder of the SMTP sink
    `shopctl up` runs), and its order service's metrics (how much its outbox has left to
    send); or why they are out of reach."""

    mail_dir: Path | None = None
    order_metrics_url: str | None = None
    why_not: str = ""


def _mail_access(target: Environment, data_dir: Path) -> MailAccess:
    state = load_state(data_dir)
    services = {s.name: s for s in state.services} if state else {}
    gateway = services.get("gateway")
    if state is None or gateway is None or gateway.url.rstrip("/") != target.url.rstrip("/"):
        return MailAccess(
            why_not=f"{target.url} is not the shop `shopctl up` runs from {data_dir}, so its "
            "e-mails are out of reach"
        )
    sink = next((s for s in state.embedded if s.name == "smtp"), None)
    if sink is None or sink.data_dir is None:
        return MailAccess(
            why_not="the shop sends its e-mails to an SMTP server of its own (SMTP_URL)"
        )
    order = services.get("order")
    return MailAccess(sink.data_dir, f"{order.url}/metrics" if order else None)


def _chaos_target(target: Environment, data_dir: Path) -> ShopState:
    """The shop --chaos may hurt: the one started from `data_dir`, and the one the shoppers
    go to."""
    state = chaos_state(data_dir)
    gateway = next((s for s in state.services if s.name == "gateway"), None)
    if gateway is None or gateway.url.rstrip("/") != target.url:
        where = gateway.url if gateway else "no gateway"
        raise ShopctlError(
            f"--chaos hurts the shop started from {data_dir} ({where}) but the shoppers would "
            f"shop at {target.url}: leave out --env/--url, or give the --data-dir of that shop"
        )
    return state


async def _run(
    target: Environment,
    config: RunConfig,
    credentials: AdminCredentials | None,
    consoles: Consoles,
    state: ShopState | None,
    mail: MailAccess,
) -> RunSummary:
    connections = min(400, config.concurrency * 2 + 4)
    async with ShopClient(
        target.url, new_run_id("qa"), connections=connections, when_down=target.when_down
    ) as client:
        token = await client.admin_token(credentials) if credentials else None
        run = await start_run(client, config, token)
        run.mail_dir, run.order_metrics_url = mail.mail_dir, mail.order_metrics_url
        run.mail_skipped = mail.why_not
        consoles.err.print(
            f"Run {client.run_id}: {config.users} shoppers against {target.url}, "
            f"seed {config.seed} (repeat with --seed {config.seed})"
            + (", with chaos" if state is not None else ""),
            markup=False,
        )
        total = config.duration or (None if config.chaos else config.users)
        with (
            consoles.progress_bar(consoles.err) as progress,
            interrupts(lambda signals: _on_interrupt(signals, run, progress.console)) as signals,
        ):
            bar = progress.add_task(_progress_text(run), total=total)

            def on_session_done() -> None:
                advance = 0 if config.duration else 1
                progress.update(bar, advance=advance, description=_progress_text(run))

            async def show_time() -> None:
                # With --duration the bar is the time; the counts change as sessions end.
                started = asyncio.get_running_loop().time()
                while True:
                    await asyncio.sleep(0.5)
                    elapsed = asyncio.get_running_loop().time() - started
                    progress.update(bar, completed=min(total, elapsed))

            clock = asyncio.create_task(show_time()) if config.duration else None
            disturbance = None
            if state is not None:
                disturbance = _disturb(run, state, progress.console)
            try:
                summary = await run_checkout(
                    run,
                    target=target.name,
                    on_session_done=on_session_done,
                    disturbance=disturbance,
                )
            finally:
                if clock is not None:
                    clock.cancel()
                progress.update(bar, completed=total, description=_progress_text(run))
            if signals.count:
                summary.interrupted = signals.name
            return summary


def _on_interrupt(signals: Interrupts, run: QaRun, console: Console) -> None:
    """The first Ctrl-C: no new sessions (and no new fault); the second: end them now."""
    run.stop.set()
    if signals.count == 1:
        faults = ", the fault under way undone" if run.faults is not None else ""
        console.print(
            f"{signals.name}: stopping: no new shoppers, those under way finish{faults}; "
            f"{signals.name} again to stop them at once",
            markup=False,
        )
    else:
        console.print(f"{signals.name}: stopping the shoppers now", markup=False)
        run.cut_sessions()
        run.hurry.set()


async def _disturb(run: QaRun, state: ShopState, console: Console) -> None:
    """The fault injector's part of a chaos run, which leaves every process of the shop
    running and the shop ready, whatever happens."""
    log = FaultLog()
    run.faults = log
    run.chaos.faults = log.records
    injector = FaultInjector(state, log, run.stop)
    order = injector.services.get("order")
    run.order_metrics_url = f"{order.url}/metrics" if order else None

    def announce(fault: FaultRecord) -> None:
        held = f" for {fault.hold:g} s" if fault.hold else ""
        console.print(f"  {fault.at:6.1f} s  {fault.kind.value} {fault.target}{held}", markup=False)

    injector.on_fault = announce
    async with probe_session() as session:
        try:
            await injector.run(run.config.seed, run.config.duration, session)
        finally:
            restarted = await asyncio.to_thread(injector.ensure_running)
            run.chaos.restarted_at_end = restarted
            if restarted:
                await injector.wait_ready(session)


def _progress_text(run: QaRun) -> str:
    text = f"{plural(run.ledger.placed, 'order')}, {plural(run.recorder.failure_count, 'failure')}"
    if run.faults is not None:
        text += f", {plural(len(run.faults.records), 'fault')}"
    return text


def _report(consoles: Consoles, summary: RunSummary, json_path: Path | None) -> None:
    json_to_stdout = json_path is not None and str(json_path) == "-"
    # With the JSON on stdout, the tables for people go to stderr.
    human = consoles.err if json_to_stdout else consoles.out
    if summary.interrupted:
        human.print(
            f"[bold yellow]Interrupted[/] ({summary.interrupted}) after "
            f"{summary.elapsed:.1f} s: a partial report of what was done.",
            soft_wrap=True,
        )
    human.print(steps_table(summary))
    if summary.chaos is not None:
        human.print(faults_table(summary.chaos))
    bad = [check for check in summary.stock if not check.ok]
    if bad:
        human.print(conservation_table(bad))
    for line in outcome_lines(summary):
        human.print(line, markup=False)
    if json_path is not None:
        document = json.dumps(summary.to_json(), indent=2)
        if json_to_stdout:
            sys.stdout.write(document + "\n")
        else:
            try:
                json_path.write_text(document + "\n", encoding="utf-8")
            except OSError as error:
                raise ShopctlError(f"cannot write {json_path}: {error}") from None
    recorder = summary.recorder
    if summary.interrupted:
        _interrupted_verdict(consoles, human, summary)
        return
    if summary.passed:
        human.print("[bold green]PASSED[/]: every step as the contract says.")
        return
    lines = [failure.line() for failure in recorder.failures]
    consoles.list_failures(lines, recorder.failure_count, "[red]✗[/]")
    if summary.chaos is not None and not summary.chaos.recovered:
        consoles.err.print(
            "[bold red]The shop did not recover from a fault[/] (see `shopctl status`)",
            soft_wrap=True,
        )
    consoles.err.print(
        f"[bold red]FAILED[/]: {plural(recorder.failure_count, 'failure')}"
        + (", stock does not add up" if bad else "")
        + f" (run {summary.run_id}; request ids name the services' log lines)",
        soft_wrap=True,
    )


def _interrupted_verdict(consoles: Consoles, human: Console, summary: RunSummary) -> None:
    """What an interrupted run did, what it found, and what to run next."""
    recorder = summary.recorder
    lines = [failure.line() for failure in recorder.failures]
    consoles.list_failures(lines, recorder.failure_count, "[red]✗[/]")
    found = (
        f"{recorder.failure_count} failures so far"
        if recorder.failure_count
        else "no failure so far"
    )
    cut = (
        f"; {summary.cut_short} sessions were cut short, so an order of theirs may be "
        "missing from the counts above"
        if summary.cut_short
        else ""
    )
    human.print(
        f"[bold yellow]INTERRUPTED[/]: {summary.sessions} sessions, "
        f"{summary.orders_placed} orders placed, {found}{escape(cut)} (run {summary.run_id}).",
        soft_wrap=True,
    )
    again = ["shopctl", "checkout", "--seed", str(summary.seed)]
    if summary.chaos is not None:
        again.append("--chaos")
    human.print(
        f"Next: `shopctl seed` puts the stock back, then `{' '.join(again)}` "
        "(with your other options) repeats this run.",
        soft_wrap=True,
        markup=False,
    )
