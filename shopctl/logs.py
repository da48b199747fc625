"""`shopctl logs`: the services' logs merged in time order, one line each, or followed."""

from __future__ import annotations

import collections
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from types import FrameType
from typing import Annotated, Any

import orjson
import typer
from rich.console import COLOR_SYSTEMS, Console
from rich.style import Style

from shopctl import stack
from shopctl.console import failures_reported, get_consoles, service_style, visible
from shopctl.errors import ShopctlError
from shopctl.log_lines import Follower, LineFilter, LogLine, parse_since, service_log_files
from shopctl.options import DataDir
from shopctl.services import SERVICES

ServiceName = StrEnum("ServiceName", {service.name: service.name for service in SERVICES})  # type: ignore[misc]


class Level(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


LEVEL_STYLES = {"debug": "dim", "warning": "yellow", "error": "bold red", "critical": "bold red"}
LEVEL_LABELS = {"warning": "WARN", "critical": "CRIT"}
POLL_INTERVAL = 0.25  # seconds between looks at the files when following them
# A line is shown this long after it was written when following: a worker's lines reach the
# file up to half a second late, and are then still shown in their place.
FOLLOW_HOLD = timedelta(seconds=1)
FOLLOW_TAIL = 10  # lines shown before following, unless --tail says
LABEL_WIDTH = max(len(service.name) for service in SERVICES)
# Fields every line has, shown in the line's own columns (or, for access lines, in its
# message: "GET /api/products 200"); the rest are shown as key=value after the message.
_SHOWN_ELSEWHERE = frozenset(
    {"ts", "level", "service", "logger", "request_id", "trace_id", "span_id", "msg", "worker"}
    | {"method", "path", "status", "exc"}
)


def logs(
    ctx: typer.Context,
    data_dir: DataDir,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep showing lines as they are written.")
    ] = False,
    services: Annotated[
        list[ServiceName] | None,
        typer.Option(
            "--service",
            "-s",
            help="Only this service's lines (repeat for several).",
            show_default=False,
        ),
    ] = None,
    level: Annotated[
        Level, typer.Option("--level", "-l", help="Only lines of this level or worse.")
    ] = Level.debug,
    request_id: Annotated[
        str | None,
        typer.Option(
            help="Only the lines of this request, in every service it reached (the "
            "X-Request-ID a response carries, as `shopctl checkout` lists its failures).",
            show_default=False,
        ),
    ] = None,
    trace_id: Annotated[
        str | None,
        typer.Option(
            help="Only the lines of this trace (32 hex digits, as `shopctl trace` shows).",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only lines from this time on: how long ago (90s, 15m, 2h, 1d) or a date "
            "and time (2026-12-06T09:30, or 09:30 for today; local time).",
            show_default=False,
        ),
    ] = None,
    tail: Annotated[
        int | None,
        typer.Option(
            "--tail",
            "-n",
            help=f"Only the last N lines (default: all; with --follow, {FOLLOW_TAIL}).",
            min=0,
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the lines as the services wrote them (JSON), for jq or a file."
        ),
    ] = False,
) -> None:
    """Show the services' logs merged in time order, one line each.

    Each line shows the time (local), the service (and worker, when it runs several), the
    level and the message, then the line's other fields and its request id. Lines come
    from the shop `shopctl up` runs, which writes one file per service in its data
    directory (logs/; the embedded databases' own logs are beside them).

    Examples:

    * `shopctl logs -f` (follow the whole shop)
    * `shopctl logs --request-id qa-437a6e49-000031` (one request across every service)
    * `shopctl logs --service order --level warning --since 1h`
    * `shopctl logs --json --since 10m | jq .msg`
    """
    consoles = get_consoles(ctx)
    with failures_reported(consoles):
        directory = stack.logs_dir(data_dir)
        if not service_log_files(directory):
            raise ShopctlError(
                f"no service logs in {directory}: a shop started with `shopctl up` writes "
                "them there (check --data-dir)"
            )
        wanted = _line_filter(services, level, request_id, trace_id, since)
        show = _json_printer() if as_json else _line_printer(consoles.out, request_id is None)
        follower = Follower(directory, wanted, FOLLOW_HOLD)
        lines: Iterable[LogLine] = follower.catch_up()
        if tail is not None or follow:
            lines = collections.deque(lines, maxlen=FOLLOW_TAIL if tail is None else tail)
        try:
            shown = _show_all(lines, show)
            if follow:
                _follow(follower, show)
            elif not shown:
                consoles.err.print("No log lines match.")
        except BrokenPipeError:  # the reader (head, less) has gone: nothing more to do
            sys.stderr.close()


def _line_filter(
    services: list[ServiceName] | None,
    level: Level,
    request_id: str | None,
    trace_id: str | None,
    since: str | None,
) -> LineFilter:
    if trace_id is not None:
        trace_id = trace_id.strip().lower()
        if len(trace_id) != 32 or not all(c in "0123456789abcdef" for c in trace_id):
            raise typer.BadParameter(
                f"{trace_id!r} is not a trace id (32 hex digits)", param_hint="--trace-id"
            )
    start = None
    if since is not None:
        try:
            start = parse_since(since, datetime.now(UTC))
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--since") from None
    return LineFilter(
        services=frozenset(str(service) for service in services or ()),
        min_level=level.value,
        request_id=request_id.strip() if request_id is not None else None,
        trace_id=trace_id,
        since=start,
    )


def _show_all(lines: Iterable[LogLine], show: Any) -> int:
    count = 0
    for line in lines:
        show(line)
        count += 1
    sys.stdout.flush()  # the lines so far, at once (when following, each poll's)
    return count


def _follow(follower: Follower, show: Any) -> None:
    """Show new lines until Ctrl-C or SIGTERM, then the ones still held back."""
    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while not stopped.wait(POLL_INTERVAL):
            _show_all(follower.poll(datetime.now(UTC)), show)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    _show_all(follower.poll(datetime.now(UTC), final=True), show)


def _json_printer() -> Any:
    def show(line: LogLine) -> None:
        sys.stdout.write(line.as_json() + "\n")

    return show


Pieces = list[tuple[str, str]]  # a line's parts, each with its Rich style ("" for none)


def _line_printer(console: Console, with_request_id: bool) -> Any:
    paint = Painter(console)
    day: list[date] = []

    def show(line: LogLine) -> None:
        try:
            local = line.when.astimezone()
        except OverflowError:  # a line dated at the end of the calendar: shown as written
            local = line.when
        if not day or local.date() != day[0]:
            day[:] = [local.date()]
            paint.write([(local.strftime("── %Y-%m-%d (%Z)"), "dim")])
        for pieces in render(line, local, with_request_id):
            paint.write(pieces)

    return show


class Painter:
    """Writes lines in the console's colours (none when it is not a terminal, or NO_COLOR
    is set) without Rich's layout work for each, which made a long log take a minute:
    each style's escape codes are made once. Control characters in what the services
    logged (a stranger's request path may hold ESC or BEL) are shown escaped, never sent to
    the terminal."""

    def __init__(self, console: Console) -> None:
        self.file = console.file
        self.colours = None if console.no_color else COLOR_SYSTEMS.get(console.color_system or "")
        self._codes: dict[str, tuple[str, str]] = {}

    def write(self, pieces: Pieces) -> None:
        self.file.write("".join(self._paint(text, style) for text, style in pieces) + "\n")

    def _paint(self, text: str, style: str) -> str:
        text = visible(text)
        if not style or self.colours is None:
            return text
        codes = self._codes.get(style)
        if codes is None:
            start, _, end = (
                Style.parse(style).render("\0", color_system=self.colours).partition("\0")
            )
            codes = self._codes[style] = (start, end)
        return f"{codes[0]}{text}{codes[1]}"


def render(line: LogLine, local: datetime, with_request_id: bool = True) -> Iterator[Pieces]:
    """One log line as the person at the terminal reads it (and, under it, the traceback
    it carries): time, service, level, message, its other fields, its request id."""
    stamp = (
        f"{local.hour:02d}:{local.minute:02d}:{local.second:02d}.{local.microsecond // 1000:03d} "
    )
    label = line.source
    worker = line.field("worker")
    if isinstance(worker, int) and worker > 0:
        label += f"/{worker}"
    level_style = LEVEL_STYLES.get(line.level, "")
    message = line.raw if line.record is None else str(line.field("msg") or "")
    pieces = [
        (stamp, "dim"),
        (label.ljust(LABEL_WIDTH), service_style(line.source)),
        (f" {LEVEL_LABELS.get(line.level, line.level.upper()):<5} ", level_style),
        (message, level_style if line.level != "info" else ""),
    ]
    status = line.field("status")
    if isinstance(status, int) and status >= 400 and message.endswith(f" {status}"):
        # An access line: its status in the colour `shopctl trace` gives it.
        pieces[-1:] = [
            (message[: -len(str(status))], pieces[-1][1]),
            (str(status), "bold red" if status >= 500 else "yellow"),
        ]
    for key, value in _other_fields(line.record):
        pieces += [(f" {key}=", "dim"), (value, "")]
    request_id = line.field("request_id")
    if with_request_id and isinstance(request_id, str) and request_id != "-":
        pieces.append((f"  {request_id}", "dim"))
    yield pieces
    exc = line.field("exc")
    if isinstance(exc, str):
        for exc_line in exc.splitlines():
            yield [(f"    {exc_line}", "red")]


def _other_fields(record: dict[str, Any] | None) -> Iterator[tuple[str, str]]:
    for key, value in (record or {}).items():
        if key in _SHOWN_ELSEWHERE:
            continue
        yield key, value if isinstance(value, str) else orjson.dumps(value).decode()
