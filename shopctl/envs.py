"""`shopctl env list` / `env show`: the environments commands can target."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shopctl.console import failures_reported, get_consoles
from shopctl.environments import (
    Environment,
    config_files,
    load_environments,
    resolve_environment,
    user_config,
)
from shopctl.options import DataDir

env_app = typer.Typer(
    name="env",
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


def _deploys_to(environment: Environment) -> str:
    if environment.kube_context is None:
        return "-"
    return f"{environment.kube_context}/{environment.namespace} ({environment.overlay})"


@env_app.command("list")
def list_environments(ctx: typer.Context, data_dir: DataDir) -> None:
    """List every environment: `local` (built in) and those in shopctl.toml files.

    Example: `shopctl env list`
    """
    consoles = get_consoles(ctx)
    with failures_reported(consoles):
        environments = load_environments(data_dir)
        files = config_files(Path.cwd(), os.environ)
    table = Table(title="Environments", title_justify="left")
    for column in ("name", "URL", "deploys to", "defined in"):
        table.add_column(column, overflow="fold")
    for environment in environments.values():
        table.add_row(
            environment.name,
            environment.url,
            _deploys_to(environment),
            _where(environment.source),
        )
    consoles.out.print(table)
    read = ", ".join(_where(str(path)) for path in files) or "none"
    consoles.say(f"Files read: {read} (yours: {_where(str(user_config(os.environ)))})")


def _variable(name: str) -> str:
    return f"${name} ({'set' if os.environ.get(name) else 'not set'})"


@env_app.command("show")
def show_environment(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The environment's name. Example: staging")],
    data_dir: DataDir,
) -> None:
    """Show everything one environment sets, and which credentials are available now.

    Example: `shopctl env show local`
    """
    consoles = get_consoles(ctx)
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
    consoles.out.print(table)
