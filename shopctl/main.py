"""The `shopctl` command: one Typer app, one module per command."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from shopctl.build import build
from shopctl.checkout import checkout
from shopctl.commands import ShopctlCommand, ShopctlGroup
from shopctl.console import Consoles, Verbosity
from shopctl.deploy import deploy
from shopctl.down import down
from shopctl.envs import env_app
from shopctl.logs import logs
from shopctl.mail import mail_app
from shopctl.seed import seed
from shopctl.status import status
from shopctl.trace import trace
from shopctl.up import up

DISTRIBUTION = "shop"  # the package shopctl is installed from (pyproject.toml)

app = typer.Typer(
    name="shopctl",
    cls=ShopctlGroup,
    help="Run, check and operate the shop.\n\n"
    "Global options go before the command: `shopctl -q seed`, `shopctl -v status`.",
    no_args_is_help=True,
    # --install-completion / --show-completion: shell completion as Typer gives it.
    add_completion=True,
    # Markdown: docstring paragraphs are re-flowed to the terminal's width.
    rich_markup_mode="markdown",
)


def installed_version() -> str:
    """The version of the installed package, as its metadata says."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed: run `pip install -e .`)"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"shopctl {installed_version()}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print shopctl's version and exit.",
            callback=_show_version,
            is_eager=True,
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Say more: the details behind each step."),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Say less: the result and errors only, no progress bars.",
        ),
    ] = False,
) -> None:
    """Run, check and operate the shop."""
    if verbose and quiet:
        raise typer.BadParameter("-v/--verbose and -q/--quiet contradict each other; pick one")
    verbosity = Verbosity.VERBOSE if verbose else Verbosity.QUIET if quiet else Verbosity.NORMAL
    ctx.obj = Consoles.create(verbosity)


# Each command lives in its own module; a new one is one import and one line here.
for command in (up, down, status, seed, checkout, trace, logs):
    app.command(cls=ShopctlCommand)(command)
app.add_typer(mail_app)
app.add_typer(env_app)
for command in (build, deploy):
    app.command(cls=ShopctlCommand)(command)
