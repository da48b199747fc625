"""`shopctl down`: stop what `shopctl up` started."""

from __future__ import annotations

import typer

from shopctl import stack
from shopctl.console import failures_reported, get_consoles
from shopctl.options import DataDir


def down(ctx: typer.Context, data_dir: DataDir) -> None:
    """Stop what `shopctl up` started; the data stays.

    Stops, by PID, exactly the services and embedded servers listed in the data directory's
    state.json: the services first, then the servers.

    Examples:

    * `shopctl down`
    * `shopctl down --data-dir /tmp/shop2`
    """
    consoles = get_consoles(ctx)
    with failures_reported(consoles):
        if not stack.stop_running(data_dir, consoles.say):
            consoles.say(f"Nothing is running from {data_dir}.")
            return
    consoles.say(f"Stopped; the data stays in {data_dir}")
