"""Faults for `shopctl checkout --chaos`: a schedule made from the run's seed, and the
injector that kills (SIGKILL), pauses (SIGSTOP/SIGCONT) and restarts the processes of a shop
`shopctl up` started, one fault at a time, each followed by waiting until the shop is ready.

Only processes listed in the data directory's state.json are touched (services and the
embedded servers `up` started; a database given by URL is left alone). A killed or stopped
process is started again as `up` started it: a service with its own command and environment
(read from the running process, since state.json keeps no secrets), an embedded server on
its own port over its own data, so the services reconnect. Every respawn is written back to
state.json at once, so `shopctl down` still stops everything.

Faults are bounded: one at a time, a pause or a downtime of at most MAX_HOLD seconds, and the
injector never leaves a fault half done: asked to stop (Ctrl-C), it cuts the hold short,
resumes or restarts what it faulted and waits for the shop to be ready before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psutil

from shopctl import embedded, processes
from shopctl.embedded import EmbeddedServer, EmbeddedServerError
from shopctl.errors import ShopctlError
from shopctl.probes import backends_not_ready
from shopctl.state import RunningService, ShopState, load_state

# Seconds a killed process stays down, or a paused one stopped, before it is back.
MIN_HOLD = 0.5
MAX_HOLD = 3.0
# Seconds between one fault's recovery and the next fault.
MIN_GAP = 0.5
MAX_GAP = 2.0
# Shoppers get this long to get going before the first fault.
WARM_UP = 1.5
# A shop that is not ready this long after a fault has not recovered: the run fails.
RECOVERY_DEADLINE = 60.0
# After a fault, answers that say "unavailable" are still expected for this long: clients
# (the services' pools, the gateway's connections) find out about a restart on first use.
GRACE = 3.0
READY_POLL = 0.1
PROBE_TIMEOUT = 1.0


class FaultKind(StrEnum):
    KILL = "kill"  # SIGKILL, down for the hold, then started again
    PAUSE = "pause"  # SIGSTOP for the hold, then SIGCONT
    RESTART = "restart"  # a graceful stop (SIGTERM, pg_ctl stop), then started again


@dataclass(frozen=True)
class PlannedFault:
    """One fault of the schedule: `gap` seconds after the shop recovered from the one before,
    do `kind` to `target` (a service's or an embedded server's name) for `hold` seconds."""

    gap: float
    kind: FaultKind
    target: str
    hold: float


def plan_round(
    seed: int, round_number: int, services: Sequence[str], servers: Sequence[str]
) -> list[PlannedFault]:
    """The faults of one round, from the seed alone (the same seed, the same faults, in the
    same order, with the same timings). Every round kills each service once and kills or
    restarts each embedded server once; round 0 also restarts one service gracefully; each
    round pauses one service and one server."""
    rng = random.Random(f"shopctl-chaos:{seed}:{round_number}")
    services, servers = sorted(services), sorted(servers)
    faults: list[tuple[FaultKind, str]] = [(FaultKind.KILL, name) for name in services]
    if round_number > 0:
        # Later rounds vary what happens to each service.
        faults = [(rng.choice(list(FaultKind)), name) for name in services]
    faults += [(rng.choice([FaultKind.KILL, FaultKind.RESTART]), name) for name in servers]
    if services and round_number == 0:
        faults.append((FaultKind.RESTART, rng.choice(services)))
    for group in (services, servers):
        if group:
            faults.append((FaultKind.PAUSE, rng.choice(group)))
    rng.shuffle(faults)
    return [
        PlannedFault(
            gap=round(rng.uniform(MIN_GAP, MAX_GAP), 1),
            kind=kind,
            target=target,
            hold=0.0 if kind is FaultKind.RESTART else round(rng.uniform(MIN_HOLD, MAX_HOLD), 1),
        )
        for kind, target in faults
    ]


@dataclass
class FaultRecord:
    """A fault as it happened, for the report: times in seconds since the run started."""

    at: float
    kind: FaultKind
    target: str
    hold: float
    # Seconds from the fault until the whole shop answered ready again (None: it did not).
    ready_after: float | None = None
    pid_before: int | None = None
    pid_after: int | None = None
    error: str = ""

    @property
    def ended(self) -> float:
        """When answers may stop saying "unavailable" (the end of its window)."""
        if self.ready_after is None:
            return float("inf")
        return self.at + self.ready_after + GRACE

    def to_json(self) -> dict[str, Any]:
        return {
            "at_s": round(self.at, 2),
            "kind": self.kind.value,
            "target": self.target,
            "hold_s": self.hold,
            "ready_after_s": None if self.ready_after is None else round(self.ready_after, 2),
            "pid_before": self.pid_before,
            "pid_after": self.pid_after,
            "error": self.error,
        }


class FaultLog:
    """What the shoppers ask about the faults: was one under way during a call, and when is
    the shop healthy again."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.records: list[FaultRecord] = []
        self.healthy = asyncio.Event()
        self.healthy.set()

    def now(self) -> float:
        return time.monotonic() - self.started

    def during_fault(self, began: float, ended: float) -> bool:
        """Whether a call made from `began` to `ended` (run time) overlapped a fault's window:
        from the fault until GRACE after the shop was ready again."""
        return any(record.at <= ended and began <= record.ended for record in self.records)

    async def wait_healthy(self, within: float) -> bool:
        try:
            async with asyncio.timeout(within):
                await self.healthy.wait()
        except TimeoutError:
            return False
        return True


# -- the shop's processes ---------------------------------------------------------------


@dataclass
class ServiceRecipe:
    """How to start a service again exactly as `up` did."""

    name: str
    command: list[str]
    env: dict[str, str] = field(repr=False)
    log_path: Path


def chaos_state(data_dir: Path) -> ShopState:
    """The running shop's state, if chaos can be let loose on it; else why not."""
    state = load_state(data_dir)
    if state is None or not state.anything_alive():
        raise ShopctlError(
            f"--chaos needs a shop that shopctl started on this machine, and none runs from "
            f"{data_dir}: start one with `shopctl up --detach --data-dir {data_dir}`"
        )
    if state.owner is not None and state.owner.alive():
        raise ShopctlError(
            f"the shop in {data_dir} runs under a foreground `shopctl up` (PID "
            f"{state.owner.pid}), which would not know about the processes --chaos restarts: "
            "stop it and start it with `shopctl up --detach`"
        )
    dead = [service.name for service in state.services if not service.process.alive()]
    dead += [server.name for server in state.embedded if not server.alive()]
    if dead:
        raise ShopctlError(
            f"{', '.join(dead)} not running in the shop from {data_dir}; restart it "
            f"(`shopctl down --data-dir {data_dir}` then `shopctl up --detach`) before --chaos"
        )
    return state


def service_recipes(state: ShopState) -> dict[str, ServiceRecipe]:
    """Each service's command and environment, read from its running process."""
    recipes = {}
    for service in state.services:
        try:
            env = psutil.Process(service.process.pid).environ()
        except psutil.Error as error:
            raise ShopctlError(
                f"cannot read how {service.name} (PID {service.process.pid}) was started, to "
                f"restart it: {error!r}; --chaos needs the shop's processes to be this user's"
            ) from None
        log_path = service.process.log_path or state.data_dir / "logs" / f"{service.name}.log"
        recipes[service.name] = ServiceRecipe(
            service.name, list(service.process.command), env, log_path
        )
    return recipes


def send_signal(process: processes.ManagedProcess, signum: int) -> None:
    """`signum` to the process and everything it started (its workers, PostgreSQL's
    backends): to its process group when it leads one, as `spawn` makes it."""
    if not process.alive():
        return
    with contextlib.suppress(ProcessLookupError, psutil.Error):
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signum)
            return
        tree = psutil.Process(process.pid)
        for member in [tree, *tree.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                member.send_signal(signum)


def wait_gone(process: processes.ManagedProcess, timeout: float = 10.0) -> None:
    """Until the process has ended (reaped, if it is our child)."""
    if process.popen is not None:
        with contextlib.suppress(Exception):
            process.popen.wait(timeout)
        return
    processes.wait_until(lambda: not process.alive(), timeout, interval=0.02)


def restart_server(server: EmbeddedServer) -> EmbeddedServer:
    """The embedded server started again over the same data, on the same port (or socket)."""
    log_dir = server.process.log_path.parent if server.process.log_path else None
    port = urlsplit(server.uri).port
    if server.name == "mongodb":
        return embedded.start_mongo(server.data_dir, port=port, log_dir=log_dir)
    if server.name == "redis":
        return embedded.start_redis(server.data_dir, port=port, log_dir=log_dir)
    if server.name == "smtp":
        assert server.data_dir is not None
        return embedded.start_smtp_sink(server.data_dir, port=port, log_dir=log_dir)
    assert server.data_dir is not None
    # After a SIGKILL the old backends may take a moment to notice and let go of the
    # shared memory, which a new postmaster refuses to share: try again for a while.
    deadline = time.monotonic() + 30
    while True:
        try:
            started = embedded.start_postgres(server.data_dir)
        except EmbeddedServerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        if started.uri != server.uri:
            raise EmbeddedServerError(f"postgres came back at {started.uri}, not {server.uri}")
        return started


class FaultInjector:
    """Runs the schedule against the shop in `state`, one fault at a time."""

    def __init__(self, state: ShopState, log: FaultLog, stop: asyncio.Event) -> None:
        self.state = state
        self.log = log
        self.stop = stop
        self.recipes = service_recipes(state)
        self.services: dict[str, RunningService] = {s.name: s for s in state.services}
        self.servers: dict[str, EmbeddedServer] = {s.name: s for s in state.embedded}
        self.on_fault: Callable[[FaultRecord], None] = lambda record: None

    @property
    def targets(self) -> tuple[list[str], list[str]]:
        return list(self.services), list(self.servers)

    async def run(self, seed: int, until: float | None, session: aiohttp.ClientSession) -> None:
        """Round 0, then more rounds while the run time is below `until`; stops early (the
        fault in hand finished and the shop ready) once `stop` is set."""
        await self._pause(WARM_UP)
        round_number = 0
        while not self.stop.is_set():
            for planned in plan_round(seed, round_number, *self.targets):
                await self._pause(planned.gap)
                if self.stop.is_set():
                    return
                record = await self.inject(planned, session)
                if record.ready_after is None:
                    return  # the shop did not recover: no point hurting it more
            round_number += 1
            if until is None or self.log.now() >= until:
                return

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def inject(self, planned: PlannedFault, session: aiohttp.ClientSession) -> FaultRecord:
        record = FaultRecord(self.log.now(), planned.kind, planned.target, planned.hold)
        self.log.records.append(record)
        self.log.healthy.clear()
        self.on_fault(record)
        try:
            await self._do(planned, record)
        except (EmbeddedServerError, OSError, psutil.Error) as error:
            record.error = str(error).splitlines()[0] if str(error) else repr(error)
        finally:
            # Whatever happened above, nothing stays paused.
            if planned.kind is FaultKind.PAUSE:
                self._resume(planned.target)
        if await self.wait_ready(session):
            record.ready_after = self.log.now() - record.at
            self.log.healthy.set()
        elif not record.error:
            record.error = f"not ready {RECOVERY_DEADLINE:g} s after the fault"
        return record

    async def _do(self, planned: PlannedFault, record: FaultRecord) -> None:
        name = planned.target
        process = (
            self.services[name].process if name in self.services else self.servers[name].process
        )
        record.pid_before = process.pid
        if planned.kind is FaultKind.PAUSE:
            send_signal(process, signal.SIGSTOP)
            await self._pause(planned.hold)
            return
        if planned.kind is FaultKind.KILL:
            send_signal(process, signal.SIGKILL)
            await asyncio.to_thread(wait_gone, process)
            await self._pause(planned.hold)
        else:
            await asyncio.to_thread(self._stop_gracefully, name)
        record.pid_after = await asyncio.to_thread(self._start_again, name)

    def _stop_gracefully(self, name: str) -> None:
        if name in self.services:
            processes.stop(self.services[name].process)
        else:
            self.servers[name].stop()

    def _resume(self, name: str) -> None:
        target = self.services.get(name)
        process = target.process if target else self.servers[name].process
        send_signal(process, signal.SIGCONT)

    def _start_again(self, name: str) -> int:
        """Start `name` as `up` did and record it in state.json; its new PID."""
        if name in self.services:
            recipe = self.recipes[name]
            old = self.services[name]
            process = processes.spawn(recipe.command, log_path=recipe.log_path, env=recipe.env)
            self.services[name] = RunningService(old.name, old.url, old.port, process, recipe.env)
        else:
            self.servers[name] = restart_server(self.servers[name])
            process = self.servers[name].process
        self._save()
        return process.pid

    def _save(self) -> None:
        """Write our processes into state.json, keeping whatever else it lists."""
        current = load_state(self.state.data_dir) or self.state
        current.services = [self.services.get(s.name, s) for s in current.services]
        current.embedded = [self.servers.get(s.name, s) for s in current.embedded]
        current.save()

    async def wait_ready(self, session: aiohttp.ClientSession) -> bool:
        """Poll every service's /ready (and the gateway's view of the backends) until all say
        ready, up to RECOVERY_DEADLINE."""
        deadline = time.monotonic() + RECOVERY_DEADLINE
        while True:
            if await shop_ready(session, [s.url for s in self.services.values()]):
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(READY_POLL)

    def ensure_running(self) -> list[str]:
        """Last resort, after an error: resume everything and start whatever is not running.
        The names of what had to be started."""
        started = []
        for name, service in self.services.items():
            send_signal(service.process, signal.SIGCONT)
            if not service.process.alive():
                self._start_again(name)
                started.append(name)
        for name, server in self.servers.items():
            send_signal(server.process, signal.SIGCONT)
            if not server.alive():
                self._start_again(name)
                started.append(name)
        return started


async def shop_ready(session: aiohttp.ClientSession, urls: Sequence[str]) -> bool:
    """Every service's /ready answers 200, and no gateway names a backend not ready."""

    async def ready(url: str) -> bool:
        try:
            async with session.get(f"{url}/ready") as response:
                body: Mapping[str, Any] | None = None
                with contextlib.suppress(ValueError, aiohttp.ContentTypeError):
                    body = await response.json()
                return response.status == 200 and not backends_not_ready(body)
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    answers = await asyncio.gather(*(ready(url) for url in urls))
    return all(answers)


def probe_session() -> aiohttp.ClientSession:
    """A session for readiness probes: short timeouts, no proxies from the shell."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT))
