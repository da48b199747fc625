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
    LOCAL_CONFIG_NAME,
    CredentialSource,
    Environment,
    config_files,
    credential_sources,
    load_environments,
    project_config,
    resolve_environment,
    start_command,
    user_config,
)
from shopctl.options import DataDir, Output

env_app = typer.Typer(
    name="env",
    cls=ShopctlGroup,
    help="""List and show the environments commands can target with --env.

    `local` is built in: the shop `shopctl up` runs. The others come from three files, each
    overriding the ones before it key by key: the project's `shopctl.toml` (committed: the
    team's defaults), your own (`$SHOP_CONFIG`, else ~/.config/shop/shopctl.toml: what is
    yours, such as your kube context's name), then `shopctl.local.toml` beside the
    project's (git ignores it: yours, for this checkout only). A personal file overrides the
    committed one, as git's global config overrides its system config: the project-level
    files git and clig.dev put first are not committed.
    """,
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
    project = project_config(Path.cwd())
    checkout_file = _where(str(project.with_name(LOCAL_CONFIG_NAME))) if project else None
    document = {
        "environments": records,
        "files_read": read,
        "user_file": yours,
        "checkout_file": checkout_file,
    }
    consoles.print_result(output, document, table)
    checkout = f"; this checkout's: {checkout_file}" if checkout_file else ""
    consoles.say(
        f"Files read, each overriding the one before: {', '.join(read) or 'none'} "
        f"(yours: {yours}{checkout})"
    )


def _source(source: CredentialSource) -> str:
    """`$NAME (set)`, `$NAME (not set)`, `<file> (there)` or `<file> (not there)`."""
    if source.where.startswith("$"):
        return f"{source.where} ({'set' if source.value else 'not set'})"
    return f"{_where(source.where)} ({'there' if source.value else 'not there'})"


def _credential_rows(environment: Environment, data_dir: Path) -> list[tuple[str, str]]:
    """Each place an admin credential may come from, in the order they are tried, and the
    one a command would use now (never a value)."""
    sources = credential_sources(environment, data_dir)
    tokens = [source for source in sources if source.kind == "token"]
    passwords = [source for source in sources if source.kind == "password"]
    used = next((source for source in sources if source.value), None)
    if used is None:
        uses = "nothing yet: set one of the above" + (
            f", or start the shop with {start_command(data_dir)}" if environment.is_local else ""
        )
    else:
        uses = f"{'token' if used.kind == 'token' else 'password'} from {_where(used.where)}"
    return [
        ("admin email", (used or sources[-1]).email),
        ("admin token", ", ".join(_source(source) for source in tokens)),
        ("admin password", ", then ".join(_source(source) for source in passwords)),
        ("admin login uses", uses),
    ]


@env_app.command("show", cls=ShopctlCommand)
def show_environment(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="The environment's name. Example: dev", metavar="NAME")
    ],
    data_dir: DataDir,
    output: Output = OutputFormat.TABLE,
) -> None:
    """Show everything one environment sets, and where its admin credentials come from.

    The places an admin token or password may come from are listed in the order commands
    try them (for `local`, last, the password `shopctl up` keeps in its data directory),
    with the one they would use now; values are never shown.

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
        *_credential_rows(environment, data_dir),
        ("kube context", environment.kube_context or "-"),
        ("namespace", environment.namespace),
        ("overlay", environment.overlay or "-"),
        ("registry", environment.registry or "-"),
        ("defined in", _where(environment.source)),
    ]
    if environment.is_local:
        rows.insert(2, ("data dir", str(data_dir)))
    for key, value in rows:
        table.add_row(key, value)
    consoles.print_result(output, {"name": environment.name, **_record(rows)}, table)
