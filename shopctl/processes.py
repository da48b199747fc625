"""The one place that starts and stops processes for shopctl: services, backing servers and
the tools it drives (git, container tools, kubectl)."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

# psutil derives a create time from the boot time and the start tick; two reads of the same
# process agree to well under this, a recycled PID (started later) never does.
_CREATE_TIME_TOLERANCE = 0.05
# But the boot time the kernel reports moves when the clock is stepped (seen here: 20 s), and
# every create time with it. A process whose command line is the one recorded and whose
# create time is this close is still ours: a recycled PID would have to come round the
# whole PID space and start the same command within the window.
_STEPPED_CLOCK_TOLERANCE = 300.0


@dataclass
class ManagedProcess:
    """A process we started, identified by PID *and* create time so a recycled PID is never
    mistaken for it (and never killed)."""

    pid: int
    create_time: float
    command: list[str]
    log_path: Path | None = None
    # Where in the log this run's lines begin (the log is appended to across restarts).
    log_start: int = field(default=0, compare=False)
    # Only set in the process that spawned it: lets us reap the child and read its exit code.
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def to_state(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "create_time": self.create_time,
            "command": self.command,
            "log_path": str(self.log_path) if self.log_path else None,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ManagedProcess:
        log_path = state.get("log_path")
        return cls(
            pid=int(state["pid"]),
            create_time=float(state["create_time"]),
            command=list(state["command"]),
            log_path=Path(log_path) if log_path else None,
        )

    @classmethod
    def adopt(cls, pid: int, command: Sequence[str] = ()) -> ManagedProcess:
        """Record a process something else started for us (e.g. pg_ctl's postmaster)."""
        return cls(pid=pid, create_time=psutil.Process(pid).create_time(), command=list(command))

    def exit_code(self) -> int | None:
        """The exit code if we spawned it here and it has ended, else None."""
        return self.popen.poll() if self.popen is not None else None

    def alive(self) -> bool:
        """True while this very process (not a later one with the same PID) runs."""
        if self.popen is not None:
            return self.popen.poll() is None
        process = self._process()
        if process is None:
            return False
        try:
            return process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def uptime(self) -> float | None:
        return time.time() - self.create_time if self.alive() else None

    def _process(self) -> psutil.Process | None:
        try:
            process = psutil.Process(self.pid)
            drift = abs(process.create_time() - self.create_time)
            same = drift < _CREATE_TIME_TOLERANCE or (
                drift < _STEPPED_CLOCK_TOLERANCE
                and bool(self.command)
                and process.cmdline() == self.command
            )
        except psutil.Error:  # gone, or not ours to read
            return None
        return process if same else None


def module_of(command: Sequence[str]) -> str | None:
    """The module a `python -m MODULE` command line runs (a service's), else None."""
    for flag, module in itertools.pairwise(command[1:]):
        if flag == "-m":
            return module
    return None


def _runs_module(process: psutil.Process, module: str) -> bool:
    command = process.cmdline()
    return (
        bool(command)
        and Path(command[0]).name.startswith("python")
        and module_of(command) == module
        and process.uids().real == os.getuid()
    )


def service_on_port(
    pid: int, port: int, module: str, started_after: float
) -> ManagedProcess | None:
    """The process of a service started as `python -m MODULE` (by hand, say) that serves
    `port`, given the PID it names in its /health answer; None unless the kernel confirms
    all of it: that PID runs that module, as this user, listens on `port` and started after
    `started_after`. So neither a stranger's process on the port nor an answer naming
    someone else's PID is ever taken for ours (and stopped). A worker (WORKERS > 1) belongs
    to its supervisor, the same command one level up: that is the process returned."""
    try:
        process = psutil.Process(pid)
        if not _runs_module(process, module):
            return None
        listening = any(
            connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
            for connection in process.net_connections("inet")
        )
        if not listening:
            return None
        parent = process.parent()
        if parent is not None and _runs_module(parent, module):
            process = parent
        create_time = process.create_time()
        if create_time < started_after:
            return None
        return ManagedProcess(process.pid, create_time, process.cmdline())
    except psutil.Error:  # gone meanwhile, or not ours to read
        return None


def spawn(
    command: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ManagedProcess:
    """Start `command` in its own session (so a Ctrl-C in the terminal reaches only shopctl,
    which then stops things in order), stdout and stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log_start = log.seek(0, os.SEEK_END)
        popen = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    try:
        create_time = psutil.Process(popen.pid).create_time()
    except psutil.NoSuchProcess:
        # Died at once; keep a record so the caller reads the exit code and the log.
        create_time = time.time()
    return ManagedProcess(popen.pid, create_time, list(command), log_path, log_start, popen)


def stop(process: ManagedProcess, timeout: float = 10.0) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Does nothing if the PID is no longer ours."""
    stop_all([process], timeout)


def stop_all(targets: Sequence[ManagedProcess], timeout: float = 10.0) -> None:
    """Stop several processes at once: all get SIGTERM first, so they wind down together;
    whichever is still there after `timeout` gets SIGKILL."""
    for target in targets:
        _signal(target, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for target in targets:
        if not _wait(target, max(0.0, deadline - time.monotonic())):
            _signal(target, signal.SIGKILL)
            _wait(target, timeout)


def _signal(target: ManagedProcess, signum: int) -> None:
    if not target.alive():
        return
    with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
        if target.popen is not None:
            target.popen.send_signal(signum)
        elif (process := target._process()) is not None:
            process.send_signal(signum)


def _wait(target: ManagedProcess, timeout: float) -> bool:
    """Wait until `target` has ended (reaping it if it is our child); False on timeout."""
    if target.popen is not None:
        try:
            target.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    # Not our child: it is gone when it is no longer alive() — a zombie its parent has yet to
    # reap counts as gone (psutil's wait() would wait for the reaping, up to the timeout).
    return wait_until(lambda: not target.alive(), timeout, interval=0.02)


@contextlib.contextmanager
def stop_requests() -> Iterator[threading.Event]:
    """Until the block ends, SIGINT (Ctrl-C) and SIGTERM set the event it gives instead of
    interrupting whatever runs, so the caller can stop everything in order."""
    requested = threading.Event()
    # The handler only writes to a pipe; a thread reads it and sets the event. Setting it in
    # the handler takes the event's lock, which the interrupted code may hold (inside
    # Event.wait, or a first Ctrl-C's set() when a second arrives): `up` then hung for good.
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)

    def relay() -> None:
        while os.read(read_end, 1):
            requested.set()

    relay_thread = threading.Thread(target=relay, name="shopctl-stop-requests", daemon=True)
    relay_thread.start()

    def request_stop(signum: int, frame: object) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe full of requests already
            os.write(write_end, b"s")

    previous = {
        signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield requested
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(write_end)  # the relay reads the end of the pipe and returns
        relay_thread.join()
        os.close(read_end)


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll `check` until it is true or `timeout` seconds have passed; return the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))


def free_port(host: str = "127.0.0.1", avoid: Collection[int] = ()) -> int:
    """A TCP port nothing listens on right now (the OS's pick), not one of `avoid`."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port not in avoid:
            return port


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when binding `host:port` fails the way the service's own bind would."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Same option aiohttp sets, so a socket in TIME_WAIT does not count as taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def accepts_connections(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path | None, lines: int = 20, start: int = 0) -> str:
    """The last `lines` lines of a log file, of those after byte `start` ('' when none)."""
    if path is None or not path.exists():
        return ""
    with path.open("rb") as log:
        log.seek(0, os.SEEK_END)
        size = log.tell()
        log.seek(max(start, size - 64 * 1024))
        text = log.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def find_program(name: str) -> str | None:
    """The full path of program `name` on PATH, or None when there is none."""
    return shutil.which(name)


def run_program(
    command: Sequence[str],
    *,
    input: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a tool (git, docker, kubectl, ...) to completion and capture its output; never
    raises for its exit code. A missing program raises FileNotFoundError; one that outlives
    `timeout` is killed and raises subprocess.TimeoutExpired."""
    return subprocess.run(
        list(command),
        input=input,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        stdin=subprocess.DEVNULL if input is None else None,
    )


def stream_program(
    command: Sequence[str], on_line: Callable[[str], None]
) -> subprocess.CompletedProcess[str]:
    """Run a long tool (an image build) with no time limit, handing each line it prints
    (stdout and stderr merged) to `on_line` as it comes; `stdout` of the result keeps them
    all. A missing program raises FileNotFoundError."""
    kept: list[str] = []
    with subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as child:
        assert child.stdout is not None
        for line in child.stdout:
            kept.append(line)
            on_line(line.rstrip("\n"))
        returncode = child.wait()
    return subprocess.CompletedProcess(list(command), returncode, "".join(kept), "")


def last_line(output: str) -> str:
    """The last non-blank line a tool printed: usually the one that says what went wrong."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else ""
