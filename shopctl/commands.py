"""The classes every shopctl command and group is made with: help laid out to stay whole at
80 columns, a usage line in click's words, and value errors without pydantic's prefix.

Typer's own Rich help puts option names, secondary names, short names, a type and the help
in six columns that share the width: at 80 columns the help got 18 of them and option
names, environment variables and defaults were cut with "…". Here each option is one name
cell (`-e, --env <str>`) and one help cell that takes the rest of the line; a name too long
for its column gets a line of its own, with its help below, as click's plain help does.
Typer 0.29's Rich help also shows a flag's type (`<bool>`) as if it took a value (its plain
help does not), and writes a required argument as `{name}` in the usage line; click's
`get_help_record`, used here, shows no type for a flag, and the usage says NAME.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import typer
from rich.console import Console, Group, RenderableType
from rich.markdown import Markdown
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

NAMES_WIDTH = 30  # the widest the option names column gets; longer names get their own line
HELP_MIN_WIDTH = 40  # what the help column keeps at least, whatever the names
# Typer passes a pydantic ValueError's message on with pydantic's prefix.
_PYDANTIC_PREFIX = re.compile(r"^(Value error|Assertion failed), ")


def _inline(text: str, style: str = "") -> Text:
    """One line of help: `code` spans (Markdown's backticks) in bold, the rest plain."""
    shown = Text(style=style)
    for index, part in enumerate(text.split("`")):
        shown.append(part, style="bold" if index % 2 else "")
    return shown


def _help_cell(help_text: str) -> Text:
    """An option's help, then click's `[env var: ...; default: ...]` dimmed."""
    help_text, gap, extra = help_text.rpartition("  [")
    if not gap or not extra.endswith("]"):
        help_text, extra = help_text + gap + extra, ""
    cell = _inline(" ".join(help_text.split()))
    if extra:
        cell.append(("  " if help_text else "") + "[" + extra, style="dim")
    return cell


def _names_cell(names: str) -> Text:
    cell = Text(names)
    cell.highlight_regex(r"(?<![\w<])--?[\w-]+", "bold cyan")
    cell.highlight_regex(r"<[^>]*>|\[[^\]]*\]", "yellow")
    return cell


def _argument_name(param: TyperArgument) -> str:
    name = (param.metavar or param.name or "").upper()
    return name + ("..." if param.nargs != 1 else "")


def _rows(
    command: TyperCommand | TyperGroup, ctx: typer.Context, kind: type
) -> list[tuple[str, str]]:
    rows = []
    for param in command.get_params(ctx):
        if not isinstance(param, kind) or getattr(param, "hidden", False):
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        if isinstance(param, TyperArgument):
            names = _argument_name(param)
        rows.append((names, help_text))
    return rows


def _panel(title: str, rows: list[tuple[str, str]], width: int) -> Panel:
    """Names and help in two columns; a name wider than its column on a line of its own."""
    inner = width - 4  # the panel's borders and padding
    longest = max(len(names) for names, _ in rows)
    names_width = max(8, min(longest, NAMES_WIDTH, inner - HELP_MIN_WIDTH - 2))
    parts: list[RenderableType] = []
    grid: Table | None = None
    for names, help_text in rows:
        if len(names) > names_width:
            parts.append(_names_cell(names))
            names = ""
            grid = None
        if grid is None:
            grid = Table.grid(padding=(0, 2))
            grid.add_column(width=names_width, no_wrap=True)
            grid.add_column(ratio=1)
            parts.append(grid)
        grid.add_row(_names_cell(names), _help_cell(help_text))
    return Panel(Group(*parts), title=title, title_align="left", border_style="dim")


def _commands_panel(group: TyperGroup, ctx: typer.Context) -> Panel | None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True, style="bold cyan")
    grid.add_column(ratio=1)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        first_paragraph = inspect.cleandoc(command.help or "").split("\n\n")[0]
        grid.add_row(name, _inline(" ".join(first_paragraph.split())))
    if not grid.rows:
        return None
    return Panel(grid, title="Commands", title_align="left", border_style="dim")


def render_help(command: TyperCommand | TyperGroup, ctx: typer.Context) -> None:
    """The whole help screen of `command`, to the terminal's width."""
    console = Console(highlight=False)
    console.print(Padding(_names_cell(command.get_usage(ctx)), (1, 1, 1, 1)))
    if command.help:
        text = inspect.cleandoc(command.help).split("\f")[0]
        console.print(Padding(Markdown(text), (0, 1, 1, 1)))
    for title, kind in (("Arguments", TyperArgument), ("Options", TyperOption)):
        rows = _rows(command, ctx, kind)
        if rows:
            console.print(_panel(title, rows, console.width))
    if isinstance(command, TyperGroup):
        panel = _commands_panel(command, ctx)
        if panel is not None:
            console.print(panel)


def _clean_value_errors(error: typer.BadParameter) -> typer.BadParameter:
    error.message = _PYDANTIC_PREFIX.sub("", error.message)
    return error


class ShopctlCommand(TyperCommand):
    """A shopctl command: its help from `render_help`, NAME for an argument in its usage."""

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        render_help(self, ctx)

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = _argument_name(param)
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except typer.BadParameter as error:
            raise _clean_value_errors(error) from error.__cause__


class ShopctlGroup(TyperGroup):
    """A shopctl group (`shopctl`, `shopctl env`): its help from `render_help`."""

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        render_help(self, ctx)

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except typer.BadParameter as error:
            raise _clean_value_errors(error) from error.__cause__
