"""The consoles commands print on, and the one way an expected failure ends a command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import typer
from rich.console import Console
from rich.markup import escape

from shopctl.errors import ShopctlError


@dataclass(frozen=True)
class Consoles:
    out: Console
    err: Console

    @classmethod
    def create(cls) -> Consoles:
        return cls(Console(highlight=False), Console(stderr=True, highlight=False))

    def say(self, message: str) -> None:
        """Print a plain line (no markup: messages hold paths, URLs and log text)."""
        self.out.print(message, markup=False, soft_wrap=True)


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
