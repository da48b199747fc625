"""`shopctl trace`: one request's spans across the shop, drawn as a waterfall."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.text import Text

from shopctl import stack
from shopctl.console import failures_reported, get_consoles, service_style, visible
from shopctl.errors import ShopctlError
from shopctl.options import DataDir
from shopctl.traces import Span, Trace, find_traces, latest_slow_trace

ERROR_STYLE = "bold red"
STATEMENT_WIDTH = 60  # the most a statement is given; what is longer ends in …
MIN_STATEMENT_WIDTH = 16
MIN_BAR_WIDTH = 20
GOOD_BAR_WIDTH = 30  # the bar's width before the statement gets more than its least
MAX_BAR_WIDTH = 80
STATUS_WIDTH = 6
MS_WIDTH = 8
GAP = "  "
BAR = "█"


def trace(
    ctx: typer.Context,
    data_dir: DataDir,
    request_or_trace_id: Annotated[
        str | None,
        typer.Argument(
            metavar="ID",
            help="A request id (X-Request-ID, as `shopctl checkout` lists its failures) or a "
            "trace id (trace_id in the services' log lines).",
            show_default=False,
        ),
    ] = None,
    last: Annotated[
        bool,
        typer.Option("--last", help="Show the latest trace that took at least --slower-than."),
    ] = False,
    slower_than: Annotated[
        float,
        typer.Option(help="With --last: what counts as slow, in milliseconds.", min=0),
    ] = 100.0,
) -> None:
    """Draw one request's trace as a waterfall: every service and datastore it touched.

    Each line is a span, indented under the one that caused it: service, operation, the
    datastore statement (never its parameters), the duration, and a bar on the request's
    time axis; failures are red. The spans come from the shop `shopctl up` runs, which
    records them in its data directory (traces/, the latest few MiB per service).

    Examples:

    * `shopctl trace qa-437a6e49-000031` (a request id from a failed `shopctl checkout`)
    * `shopctl trace 4bf92f3577b34da6a3ce929d0e0e4736`
    * `shopctl trace --last` (the latest request slower than 100 ms)
    """
    consoles = get_consoles(ctx)
    with failures_reported(consoles):
        directory = stack.traces_dir(data_dir)
        for found in _traces_asked_for(directory, request_or_trace_id, last, slower_than):
            consoles.out.print(waterfall(found, consoles.out.width))


def _traces_asked_for(
    directory: Path, wanted: str | None, last: bool, slower_than: float
) -> list[Trace]:
    if (wanted is None) == (not last):
        raise ShopctlError("give a request id or a trace id, or --last (not both)")
    if not directory.is_dir():
        raise ShopctlError(
            f"no spans recorded in {directory}: the services of a shop started with "
            "`shopctl up` record them there (check --data-dir)"
        )
    if wanted is not None:
        found = find_traces(directory, wanted.strip())
        if not found:
            raise ShopctlError(
                f"no trace of {wanted!r} in {directory}: spans are written half a second "
                "after they end, and each service keeps only its latest few MiB"
            )
        return found
    latest, seen = latest_slow_trace(directory, slower_than)
    if latest is None:
        raise ShopctlError(
            f"none of the {seen} requests recorded in {directory} took {slower_than:g} ms "
            "or more (try --slower-than 0)"
        )
    return [latest]


def waterfall(found: Trace, width: int) -> Group:
    """The trace's heading and its spans, one line each: the span (indented under its
    parent), its HTTP status, the statement (or what went wrong), its duration, and a bar
    on the trace's time axis. Laid out to ``width``: the span in full (up to nearly half),
    then the bar and the statement share the rest; on a narrow terminal the statement goes."""
    rows = []
    for span, prefix in _tree(found):
        style = ERROR_STYLE if span.failed else ""
        label = Text()
        label.append(prefix, style="dim")
        label.append(span.service, style=style or service_style(span.service))
        label.append(f" {visible(_operation(span))}", style=style)
        rows.append((span, label, _detail(span)))
    label_width = min(max(len(label) for _, label, _ in rows), max(30, width * 9 // 20))
    wanted = min(STATEMENT_WIDTH, max(len(detail) for _, _, detail in rows))
    left = width - label_width - STATUS_WIDTH - MS_WIDTH - 4 * len(GAP)
    if left - wanted >= GOOD_BAR_WIDTH:
        detail_width = wanted
    elif left - GOOD_BAR_WIDTH >= MIN_STATEMENT_WIDTH:
        detail_width = left - GOOD_BAR_WIDTH
    elif left - MIN_BAR_WIDTH >= MIN_STATEMENT_WIDTH:
        detail_width = left - MIN_BAR_WIDTH
    else:
        detail_width = 0
    bar_width = max(MIN_BAR_WIDTH // 2, min(MAX_BAR_WIDTH, left - detail_width))
    widths = (label_width, STATUS_WIDTH, detail_width, MS_WIDTH, bar_width)

    heading = [
        Text("span"),
        Text("status", justify="right"),
        Text("statement"),
        Text("ms", justify="right"),
        Text(_axis(found.duration_ms, bar_width)),
    ]
    lines = [_line(heading, widths, style="bold")]
    for span, label, detail in rows:
        duration = Text(f"{span.duration_ms:.1f}", justify="right")
        duration.stylize(ERROR_STYLE if span.failed else "")
        cells = [label, _status(span), detail, duration, _bar(span, found, bar_width)]
        lines.append(_line(cells, widths))
    return Group(_heading(found), *lines)


def _line(cells: list[Text], widths: tuple[int, ...], style: str = "") -> Text:
    """The cells side by side, each cut or padded to its width (a width of 0 leaves it out)."""
    line = Text(style=style, no_wrap=True, overflow="crop")
    for index, (cell, width) in enumerate(zip(cells, widths, strict=True)):
        if not width:
            continue
        cell = cell.copy()
        if cell.justify == "right" and len(cell) < width:
            cell.pad_left(width - len(cell))
        cell.truncate(width, overflow="ellipsis", pad=True)
        if index:
            line.append(GAP)
        line.append_text(cell)
    line.rstrip()
    return line


def _detail(span: Span) -> Text:
    """What went wrong, for a span that failed or was refused; else its statement."""
    if span.failed and span.error:
        return Text(visible(span.error), style=ERROR_STYLE)
    if span.error_code:
        return Text(visible(span.error_code), style=ERROR_STYLE if span.failed else "yellow")
    return Text(visible(span.statement), style="dim")


def _heading(found: Trace) -> Text:
    moment = datetime.fromtimestamp(found.start / 1e9).strftime("%Y-%m-%d %H:%M:%S")
    heading = Text("Trace ", style="bold")
    heading.append(found.trace_id, style="bold")
    if found.request_id:
        heading.append(f"  request {found.request_id}")
    heading.append(
        f"  {moment}  {found.duration_ms:.1f} ms  {found.spans} spans in "
        f"{', '.join(found.services)}"
    )
    failures = sum(1 for span, _ in found.walk() if span.failed)
    if failures:
        heading.append(f"  {failures} failed", style=ERROR_STYLE)
    return heading


def _tree(found: Trace) -> list[tuple[Span, str]]:
    """Each span with the guide lines drawn before it (├─, └─, │)."""
    lines: list[tuple[Span, str]] = []

    def visit(span: Span, lead: str, guide: str) -> None:
        lines.append((span, lead + guide))
        below = lead + ("" if not guide else "   " if guide == "└─ " else "│  ")
        for index, child in enumerate(span.children):
            visit(child, below, "└─ " if index == len(span.children) - 1 else "├─ ")

    for root in found.roots:
        visit(root, "", "")
    return lines


def _operation(span: Span) -> str:
    """What the span did, as a person reads it: the request and its path for HTTP, the
    datastore and its command for a query."""
    if span.database:
        command = span.name.rsplit(".", 1)[-1].rstrip(";")
        return f"{span.database} {command}"
    method = span.http_method
    if method and span.kind == "client":
        callee = next((child.service for child in span.children if child.kind == "server"), None)
        target = callee or _host(span.url)
        return f"{method} → {target} {span.path or ''}".rstrip()
    if method and span.path:
        return f"{method} {span.path}"
    return span.name


def _host(url: str | None) -> str:
    if not url:
        return "?"
    return url.split("://", 1)[-1].split("/", 1)[0]


def _status(span: Span) -> Text:
    status = span.http_status
    if status is None:
        text = Text("error", style=ERROR_STYLE) if span.failed else Text("")
    elif span.failed or status >= 500:
        text = Text(str(status), style=ERROR_STYLE)
    else:
        text = Text(str(status), style="yellow" if status >= 400 else "green")
    text.justify = "right"
    return text


def _axis(total_ms: float, width: int) -> str:
    right = f"{total_ms:.1f} ms"
    return "0" + right.rjust(width - 1)


def _bar(span: Span, found: Trace, width: int) -> Text:
    total = max(found.end - found.start, 1)
    offset = min(width - 1, int((span.start - found.start) * width / total))
    length = max(1, min(width - offset, round((span.end - span.start) * width / total)))
    style = ERROR_STYLE if span.failed else service_style(span.service)
    bar = Text(" " * offset)
    bar.append(BAR * length, style=style)
    return bar
