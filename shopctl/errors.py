"""The one exception type for expected failures, and how a message names a command to run."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


class ShopctlError(Exception):
    """Something the user can act on went wrong; the command prints it and exits 1."""


def invoked_as(argv0: str | None = None) -> str:
    """shopctl as the user ran it, to name in a hint they can paste: `shopctl` when that is
    what PATH finds, else the path they typed (`.venv/bin/shopctl`, relative to here) or
    `python -m shopctl`."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    path = Path(argv0)
    if path.name == "__main__.py" and path.parent.name == "shopctl":
        return f"{_as_typed(Path(sys.executable))} -m shopctl"
    if path.name != "shopctl" or "/" not in argv0:
        return "shopctl"
    on_path = shutil.which("shopctl")
    if on_path is not None and Path(on_path).resolve() == path.resolve():
        return "shopctl"
    return _as_typed(path)


def _as_typed(path: Path) -> str:
    """`path` relative to the working directory when below it, else as given."""
    absolute = path.absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def command(arguments: str) -> str:
    """A shopctl command line to suggest, in backticks: command("up --detach")."""
    return f"`{invoked_as()} {arguments}`"
