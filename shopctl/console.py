"""The consoles commands print on, and the one way an expected failure ends a command."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import IntEnum, StrEnum
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from shopctl.errors import ShopctlError

# Each service in one colour wherever a command names it (trace waterfalls, merged logs).
SERVICE_STYLES = {
    "gateway": "magenta",
    "product": "cyan",
    "user": "blue",
    "order": "green",
    "cart": "bright_yellow",
}
# C0 (but tab), DEL and C1 control characters, shown as \x1b: what a service recorded may
# carry what a stranger sent (ESC, or a newline that would forge a line, in a request path),
# and Rich passes ESC on.
VISIBLE_CONTROLS = {
    code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0)) if code != 9
}
FAILURES_SHOWN = 10  # a command lists at most this many failures, then counts the rest


class Verbosity(IntEnum):
    """How much a command says besides its result: `shopctl -q COMMAND`, `shopctl -v COMMAND`.

    - QUIET: the result (a table, a document) and errors only: no progress bars, no
      "what I am doing" lines;
    - NORMAL: those too;
    - VERBOSE: also the details behind them (the commands `build` runs, where `seed` found
      the admin's credentials, why a service did not answer `status`).
    """

    QUIET = -1
    NORMAL = 0
    VERBOSE = 1


class OutputFormat(StrEnum):
    """How a command prints its result: a table for people, JSON or YAML for programs."""

    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


@dataclass(frozen=True)
class Consoles:
    """Where a command prints: `out` for its result, `err` for errors, and `say` / `detail`
    for what it tells a person on the way, which go to stderr when the result is a
    document for a program (stdout then holds nothing else)."""

    out: Console
    err: Console
    verbosity: Verbosity = Verbosity.NORMAL
    for_programs: bool = False

    @classmethod
    def create(cls, verbosity: Verbosity = Verbosity.NORMAL) -> Consoles:
        return cls(Console(highlight=False), Console(stderr=True, highlight=False), verbosity)

    @property
    def quiet(self) -> bool:
        return self.verbosity is Verbosity.QUIET

    @property
    def verbose(self) -> bool:
        return self.verbosity is Verbosity.VERBOSE

    @property
    def info(self) -> Console:
        """The console for what a person is told on the way."""
        return self.err if self.for_programs else self.out

    def with_output(self, output: OutputFormat) -> Consoles:
        """These consoles for a command whose result is printed as `output`."""
        return replace(self, for_programs=output is not OutputFormat.TABLE)

    def list_failures(self, lines: Sequence[str], total: int, marker: str) -> None:
        """The first FAILURES_SHOWN of `lines` on stderr after `marker` (markup), then how
        many more there were of `total` (which may count some not kept in `lines`)."""
        shown = lines[:FAILURES_SHOWN]
        for line in shown:
            self.err.print(f"{marker} {escape(line)}", soft_wrap=True)
        if total > len(shown):
            more = plural(total - len(shown), "more failure")
            self.err.print(f"... and {more}", soft_wrap=True)

    def say(self, message: str, *, markup: bool = False, **options: Any) -> None:
        """Tell a person what is going on: a line (no markup unless asked: messages hold
        paths, URLs and log text) wrapped to the terminal's width; nothing with -q."""
        if not self.quiet:
            self.info.print(message, markup=markup, **options)

    def detail(self, message: str) -> None:
        """A line only -v shows: the detail behind what `say` told."""
        if self.verbose:
            self.info.print(message, markup=False, style="dim", soft_wrap=True)

    def progress_bar(self, console: Console | None = None) -> Progress:
        """The shared progress display on `console` (default: `info`); none with -q."""
        return progress_bar(console or self.info, disable=self.quiet)

    def print_result(self, output: OutputFormat, document: Any, table: Any) -> None:
        """A command's result: `table` (a Rich renderable) for people, else `document`
        (plain data: the same content) as JSON or YAML on stdout, for programs."""
        if output is OutputFormat.TABLE:
            self.out.print(table)
        else:
            self.out.file.write(format_document(output, document))
            self.out.file.flush()


def format_document(output: OutputFormat, document: Any) -> str:
    """`document` as JSON (indented, as `kubectl -o json`) or YAML, ending in a newline."""
    if output is OutputFormat.YAML:
        return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 product`, `2 products` (`nouns` for an irregular plural)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def visible(text: str) -> str:
    """``text`` with its control characters written out, fit to print on a terminal."""
    return text if text.isprintable() else text.translate(VISIBLE_CONTROLS)


def service_style(service: str) -> str:
    """The colour `service` is shown in (a variant, cart-2-workers, in its service's)."""
    return SERVICE_STYLES.get(service.split("-", 1)[0], "white")


def get_consoles(ctx: typer.Context) -> Consoles:
    """The consoles the app callback put in `ctx.obj` (as loud as -q / -v asked)."""
    if not isinstance(ctx.obj, Consoles):
        ctx.obj = Consoles.create()
    return ctx.obj


@contextmanager
def failures_reported(consoles: Consoles) -> Iterator[None]:
    """Turn a ShopctlError into one message on stderr and exit code 1 (no traceback)."""
    try:
        yield
    except ShopctlError as error:
        consoles.err.print(f"[bold red]Error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(1) from None


def progress_bar(console: Console, *, disable: bool = False) -> Progress:
    """The progress display long commands share: what, a bar, done/total, time so far."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=disable,
    )
