"""The consoles commands print on, and the one way an expected failure ends a command."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import typer
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


@dataclass(frozen=True)
class Consoles:
    out: Console
    err: Console

    @classmethod
    def create(cls) -> Consoles:
        return cls(Console(highlight=False), Console(stderr=True, highlight=False))

    def list_failures(self, lines: Sequence[str], total: int, marker: str) -> None:
        """The first FAILURES_SHOWN of `lines` on stderr after `marker` (markup), then how
        many more there were of `total` (which may count some not kept in `lines`)."""
        shown = lines[:FAILURES_SHOWN]
        for line in shown:
            self.err.print(f"{marker} {escape(line)}", soft_wrap=True)
        if total > len(shown):
            self.err.print(f"... and {total - len(shown)} more failures", soft_wrap=True)

    def say(self, message: str) -> None:
        """Print a plain line (no markup: messages hold paths, URLs and log text), wrapped
        to the terminal's width."""
        self.out.print(message, markup=False)


def visible(text: str) -> str:
    """``text`` with its control characters written out, fit to print on a terminal."""
    return text if text.isprintable() else text.translate(VISIBLE_CONTROLS)


def service_style(service: str) -> str:
    """The colour `service` is shown in (a variant, cart-2-workers, in its service's)."""
    return SERVICE_STYLES.get(service.split("-", 1)[0], "white")


def get_consoles(ctx: typer.Context) -> Consoles:
    """The consoles the app callback put in `ctx.obj`."""
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


def progress_bar(console: Console) -> Progress:
    """The progress display long commands share: what, a bar, done/total, time so far."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
