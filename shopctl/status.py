"""`shopctl status`: how each service is doing, once or as it changes (`--watch`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from shopctl import probes, processes, views
from shopctl.console import Consoles, OutputFormat, failures_reported, format_document, get_consoles
from shopctl.environments import resolve_environment, start_command
from shopctl.errors import ShopctlError
from shopctl.options import DataDir, EnvName, Output, TargetUrl
from shopctl.state import load_state


@dataclass(frozen=True)
class Report:
    """One look at the shop: the document (-o json/yaml) and the tables with the same
    content, whether all is ready, and each part's state for line-per-change watching."""

    document: dict[str, Any]
    table: RenderableType
    ready: bool
    states: dict[str, str] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)  # what -v adds
    error: str | None = None  # nothing answered at all


def status(
    ctx: typer.Context,
    data_dir: DataDir,
    env: EnvName = None,
    url: TargetUrl = None,
    output: Output = OutputFormat.TABLE,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Keep showing it, refreshed, until Ctrl-C. Without a terminal (or with -o "
            "json/yaml) print a line (a document) each time something changes.",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option(help="With --watch: seconds between looks.", min=0.2)
    ] = 2.0,
) -> None:
    """Show each service's health, readiness, PID and uptime.

    For the local shop it probes every service's own /ready; for another environment (or
    --url) it shows what the gateway's /ready reports about each backend (the gateway stays
    ready when a backend is down). Exits 1 unless the gateway and every backend are ready.

    Examples:

    * `shopctl status`
    * `shopctl status -o json`
    * `shopctl status --watch`
    * `shopctl status --env dev`
    * `shopctl status --url http://127.0.0.1:3000`
    """
    consoles = get_consoles(ctx).with_output(output)
    with failures_reported(consoles):
        target = resolve_environment(env, url, data_dir)
        if target.is_local and url is None:

            def look() -> Report:
                return _local_report(data_dir)
        else:

            def look() -> Report:
                return _gateway_report(target.url, target.when_down)

        if watch:
            _watch(look, consoles, output, interval)
            return
        report = look()
        if report.error:
            raise ShopctlError(report.error)
    consoles.print_result(output, report.document, report.table)
    for line in report.details:
        consoles.detail(line)
    if not report.ready:
        raise typer.Exit(1)


def _local_report(data_dir: Path) -> Report:
    state = load_state(data_dir)
    if state is None:
        nothing = f"Nothing is running from {data_dir}: start it with {start_command(data_dir)}."
        document = {"data_dir": str(data_dir), "running": False, "ready": False}
        document |= {"services": [], "backing_servers": []}
        return Report(document, Text(nothing), ready=False, states={"shop": nothing})
    checks = probes.check_services(state.services)
    ready = all(server.alive() for server in state.embedded) and all(
        check.is_ready for check in checks
    )
    tables: list[RenderableType] = [views.health_table(checks)]
    if state.embedded:
        tables.append(views.backends_table(state.embedded))
    services = views.health_records(checks)
    servers = views.backend_records(state.embedded)
    document = {"data_dir": str(data_dir), "running": True, "ready": ready}
    document |= {"services": services, "backing_servers": servers}
    states = {f"{s['service']} ({s['url']})": s["state"] for s in services}
    states |= {f"{s['server']} ({s['uri']})": s["state"] for s in servers}
    details = [f"{s['service']}: {s['error']}" for s in services if s["error"]]
    return Report(document, Group(*tables), ready, states, details)


def _gateway_report(url: str, when_down: str = "") -> Report:
    url = url.rstrip("/")
    answer = probes.get(f"{url}/ready")
    if answer.status is None:
        then = f"; {when_down}" if when_down else ""
        error = f"the gateway at {url} does not answer ({answer.error}){then}"
        document = {"gateway": url, "status": "no answer", "http_status": None}
        document |= {"backends_not_ready": [], "backends": [], "error": answer.error}
        return Report(document, Text(error), False, {f"gateway {url}": "no answer"}, [], error)
    record = views.gateway_record(url, answer)
    ready = answer.ok and not record["backends_not_ready"]
    states = {f"gateway {url}": record["status"]}
    states |= {f"{b['backend']} (through the gateway)": b["state"] for b in record["backends"]}
    return Report(record, views.gateway_table(url, answer), ready, states)


def _watch(
    look: Callable[[], Report], consoles: Consoles, output: OutputFormat, interval: float
) -> None:
    """Look every `interval` seconds until Ctrl-C (or SIGTERM): a live table at a terminal,
    else a line per change, or a document per change with -o json/yaml."""
    with processes.stop_requests() as stop_requested:
        if output is OutputFormat.TABLE and consoles.out.is_terminal:
            with Live(console=consoles.out, auto_refresh=False) as live:
                _every(interval, stop_requested, lambda: live.update(look().table, refresh=True))
        elif output is OutputFormat.TABLE:
            _every(interval, stop_requested, _changes_printer(look, consoles))
        else:
            _every(interval, stop_requested, _documents_printer(look, consoles, output))


def _every(interval: float, stop_requested: threading.Event, action: Callable[[], None]) -> None:
    while not stop_requested.is_set():
        action()
        stop_requested.wait(interval)


def _changes_printer(look: Callable[[], Report], consoles: Consoles) -> Callable[[], None]:
    """One line per part whose state changed since the last look (all of them at first)."""
    shown: dict[str, str] = {}

    def print_changes() -> None:
        for part, state in look().states.items():
            if shown.get(part) != state:
                shown[part] = state
                consoles.out.print(f"{part}: {state}", markup=False, soft_wrap=True)
        consoles.out.file.flush()

    return print_changes


def _documents_printer(
    look: Callable[[], Report], consoles: Consoles, output: OutputFormat
) -> Callable[[], None]:
    """The whole document each time it changes (uptimes aside): JSON one per line, YAML
    separated by `---`."""
    last: list[str] = []

    def print_document() -> None:
        document = look().document
        key = json.dumps(_without_uptimes(document), sort_keys=True)
        if last and last[0] == key:
            return
        last[:] = [key]
        if output is OutputFormat.JSON:
            consoles.out.file.write(json.dumps(document, ensure_ascii=False) + "\n")
        else:
            consoles.out.file.write("---\n" + format_document(output, document))
        consoles.out.file.flush()

    return print_document


def _without_uptimes(document: dict[str, Any]) -> dict[str, Any]:
    services = [
        {key: value for key, value in service.items() if key != "uptime_seconds"}
        for service in document.get("services", [])
    ]
    return {**document, "services": services}
