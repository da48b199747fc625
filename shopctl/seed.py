"""`shopctl seed`: load the demo catalogue and customers into any shop, idempotently."""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.table import Table

from shopctl.console import Consoles, failures_reported, get_consoles, plural
from shopctl.environments import AdminCredentials, Environment, admin_credentials, running_target
from shopctl.errors import ShopctlError
from shopctl.interrupts import Interrupts, interrupts
from shopctl.options import DataDir, EnvName, TargetUrl
from shopctl.seeding import (
    DemoData,
    Kind,
    Outcome,
    SeedReport,
    Task,
    customer_tasks,
    deletion_tasks,
    load_demo_data,
    product_tasks,
    run_tasks,
)
from shopctl.shop_client import ShopClient, list_all_products, new_run_id

DEMO_PASSWORD = "shop-demo-password"


@dataclass(frozen=True)
class SeedOptions:
    dry_run: bool
    reset: bool
    yes: bool
    concurrency: int
    customers: bool
    customer_password: str


def seed(
    ctx: typer.Context,
    data_dir: DataDir,
    env: EnvName = None,
    url: TargetUrl = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show what would change; change nothing."),
    ] = False,
    reset: Annotated[
        bool,
        typer.Option(
            "--reset",
            help="Delete every product in the shop first, then load the demo catalogue "
            "(asks first unless --yes). Accounts are kept: the API cannot delete them.",
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before --reset deletes.")
    ] = False,
    concurrency: Annotated[
        int,
        typer.Option(
            help="Calls in flight at once: enough to be quick, few enough to be polite.",
            min=1,
            max=64,
        ),
    ] = 8,
    customers: Annotated[
        bool,
        typer.Option(
            "--customers/--no-customers", help="Also register the demo customer accounts."
        ),
    ] = True,
    customer_password: Annotated[
        str,
        typer.Option(
            help="The password the demo customers are registered with.",
            envvar="SHOP_DEMO_PASSWORD",
        ),
    ] = DEMO_PASSWORD,
) -> None:
    """Load the demo catalogue and customers through the shop's public API, as the admin.

    Products the shop lacks are created, ones that differ from the demo data are put back
    as shipped (price, stock, ...), the rest are left alone: a second run changes nothing.
    The admin's credentials come from the environment (see `shopctl env show NAME`).

    Examples:

    * `shopctl seed`
    * `shopctl seed --dry-run --env dev`
    * `shopctl seed --reset --yes --url http://127.0.0.1:3000`
    """
    consoles = get_consoles(ctx)
    options = SeedOptions(dry_run, reset, yes, concurrency, customers, customer_password)
    with failures_reported(consoles):
        target = running_target(env, url, data_dir)
        credentials = admin_credentials(target, data_dir)
        consoles.detail(f"As {credentials.email}, with the credentials from {credentials.source}")
        demo = load_demo_data()
        report = asyncio.run(_seed(target, credentials, demo, options, consoles))
    _print_report(consoles, target, report, options)
    if report.interrupted:
        _print_interrupted(consoles, report, options)
        raise typer.Exit(128 + report.interrupted)
    if report.failed:
        raise typer.Exit(1)


async def _seed(
    target: Environment,
    credentials: AdminCredentials,
    demo: DemoData,
    options: SeedOptions,
    consoles: Consoles,
) -> SeedReport:
    report = SeedReport()
    async with ShopClient(
        target.url, new_run_id("seed"), connections=options.concurrency, when_down=target.when_down
    ) as client:
        token = await client.admin_token(credentials)
        existing = await list_all_products(client)
        deletions: list[Task] = []
        if options.reset and existing:
            _confirm_reset(target, len(existing), options)
            deletions = deletion_tasks(client, token, existing)
            existing = []
        loads = product_tasks(client, token, demo.products, existing)
        if options.customers:
            loads += customer_tasks(client, demo.customers, options.customer_password)
        verb = "Checking" if options.dry_run else "Seeding"
        running: list[asyncio.Task[None]] = []

        def on_signal(signals: Interrupts) -> None:
            if signals.count == 1:
                progress.console.print(
                    f"{signals.name}: stopping: the calls in flight finish, no new one "
                    f"starts; {signals.name} again to stop at once",
                    markup=False,
                )
            else:
                for task in running:
                    task.cancel()

        with consoles.progress_bar() as progress, interrupts(on_signal) as signals:
            bar = progress.add_task(f"{verb} {target.url}", total=len(deletions) + len(loads))

            def advance(task: Task) -> None:
                progress.update(bar, advance=1)

            # Deletions finish before anything is created, so no name is taken twice.
            for phase_name, phase in (("deleting", deletions), ("loading", loads)):
                if signals.requested.is_set():
                    for task in phase:
                        report.not_done[task.pending] += 1
                    continue
                report.phase = phase_name
                running[:] = await run_tasks(
                    phase,
                    dry_run=options.dry_run,
                    concurrency=options.concurrency,
                    report=report,
                    advance=advance,
                    stop=signals.requested,
                )
            if signals.count:
                report.interrupted = signals.signal_number or signal.SIGINT
    return report


def _confirm_reset(target: Environment, count: int, options: SeedOptions) -> None:
    if options.yes or options.dry_run:
        return
    products = f"all {plural(count, 'product')}" if count > 1 else plural(count, "product")
    question = f"--reset deletes {products} of {target.name} ({target.url})"
    if not sys.stdin.isatty():
        raise ShopctlError(f"{question}; pass --yes to confirm when not at a terminal")
    if not typer.confirm(f"{question}. Continue?", default=False):
        raise ShopctlError("nothing was changed (--reset not confirmed)")


def _print_interrupted(consoles: Consoles, report: SeedReport, options: SeedOptions) -> None:
    """What an interrupted seed did and what to run to finish it."""
    done = ", ".join(
        f"{count} {kind.value} {outcome.value}"
        for kind in Kind
        for outcome in Outcome
        if (count := report.counts[kind][outcome])
    )
    left = ", ".join(f"{count} {what}" for what, count in report.not_done.items() if count)
    if options.reset and report.phase == "deleting":
        # Still deleting: only a reset again ends with the demo catalogue alone.
        again = "shopctl seed --reset --yes"
    else:
        # Loading: a plain seed adds what is missing and keeps what is done.
        again = "shopctl seed" + ("" if options.customers else " --no-customers")
    name = "Ctrl-C" if report.interrupted == signal.SIGINT else "SIGTERM"
    consoles.err.print(
        f"[bold yellow]Interrupted[/] ({name}) while {report.phase}: done: {done or 'nothing'} "
        f"(kept); not done: {left or 'nothing'}.",
        soft_wrap=True,
    )
    consoles.err.print(f"Next: `{again}` finishes it.", soft_wrap=True, markup=False)


def _print_report(
    consoles: Consoles, target: Environment, report: SeedReport, options: SeedOptions
) -> None:
    outcomes = list(Outcome)
    dry_run_headers = {Outcome.CREATED: "to create", Outcome.UPDATED: "to update"}
    dry_run_headers[Outcome.DELETED] = "to delete"
    headers = [
        dry_run_headers.get(outcome, outcome.value) if options.dry_run else outcome.value
        for outcome in outcomes
    ]
    title = f"Seed of {target.name} ({target.url})"
    if options.dry_run:
        title += ": dry run, nothing changed"
    table = Table(title=title, title_justify="left")
    table.add_column("kind")
    for header in headers:
        table.add_column(header, justify="right")
    for kind in Kind:
        if kind is Kind.CUSTOMERS and not options.customers:
            continue
        counts = report.counts[kind]
        table.add_row(kind.value, *(str(counts[outcome]) for outcome in outcomes))
    consoles.out.print(table)
    consoles.list_failures(report.failures, len(report.failures), "[red]failed[/]")
    if report.interrupted:
        return  # _print_interrupted says what was done and what to run
    if report.failed:
        consoles.err.print(
            f"[bold red]Error:[/] {plural(len(report.failures), 'item')} could not be loaded; "
            "run again to retry them (what is done is kept)",
            soft_wrap=True,
        )
    elif not report.changed and not options.dry_run:
        consoles.say(f"Nothing changed: {target.url} already has the demo data.")
    elif options.customers and not options.dry_run:
        consoles.say(
            "Demo customers log in with their email and the password "
            f"{options.customer_password!r}."
        )
