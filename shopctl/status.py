"""`shopctl status`: how each service is doing."""

from __future__ import annotations

import typer

from shopctl import probes, views
from shopctl.console import Consoles, failures_reported, get_consoles
from shopctl.environments import resolve_environment, start_command
from shopctl.errors import ShopctlError
from shopctl.options import DataDir, EnvName, TargetUrl
from shopctl.state import load_state


def status(
    ctx: typer.Context,
    data_dir: DataDir,
    env: EnvName = None,
    url: TargetUrl = None,
) -> None:
    """Show each service's health, readiness, PID and uptime.

    For the local shop it probes every service's own /ready; for another environment (or
    --url) it shows what the gateway's /ready reports about each backend (the gateway stays
    ready when a backend is down). Exits 1 unless the gateway and every backend are ready.

    Examples:

    * `shopctl status`
    * `shopctl status --env staging`
    * `shopctl status --url http://127.0.0.1:3000`
    """
    consoles = get_consoles(ctx)
    with failures_reported(consoles):
        target = resolve_environment(env, url, data_dir)
        if target.is_local and url is None:
            ready = _local_status(data_dir, consoles)
        else:
            ready = _gateway_status(target.url, consoles, target.when_down)
    if not ready:
        raise typer.Exit(1)


def _local_status(data_dir, consoles: Consoles) -> bool:
    state = load_state(data_dir)
    if state is None:
        consoles.say(
            f"Nothing is running from {data_dir}: start it with {start_command(data_dir)}."
        )
        return False
    checks = probes.check_services(state.services)
    consoles.out.print(views.health_table(checks))
    if state.embedded:
        consoles.out.print(views.backends_table(state.embedded))
    servers_up = all(server.alive() for server in state.embedded)
    return servers_up and all(check.is_ready for check in checks)


def _gateway_status(url: str, consoles: Consoles, when_down: str) -> bool:
    url = url.rstrip("/")
    answer = probes.get(f"{url}/ready")
    if answer.status is None:
        then = f"; {when_down}" if when_down else ""
        raise ShopctlError(f"the gateway at {url} does not answer ({answer.error}){then}")
    consoles.out.print(views.gateway_table(url, answer))
    return answer.ok and not probes.backends_not_ready(answer.body)
