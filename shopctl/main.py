"""The `shopctl` command: one Typer app, one module per command."""

from __future__ import annotations

import typer

from shopctl.build import build
from shopctl.checkout import checkout
from shopctl.console import Consoles
from shopctl.deploy import deploy
from shopctl.down import down
from shopctl.envs import env_app
from shopctl.logs import logs
from shopctl.seed import seed
from shopctl.status import status
from shopctl.trace import trace
from shopctl.up import up

app = typer.Typer(
    name="shopctl",
    help="Run, check and operate the shop.",
    no_args_is_help=True,
    add_completion=False,
    # Markdown: docstring paragraphs are re-flowed to the terminal's width.
    rich_markup_mode="markdown",
)


@app.callback()
def main(ctx: typer.Context) -> None:
    """Run, check and operate the shop."""
    ctx.obj = Consoles.create()


# Each command lives in its own module; a new one is one import and one line here.
app.command()(up)
app.command()(down)
app.command()(status)
app.command()(seed)
app.command()(checkout)
app.command()(trace)
app.command()(logs)
app.add_typer(env_app)
app.command()(build)
app.command()(deploy)
