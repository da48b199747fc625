"""The Rich tables commands print: service health, backing servers, a gateway's report."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shopctl.embedded import EmbeddedServer
from shopctl.probes import Answer, ServiceHealth, backends_not_ready, format_uptime

STATE_STYLES = {"ready": "green", "not ready": "yellow", "starting": "cyan"}


def _status_cell(answer: Answer) -> Text:
    if answer.status is None:
        return Text("no answer", style="red")
    return Text(str(answer.status), style="green" if answer.ok else "yellow")


def health_table(checks: Iterable[ServiceHealth], title: str = "Services") -> Table:
    checks = list(checks)
    noted = any(check.note for check in checks)  # a column only when there is something
    table = Table(title=title, title_justify="left")
    for column in ("service", "URL", "state", "health", "ready", "PID", "uptime"):
        table.add_column(column, overflow="fold")
    if noted:
        table.add_column("note", overflow="fold")
    for check in checks:
        label = check.label()
        row = [
            check.name,
            check.url,
            Text(label, style=STATE_STYLES.get(label, "red")),
            _status_cell(check.health),
            _status_cell(check.ready),
            str(check.pid),
            format_uptime(check.uptime),
        ]
        table.add_row(*row, *([check.note] if noted else []))
    return table


def log_tail_panel(check: ServiceHealth, log_path: Path | None, tail: str) -> Panel:
    """The end of the log of a service that exited, under the table `up` keeps showing."""
    return Panel(
        Text(tail),
        title=f"{check.name}: {check.label()}, last lines of {log_path}",
        title_align="left",
        border_style="red",
    )


def backends_table(servers: Iterable[EmbeddedServer]) -> Table:
    table = Table(title="Embedded backing servers", title_justify="left")
    for column in ("server", "URI", "state", "PID"):
        table.add_column(column, overflow="fold")
    for server in servers:
        alive = server.alive()
        state = Text("running", style="green") if alive else Text("stopped", style="red")
        table.add_row(server.name, server.uri, state, str(server.pid))
    return table


def gateway_table(url: str, answer: Answer) -> Table:
    """What a gateway's /ready says about each backend (never their URLs). Its body is
    `{"success": ..., "data": {"status": ..., "backends": {name: {"ready": bool, ...}}}}`;
    the gateway itself is ready while a backend is down, so the title says which are."""
    data = answer.body.get("data") if isinstance(answer.body, Mapping) else None
    data = data if isinstance(data, Mapping) else {}
    status = data.get("status") or ("ready" if answer.ok else "not ready")
    down = backends_not_ready(answer.body)
    if answer.ok and down:
        status = f"{status}, but {', '.join(down)} not ready"
    table = Table(title=f"Gateway {url}: {status}", title_justify="left")
    for column in ("backend", "ready", "detail"):
        table.add_column(column, overflow="fold")
    backends = data.get("backends")
    for name, report in backends.items() if isinstance(backends, Mapping) else []:
        report = report if isinstance(report, Mapping) else {}
        if report.get("ready") is True:
            state = Text("ready", style="green")
        elif report.get("configured") is False:
            state = Text("not configured", style="dim")
        else:
            state = Text("not ready", style="yellow")
        shown = {"ready", "url", "configured"}
        detail = ", ".join(f"{key}={value}" for key, value in report.items() if key not in shown)
        table.add_row(str(name), state, detail)
    return table


# The same content as plain data, for `-o json` / `-o yaml`: a table's rows as records whose
# keys name its columns (numbers as numbers, a missing answer as null).


def health_records(checks: Iterable[ServiceHealth]) -> list[dict[str, Any]]:
    return [
        {
            "service": check.name,
            "url": check.url,
            "state": check.label(),
            "health": check.health.status,
            "ready": check.ready.status,
            "pid": check.pid,
            "uptime_seconds": None if check.uptime is None else round(check.uptime, 1),
            "error": check.ready.error or check.health.error or None,
            "note": check.note or None,  # e.g. restarted outside shopctl
        }
        for check in checks
    ]


def backend_records(servers: Iterable[EmbeddedServer]) -> list[dict[str, Any]]:
    return [
        {
            "server": server.name,
            "uri": server.uri,
            "state": "running" if server.alive() else "stopped",
            "pid": server.pid,
        }
        for server in servers
    ]


def gateway_record(url: str, answer: Answer) -> dict[str, Any]:
    """What `gateway_table` shows: the gateway's state and each backend's."""
    data = answer.body.get("data") if isinstance(answer.body, Mapping) else None
    data = data if isinstance(data, Mapping) else {}
    backends = data.get("backends")
    records = []
    for name, report in backends.items() if isinstance(backends, Mapping) else []:
        report = report if isinstance(report, Mapping) else {}
        if report.get("ready") is True:
            state = "ready"
        elif report.get("configured") is False:
            state = "not configured"
        else:
            state = "not ready"
        shown = {"ready", "url", "configured"}
        detail = {key: value for key, value in report.items() if key not in shown}
        records.append({"backend": str(name), "state": state, "detail": detail})
    return {
        "gateway": url,
        "status": data.get("status") or ("ready" if answer.ok else "not ready"),
        "http_status": answer.status,
        "backends_not_ready": backends_not_ready(answer.body),
        "backends": records,
    }
