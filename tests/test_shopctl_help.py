"""Every `--help` screen of shopctl at 80 columns: nothing cut, the help column wide enough,
no type shown for a flag, and every example in a help text a command line that parses and
names environments that exist. The command tree is walked, so a new command is covered."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperArgument, TyperGroup, TyperOption
from typer.testing import CliRunner

from shopctl.commands import ShopctlCommand, ShopctlGroup
from shopctl.environments import load_environments
from shopctl.main import app

REPO = Path(__file__).resolve().parent.parent
WIDTH = 80
HELP_COLUMN_MIN = 40
ROOT = typer.main.get_command(app)


def command_tree(
    command: Any = ROOT, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command and group with the words that name it (`()` is shopctl itself)."""
    yield path, command
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            yield from command_tree(sub, (*path, name))


COMMANDS = dict(command_tree())
IDS = [" ".join(path) or "shopctl" for path in COMMANDS]


def rendered_help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(WIDTH)})
    assert result.exit_code == 0, result.output
    return result.output


def words(text: str) -> set[str]:
    """The words of `text`, without the panels' borders and Markdown's backticks."""
    return set(text.replace("`", "").replace("│", " ").split())


def help_records(command: Any) -> list[str]:
    """What each parameter's help says (names, help, env var, default), unwrapped; an
    argument by its name in capitals."""
    context = typer.Context(command, info_name="shopctl")
    records = []
    for param in command.get_params(context):
        record = param.get_help_record(context)
        if record is None:
            continue
        names, help_text = record
        if isinstance(param, TyperArgument):
            names = (param.metavar or param.name).upper() + ("..." if param.nargs != 1 else "")
        records.append(f"{names} {help_text}")
    return records


@pytest.mark.parametrize("path", COMMANDS, ids=IDS)
def test_every_help_screen_is_whole_at_80_columns(path: tuple[str, ...]) -> None:
    command = COMMANDS[path]
    assert isinstance(command, ShopctlCommand | ShopctlGroup), (
        f"register {' '.join(path)} with cls=ShopctlCommand (or a group with ShopctlGroup)"
    )
    output = rendered_help(path)
    lines = output.splitlines()
    assert max(len(line) for line in lines) <= WIDTH, output
    assert "…" not in output, output
    assert "<bool>" not in output, output  # a flag takes no value
    assert "{" not in output.splitlines()[1], output  # the usage line: NAME, not {name}
    shown = words(output)
    for record in help_records(command):
        for word in words(record):
            assert word in shown, f"{word!r} is cut or missing in:\n{output}"
    # An option's help starts at the same column on every row: at most here, so that the
    # help column keeps HELP_COLUMN_MIN of the 80 (a border and a space on each side).
    starts = [
        match.start(2)
        for line in lines
        if (match := re.match(r"^│ (-\S.*?|[A-Z]+\S*) {2,}([^\s│])", line))
    ]
    assert starts, output
    assert max(starts) <= WIDTH - 2 - HELP_COLUMN_MIN, output


def test_a_flag_shows_no_type_and_a_value_option_its_type() -> None:
    output = rendered_help(("seed",))
    assert re.search(r"│ --dry-run {2,}Show what would change", output), output
    assert re.search(r"│ -y, --yes {2,}Do not ask", output), output
    assert re.search(r"│ --concurrency <int range> {2,}Calls in flight", output), output
    assert "--customers / --no-customers" in output


def test_a_name_too_long_for_its_column_gets_a_line_of_its_own() -> None:
    output = rendered_help(("build",))
    line = next(line for line in output.splitlines() if line.startswith("│ --tool"))
    assert line.rstrip(" │").endswith("<docker|podman|nerdctl|buildah>"), output


def test_a_bad_choice_is_named_without_pydantic_words() -> None:
    result = CliRunner().invoke(app, ["checkout", "--scenario", "nope"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--scenario' / '-s': 'nope' is not one of" in result.output
    assert "Value error" not in result.output


# -- the examples in the help texts --------------------------------------------------------


def command_line(text: str) -> list[str]:
    """The words of a command line, up to a pipe."""
    return shlex.split(text.split(" | ")[0])


def examples() -> Iterator[tuple[str, list[str]]]:
    """(where, words) for every `shopctl ...` in a help text, and every option's or
    argument's `Example: ...` (added to its command's first example, which has any
    arguments the command needs)."""
    for path, command in COMMANDS.items():
        where = " ".join(("shopctl", *path))
        found_here = [
            command_line(found)[1:]
            for found in re.findall(r"`(shopctl [^`]*)`", command.help or "")
        ]
        for found in found_here:
            yield f"{where}: shopctl {shlex.join(found)}", found
        own = [found for found in found_here if found[: len(path)] == list(path)]
        for param in command.params:
            for found in re.findall(r"Example: (.+)$", param.help or ""):
                if isinstance(param, TyperOption):
                    start = own[0] if own else list(path)
                else:  # the argument's value: the command's words, then the value
                    start = list(path)
                yield f"{where} {param.name}: {found}", [*start, *command_line(found)]


EXAMPLES = dict(examples())
KNOWN_ENVIRONMENTS = load_environments(REPO / "no-data-dir", cwd=REPO, environ={})


def parse(args: list[str]) -> typer.Context:
    """`args` parsed as shopctl would, down to the command they name (callbacks run, so a
    value a command refuses fails here too); nothing is invoked."""
    command, context, name = ROOT, None, "shopctl"
    while isinstance(command, TyperGroup):
        while args and args[0] in {"-v", "--verbose", "-q", "--quiet"}:
            args = args[1:]
        if command.invoke_without_command and (not args or args[0] not in command.commands):
            # A group that does something itself (`shopctl mail` lists): its own options.
            return command.make_context(name, args, parent=context)
        name, *args = args
        assert name in command.commands, f"no command {name!r}"
        context = typer.Context(command, info_name=name, parent=context)
        command = command.commands[name]
    return command.make_context(name, args, parent=context)


def test_every_command_has_an_example() -> None:
    for path, command in COMMANDS.items():
        if not isinstance(command, TyperGroup):
            own = " ".join(("shopctl", *path))
            assert any(where.startswith(f"{own}: {own}") for where in EXAMPLES), own


@pytest.mark.parametrize("where", EXAMPLES)
def test_every_example_parses_and_names_a_real_environment(where: str) -> None:
    context = parse(list(EXAMPLES[where]))
    environment = context.params.get("env")
    if context.command.name == "show" and "name" in context.params:  # env show NAME
        environment = context.params["name"]
    # A word in capitals is a placeholder: `shopctl env show NAME`.
    if environment is not None and not environment.isupper():
        assert environment in KNOWN_ENVIRONMENTS, (
            f"{where}: no environment {environment!r} in shopctl.toml "
            f"(known: {', '.join(KNOWN_ENVIRONMENTS)})"
        )


def test_an_argument_is_named_in_capitals_in_the_usage_line() -> None:
    output = rendered_help(("env", "show"))
    assert "Usage: shopctl env show [OPTIONS] NAME" in output
    arguments = [p for p in COMMANDS[("env", "show")].params if isinstance(p, TyperArgument)]
    assert [p.name for p in arguments] == ["name"]
