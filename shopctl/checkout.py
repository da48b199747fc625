"""`shopctl checkout`: scripted shoppers that drive and verify a shop, for QA."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer

from shopctl.console import Consoles, failures_reported, get_consoles, plural
from shopctl.environments import (
    AdminCredentials,
    Environment,
    admin_credentials,
    running_target,
)
from shopctl.errors import ShopctlError
from shopctl.options import DataDir, EnvName, TargetUrl
from shopctl.qa_flows import QaRun, RunConfig, Scenario, run_checkout, start_run
from shopctl.qa_report import RunSummary, conservation_table, outcome_lines, steps_table
from shopctl.shop_client import ShopClient, new_run_id

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
            help="What the shoppers do: happy, short-stock, cancel or idempotent-retry; "
            "repeat to mix (shoppers take them in turn). short-stock needs the admin's "
            "credentials.",
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
) -> None:
    """Drive scripted shoppers through the shop and verify every step against the contract.

    Each shopper registers (or logs in), browses and searches, fills a cart, checks out and
    reads its order back. Totals must be exact from the prices seen, carts empty after
    checkout, and for every product touched: units sold + stock left = stock at start (so
    run it where nobody else is buying those products). Exits 1 on any failure, printing
    the first ones with their request ids.

    Examples:

    * `shopctl checkout --users 50 --concurrency 10`
    * `shopctl checkout -s cancel -s short-stock --duration 1m --seed 7 --json out.json`
    """
    consoles = get_consoles(ctx)
    config = RunConfig(
        users=users,
        concurrency=concurrency,
        duration=parse_duration(duration),
        seed=secrets.randbelow(1_000_000) if seed is None else seed,
        scenarios=list(dict.fromkeys(scenario or [Scenario.HAPPY])),
        max_failures=max_failures,
    )
    with failures_reported(consoles):
        target = running_target(env, url, data_dir)
        token_source = None
        if Scenario.SHORT_STOCK in config.scenarios:
            token_source = admin_credentials(target, data_dir)
        summary = asyncio.run(_run(target, config, token_source, consoles))
        _report(consoles, summary, json_path)
    if not summary.passed:
        raise typer.Exit(1)


async def _run(
    target: Environment,
    config: RunConfig,
    credentials: AdminCredentials | None,
    consoles: Consoles,
) -> RunSummary:
    connections = min(400, config.concurrency * 2 + 4)
    async with ShopClient(
        target.url, new_run_id("qa"), connections=connections, when_down=target.when_down
    ) as client:
        token = await client.admin_token(credentials) if credentials else None
        run = await start_run(client, config, token)
        consoles.err.print(
            f"Run {client.run_id}: {config.users} shoppers against {target.url}, "
            f"seed {config.seed} (repeat with --seed {config.seed})",
            markup=False,
        )
        total = config.duration or config.users
        with consoles.progress_bar(consoles.err) as progress:
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
            try:
                return await run_checkout(run, target=target.name, on_session_done=on_session_done)
            finally:
                if clock is not None:
                    clock.cancel()
                progress.update(bar, completed=total, description=_progress_text(run))


def _progress_text(run: QaRun) -> str:
    return f"{plural(run.ledger.placed, 'order')}, {plural(run.recorder.failure_count, 'failure')}"


def _report(consoles: Consoles, summary: RunSummary, json_path: Path | None) -> None:
    json_to_stdout = json_path is not None and str(json_path) == "-"
    # With the JSON on stdout, the tables for people go to stderr.
    human = consoles.err if json_to_stdout else consoles.out
    human.print(steps_table(summary))
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
    if summary.passed:
        human.print("[bold green]PASSED[/]: every step as the contract says.")
        return
    lines = [failure.line() for failure in recorder.failures]
    consoles.list_failures(lines, recorder.failure_count, "[red]✗[/]")
    consoles.err.print(
        f"[bold red]FAILED[/]: {plural(recorder.failure_count, 'failure')}"
        + (", stock does not add up" if bad else "")
        + f" (run {summary.run_id}; request ids name the services' log lines)",
        soft_wrap=True,
    )
