"""`shopctl up`: start the shop on this machine."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group, RenderableType
from rich.live import Live

from shopctl import processes, reloading, stack, views
from shopctl.console import Consoles, failures_reported, get_consoles
from shopctl.options import BasePort, DataDir, LogLevel
from shopctl.probes import ServiceHealth
from shopctl.services import present_services
from shopctl.stack import UpConfig
from shopctl.state import ShopState
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
    reload: Annotated[
        bool,
        typer.Option(
            "--reload",
            help="Watch the services' source; when a file changes, restart the service it "
            "belongs to (every service for shopkit/), keeping the databases and the other "
            "services up. In the foreground only.",
            envvar="SHOP_RELOAD",
        ),
    ] = False,
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
    * `shopctl up --reload` (restarts a service when its code changes)
    """
    if reload and detach:
        # Nothing would be left running to watch the files, nor to show a failed restart.
        raise typer.BadParameter(
            "--reload watches the source in the foreground until Ctrl-C; drop --detach",
            param_hint="'--reload'",
        )
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
            _run_in_foreground(config, consoles, reload)


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


def _run_in_foreground(config: UpConfig, consoles: Consoles, reload: bool) -> None:
    with processes.stop_requests() as stop_requested, _reloader(reload, consoles) as reloader:
        state = stack.start_shop(config, consoles.say, cancelled=stop_requested)
        try:
            consoles.say("Press Ctrl-C to stop.")
            if consoles.out.is_terminal:
                with Live(console=consoles.out, auto_refresh=False) as live:
                    stack.watch(
                        state,
                        lambda checks: live.update(_live_view(state, checks), refresh=True),
                        stop_requested,
                        reloader=reloader,
                    )
            else:
                stack.watch(
                    state, _changes_printer(state, consoles), stop_requested, reloader=reloader
                )
        finally:
            consoles.say("Stopping...")
            stack.stop_shop(state, consoles.say)
    consoles.say(f"Stopped; the data stays in {config.data_dir}")


@contextlib.contextmanager
def _reloader(reload: bool, consoles: Consoles) -> Iterator[reloading.Reloader | None]:
    """With --reload, a Reloader watching the source the services will run (started before
    them, so no change made once they are up goes unseen)."""
    if not reload:
        yield None
        return
    modules = [service.module for service in present_services()]
    packages = reloading.source_packages(modules, Path.cwd())
    with reloading.Reloader(packages, consoles.say) as reloader:
        consoles.say(f"Watching {reloading.describe(packages)}")
        yield reloader


def _log_tail(state: ShopState, check: ServiceHealth) -> tuple[Path | None, str]:
    """The log of the service `check` is about, and the last lines its latest run wrote."""
    service = next(service for service in state.services if service.name == check.name)
    process = service.process
    tail = processes.log_tail(process.log_path, stack.LOG_TAIL_LINES, process.log_start)
    return process.log_path, tail or "(empty)"


def _live_view(state: ShopState, checks: list[ServiceHealth]) -> RenderableType:
    """The services' table, and under it the end of the log of each one that exited (a
    restart that failed, with the error that says why)."""
    exited = [check for check in checks if not check.alive]
    if not exited:
        return views.health_table(checks)
    tails = [views.log_tail_panel(check, *_log_tail(state, check)) for check in exited]
    return Group(views.health_table(checks), *tails)


def _changes_printer(state: ShopState, consoles: Consoles) -> Callable[[list[ServiceHealth]], None]:
    """Without a terminal (a log file, CI), print one line per change of a service's state
    or PID, and the end of its log when it exits."""
    shown: dict[str, tuple[str, int]] = {}

    def print_changes(checks: list[ServiceHealth]) -> None:
        for check in checks:
            label = check.label()
            if shown.get(check.name) != (label, check.pid):
                shown[check.name] = (label, check.pid)
                consoles.say(f"{check.name} ({check.url}): {label}, PID {check.pid}")
                if not check.alive:
                    log_path, tail = _log_tail(state, check)
                    consoles.say(f"--- last lines of {log_path}:\n{tail}")

    return print_changes
