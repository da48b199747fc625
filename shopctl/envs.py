"""`shopctl env list` / `env show`: the environments commands can target."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shopctl.commands import ShopctlCommand, ShopctlGroup
from shopctl.console import OutputFormat, failures_reported, get_consoles
from shopctl.environments import (
    Environment,
    config_files,
    load_environments,
    resolve_environment,
    user_config,
)
from shopctl.options import DataDir, Output

env_app = typer.Typer(
    name="env",
    cls=ShopctlGroup,
    help="List and show the environments commands can target with --env.",
    no_args_is_help=True,
)


def _where(source: str) -> str:
    """A file as a user would type it: relative to here when below it."""
    path = Path(source)
    if not path.is_absolute():
        return source
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path).replace(str(Path.home()), "~", 1)


def _record(pairs: Iterable[tuple[str, str]]) -> dict[str, str | None]:
    """A table's row for -o json/yaml: its column names in snake_case, "-" as null."""
    return {key.lower().replace(" ", "_"): None if value == "-" else value for key, value in pairs}


def _deploys_to(environment: Environment) -> str:
    if environment.kube_context is None:
        return "-"
    return f"{environment.kube_context}/{environment.namespace} ({environment.overlay})"


@env_app.command("list", cls=ShopctlCommand)
def list_environments(
    ctx: typer.Context, data_dir: DataDir, output: Output = OutputFormat.TABLE
) -> None:
    """List every environment: `local` (built in) and those in shopctl.toml files.

    Examples:

    * `shopctl env list`
    * `shopctl env list -o json`
    """
    consoles = get_consoles(ctx).with_output(output)
    with failures_reported(consoles):
        environments = load_environments(data_dir)
        files = config_files(Path.cwd(), os.environ)
    columns = ("name", "URL", "deploys to", "defined in")
    table = Table(title="Environments", title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    records = []
    for environment in environments.values():
        row = (
            environment.name,
            environment.url,
            _deploys_to(environment),
            _where(environment.source),
        )
        table.add_row(*row)
        records.append(_record(zip(columns, row, strict=True)))
    read = [_where(str(path)) for path in files]
    yours = _where(str(user_config(os.environ)))
    document = {"environments": records, "files_read": read, "user_file": yours}
    consoles.print_result(output, document, table)
    consoles.say(f"Files read: {', '.join(read) or 'none'} (yours: {yours})")


def _variable(name: str) -> str:
    return f"${name} ({'set' if os.environ.get(name) else 'not set'})"


@env_app.command("show", cls=ShopctlCommand)
def show_environment(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="The environment's name. Example: dev", metavar="NAME")
    ],
    data_dir: DataDir,
    output: Output = OutputFormat.TABLE,
) -> None:
    """Show everything one environment sets, and which credentials are available now.

    Examples:

    * `shopctl env show local`
    * `shopctl env show dev -o yaml`
    """
    consoles = get_consoles(ctx).with_output(output)
    with failures_reported(consoles):
        environment = resolve_environment(name, None, data_dir)
    table = Table(title=f"Environment {environment.name}", title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    rows = [
        ("description", environment.description or "-"),
        ("URL", environment.url),
        ("admin email", environment.admin_email),
        ("admin token", _variable(environment.admin_token_env)),
        ("admin password", _variable(environment.admin_password_env)),
        ("kube context", environment.kube_context or "-"),
        ("namespace", environment.namespace),
        ("overlay", environment.overlay),
        ("registry", environment.registry or "-"),
        ("defined in", _where(environment.source)),
    ]
    if environment.is_local:
        rows.insert(5, ("data dir", str(data_dir)))
    for key, value in rows:
        table.add_row(key, value)
    consoles.print_result(output, {"name": environment.name, **_record(rows)}, table)
