"""`shopctl up`: start the shop on this machine."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated

import typer
from rich.live import Live

from shopctl import processes, stack, views
from shopctl.console import Consoles, failures_reported, get_consoles
from shopctl.options import BasePort, DataDir, LogLevel
from shopctl.probes import ServiceHealth
from shopctl.stack import UpConfig
from shopkit.settings import MAX_WORKERS


def up(
    ctx: typer.Context,
    data_dir: DataDir,
    base_port: BasePort = 3000,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            "-d",
            help="Start in the background and return once every service is ready.",
            envvar="SHOP_DETACH",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            help="With --detach: seconds to wait for every /ready to answer 200.",
            envvar="SHOP_UP_TIMEOUT",
            min=1,
        ),
    ] = 60.0,
    log_level: Annotated[
        LogLevel,
        typer.Option(help="The services' LOG_LEVEL.", envvar="LOG_LEVEL", case_sensitive=False),
    ] = LogLevel.INFO,
    workers: Annotated[
        int,
        typer.Option(
            help="Processes per service (their WORKERS), sharing its port: for a machine "
            "with cores to spare.",
            envvar="WORKERS",
            min=1,
            max=MAX_WORKERS,
        ),
    ] = 1,
    traces: Annotated[
        bool,
        typer.Option(
            help="Have the services record the spans of every request in the data "
            "directory, for `shopctl trace`.",
            envvar="SHOP_TRACES",
        ),
    ] = True,
) -> None:
    """Start the shop: backing servers, then every service.

    An embedded backing server is started under the data directory for each of
    MONGODB_URI, DATABASE_URL and REDIS_URL that is not set, and an SMTP sink that keeps
    the e-mails the shop sends (`shopctl mail`) unless SMTP_URL is set. In the foreground
    it shows each service's state until Ctrl-C; with --detach it returns once every
    service is ready.

    Examples:

    * `shopctl up` (Ctrl-C stops it)
    * `shopctl up --detach --base-port 4000 --data-dir /tmp/shop2`
    * `shopctl up --workers 2` (two processes per service)
    """
    consoles = get_consoles(ctx)
    config = UpConfig(
        data_dir,
        base_port,
        log_level.value,
        dict(os.environ),
        foreground=not detach,
        workers=workers,
        traces=traces,
    )
    with failures_reported(consoles):
        if detach:
            _start_detached(config, consoles, timeout)
        else:
            _run_in_foreground(config, consoles)


def _start_detached(config: UpConfig, consoles: Consoles, timeout: float) -> None:
    state = stack.start_shop(config, consoles.say)
    try:
        with consoles.out.status("Waiting until every service is ready..."):
            checks = stack.wait_until_ready(state, timeout)
    except BaseException:
        stack.stop_shop(state)
        raise
    consoles.out.print(views.health_table(checks))
    if state.embedded:
        consoles.out.print(views.backends_table(state.embedded))
    consoles.say(f"Logs: {stack.logs_dir(config.data_dir)}")
    consoles.say(f"Stop with: shopctl down --data-dir {config.data_dir}")


def _run_in_foreground(config: UpConfig, consoles: Consoles) -> None:
    with processes.stop_requests() as stop_requested:
        state = stack.start_shop(config, consoles.say, cancelled=stop_requested)
        try:
            consoles.say("Press Ctrl-C to stop.")
            if consoles.out.is_terminal:
                with Live(console=consoles.out, auto_refresh=False) as live:
                    stack.watch(
                        state,
                        lambda checks: live.update(views.health_table(checks), refresh=True),
                        stop_requested,
                    )
            else:
                stack.watch(state, _changes_printer(consoles), stop_requested)
        finally:
            consoles.say("Stopping...")
            stack.stop_shop(state, consoles.say)
    consoles.say(f"Stopped; the data stays in {config.data_dir}")


def _changes_printer(consoles: Consoles) -> Callable[[list[ServiceHealth]], None]:
    """Without a terminal (a log file, CI), print one line per change of a service's state."""
    shown: dict[str, str] = {}

    def print_changes(checks: list[ServiceHealth]) -> None:
        for check in checks:
            label = check.label()
            if shown.get(check.name) != label:
                shown[check.name] = label
                consoles.say(f"{check.name} ({check.url}): {label}")

    return print_changes
