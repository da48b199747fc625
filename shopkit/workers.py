"""Several processes for one service (``WORKERS`` > 1): a supervisor runs the service's own
command that many times over, as workers that each build their own app (pools, client
session, background loops) and listen on the same port with SO_REUSEPORT, so the kernel
spreads connections over them. ``shopkit.app.run`` decides which role a process has.

The supervisor serves nothing itself. It starts worker 1 alone and the others once it
serves, so a service that cannot start (a datastore that does not answer) says so once, from
one worker, and exits non-zero. Then it restarts a worker that dies, after a delay that
doubles while it keeps dying young, and on SIGTERM or SIGINT passes SIGTERM to every worker
(each shuts down gracefully, as a single process does) and exits once they have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from prometheus_client.multiprocess import mark_process_dead

from shopkit.metrics import MULTIPROCESS_DIR_VARIABLE

log = logging.getLogger("shop.workers")

T = TypeVar("T")

# Set by the supervisor, for its workers only: "<worker number>:<file descriptor of the
# worker's end of their channel>".
WORKER_VARIABLE = "SHOPKIT_WORKER"
SUPERVISOR = 0  # the `worker` of the supervisor's own log lines; workers are 1 .. N
SERVING = b"s"  # the one message on the channel: the worker listens
# A worker's own shutdown takes up to 10 s for requests in flight, then closes its pools.
STOP_GRACE = 25.0
FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
# A worker that served this long before it died is restarted after FIRST_RESTART_DELAY again.
STEADY_SECONDS = 60.0


class SupervisorError(Exception):
    """The workers cannot be started at all; the message says why, in one line."""


@dataclass(frozen=True)
class WorkerRole:
    """What the supervisor told a worker: its number and its end of their channel."""

    number: int
    channel: socket.socket

    def serving(self, *_message: object) -> None:
        """Given to ``web.run_app`` as its ``print``, which it calls once every site listens:
        tell the supervisor, then watch the channel for the supervisor's end closing."""
        self.channel.sendall(SERVING)
        asyncio.get_running_loop().add_reader(self.channel.fileno(), self._supervisor_gone)

    def _supervisor_gone(self) -> None:
        # The supervisor never writes: readable means its end closed, so it died without
        # stopping us (SIGKILL). Stop as its SIGTERM would have, rather than serve orphaned.
        asyncio.get_running_loop().remove_reader(self.channel.fileno())
        log.warning("the supervisor is gone: stopping")
        os.kill(os.getpid(), signal.SIGTERM)


def worker_role(environ: Mapping[str, str]) -> WorkerRole | None:
    """This process's role when a supervisor started it, else None."""
    value = environ.get(WORKER_VARIABLE, "")
    if not value:
        return None
    number, _, descriptor = value.partition(":")
    channel = socket.socket(fileno=int(descriptor))
    channel.set_inheritable(False)
    return WorkerRole(int(number), channel)


def supervise(service: str, host: str, port: int, workers: int, environ: Mapping[str, str]) -> int:
    """Run ``workers`` copies of this process's own command line as workers until SIGTERM
    or SIGINT; the exit code. Raises OSError when the port is taken (as a bind would)."""
    _check_port_is_free(host, port)
    command = [sys.executable, *sys.orig_argv[1:]]
    with _metrics_directory(service, environ) as metrics:
        env = {**environ, MULTIPROCESS_DIR_VARIABLE: metrics}
        log.info("starting %d workers on %s:%s", workers, host, port)
        return asyncio.run(Supervisor(command, env, workers).run())


def _check_port_is_free(host: str, port: int) -> None:
    """Bind once without SO_REUSEPORT: the workers' SO_REUSEPORT binds would otherwise
    succeed beside a forgotten process of the same user on the port and share its traffic."""
    addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)


@contextlib.contextmanager
def _metrics_directory(service: str, environ: Mapping[str, str]) -> Iterator[str]:
    """Where the workers keep their metric values: PROMETHEUS_MULTIPROC_DIR when set
    (emptied first: values of an earlier run would be counted again), else a temporary
    directory removed at the end."""
    given = environ.get(MULTIPROCESS_DIR_VARIABLE, "")
    try:
        if given:
            for leftover in Path(given).glob("*.db"):
                leftover.unlink()
            yield given
            return
        made = tempfile.mkdtemp(prefix=f"shop-{service}-metrics-")
    except OSError as exc:
        raise SupervisorError(
            f"WORKERS > 1 needs a writable directory for the workers' metrics: {exc} "
            f"(set {MULTIPROCESS_DIR_VARIABLE} to one)"
        ) from None
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


@dataclass
class Worker:
    """One running worker process, as the supervisor sees it."""

    number: int
    process: asyncio.subprocess.Process
    channel: socket.socket  # the supervisor's end
    started: float  # loop time
    serving: bool = field(default=False)


class Supervisor:
    def __init__(self, command: Sequence[str], env: Mapping[str, str], count: int) -> None:
        self.command = list(command)
        self.env = dict(env)
        self.count = count
        self.workers: dict[int, Worker] = {}
        self.stopping = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        try:
            # Worker 1 alone first: if the service cannot start, one worker says why, once.
            for numbers in ([1], range(2, self.count + 1)):
                failed = await self._start(numbers)
                if failed is not None:
                    await self._stop_all()
                    return failed
                if self.stopping.is_set():
                    return await self._stop_all()
            log.info("all %d workers serving", self.count)
            keepers = [asyncio.create_task(self._keep(number)) for number in self.workers]
            await self.stopping.wait()
            await asyncio.gather(*keepers)
            return await self._stop_all()
        finally:
            for worker in self.workers.values():
                worker.channel.close()

    async def _start(self, numbers: Sequence[int]) -> int | None:
        """Start these workers and wait until each serves; the exit code of one that
        ended before it served (its own stderr said why), else None."""
        for number in numbers:
            await self._spawn(number)
        for number in numbers:
            worker = self.workers[number]
            if not await self._unless_stopping(self._until_serving(worker)):
                if self.stopping.is_set():
                    return None
                code = await worker.process.wait()
                log.error("worker %d ended before it served (%s)", number, _describe_exit(code))
                return code if code > 0 else 1
        return None

    async def _keep(self, number: int) -> None:
        """Restart worker ``number`` whenever it ends, until the supervisor stops."""
        delay = FIRST_RESTART_DELAY
        loop = asyncio.get_running_loop()
        while True:
            worker = self.workers[number]
            code = await self._unless_stopping(worker.process.wait())
            if self.stopping.is_set():
                return
            # Its gauges (requests in flight, connections in use) end with it; its counters
            # stay, so that the sums over the workers never go back.
            mark_process_dead(worker.process.pid, self.env[MULTIPROCESS_DIR_VARIABLE])
            lived = loop.time() - worker.started
            if worker.serving and lived >= STEADY_SECONDS:
                delay = FIRST_RESTART_DELAY
            log.error(
                "worker %d (pid %d) ended unexpectedly (%s) after %.0f s; "
                "starting it again in %g s",
                number,
                worker.process.pid,
                _describe_exit(code),
                lived,
                delay,
            )
            await self._unless_stopping(asyncio.sleep(delay))
            if self.stopping.is_set():
                return
            delay = min(delay * 2, MAX_RESTART_DELAY)
            worker.channel.close()
            await self._spawn(number)
            await self._unless_stopping(self._until_serving(self.workers[number]))

    async def _spawn(self, number: int) -> None:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command,
                env={**self.env, WORKER_VARIABLE: f"{number}:{theirs.fileno()}"},
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                # Its own session: a Ctrl-C in the terminal reaches the supervisor alone,
                # which then stops each worker once.
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        started = asyncio.get_running_loop().time()
        self.workers[number] = Worker(number, process, ours, started)
        log.info("worker %d started (pid %d)", number, process.pid)

    async def _until_serving(self, worker: Worker) -> bool:
        """True once the worker listens; False if it ended first (its end closed)."""
        message = await asyncio.get_running_loop().sock_recv(worker.channel, 1)
        worker.serving = message == SERVING
        if worker.serving:
            log.info("worker %d serving (pid %d)", worker.number, worker.process.pid)
        return worker.serving

    async def _unless_stopping(self, awaitable: Awaitable[T]) -> T | None:
        """``awaitable``'s result, or None (and it cancelled) once a stop is asked for."""
        task = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if self.stopping.is_set() and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
        return task.result()

    async def _stop_all(self) -> int:
        """SIGTERM to every running worker, SIGKILL to any still there after STOP_GRACE;
        0 if each ended cleanly, else 1."""
        running = [w for w in self.workers.values() if w.process.returncode is None]
        for worker in running:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        waits = asyncio.gather(*(worker.process.wait() for worker in running))
        try:
            codes = await asyncio.wait_for(asyncio.shield(waits), STOP_GRACE)
        except TimeoutError:
            for worker in running:
                if worker.process.returncode is None:
                    log.error("worker %d did not stop in %g s: killed", worker.number, STOP_GRACE)
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
            codes = await waits
        log.info("workers stopped (exit codes %s)", codes)
        return 0 if all(code == 0 for code in codes) else 1


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
