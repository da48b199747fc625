"""Options several commands share, declared once."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import platformdirs
import typer

from shopctl.console import OutputFormat
from shopctl.services import SERVICES


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("shop", appauthor=False))


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        help="Where the shop keeps its databases, logs, secrets and state.json.",
        envvar="SHOP_DATA_DIR",
        default_factory=default_data_dir,
        show_default=str(default_data_dir()),
        file_okay=False,
        resolve_path=True,
    ),
]

BasePort = Annotated[
    int,
    typer.Option(
        "--base-port",
        help="Port of the gateway; the other services use the next ones (product +1, "
        "user +2, order +3, cart +4).",
        envvar="SHOP_BASE_PORT",
        min=1,
        max=65535 - max(service.port_offset for service in SERVICES),
    ),
]

EnvName = Annotated[
    str | None,
    typer.Option(
        "--env",
        "-e",
        help="The environment to target, by name from shopctl.toml (see `shopctl env list`); "
        "default: local, the shop `shopctl up` runs. Example: --env dev",
        envvar="SHOP_ENV",
        show_default=False,
    ),
]

TargetUrl = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="A gateway's URL to target instead of a named environment (or to override its "
        "URL). Example: --url http://127.0.0.1:3000",
        envvar="SHOP_URL",
        show_default=False,
    ),
]

Output = Annotated[
    OutputFormat,
    typer.Option(
        "--output",
        "-o",
        help="How to print the result: a table for people, json or yaml for programs "
        "(stdout then holds the document alone). Example: -o json",
        case_sensitive=False,
    ),
]
