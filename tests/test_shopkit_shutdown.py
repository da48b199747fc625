"""SIGTERM, as Kubernetes sends it to a service that is PID 1 of its container: the
requests in flight finish, then the connections and pools close, then the process exits 0.
A real process runs shopkit's run(), the main every service has; with WORKERS=2 the same
holds for the worker the request is on, when the SIGTERM goes to their supervisor."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from support import JWT_SECRET, REPO, eventually_logged, eventually_sync, log_lines

from shopctl import processes

# A service made like the shop's (create_service_app + run) with one more route, /work,
# whose request is still in flight when SIGTERM comes: it finishes only when the test says
# so (SIGUSR1), once shutdown has begun. (Its body has arrived: aiohttp drops bytes that
# arrive after shutdown begins, so a body still uploading then is lost.)
SLOW_SERVICE = textwrap.dedent(
    """
    import asyncio
    import logging
    import signal
    from typing import ClassVar

    from aiohttp import web

    from shopkit.app import create_service_app, run
    from shopkit.settings import ServiceSettings

    log = logging.getLogger("shop.slow")
    RELEASE = web.AppKey("release", asyncio.Event)


    class SlowSettings(ServiceSettings):
        service_name: ClassVar[str] = "slow"


    async def ready(app):
        return {}


    async def work(request):
        body = await request.json()
        log.info("work started")
        await request.app[RELEASE].wait()
        log.info("work finishing")
        return web.json_response({"done": body["job"]})


    async def pool_ctx(app):
        # Stands for a datastore pool: opened at start-up, closed at the very end.
        app[RELEASE] = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, app[RELEASE].set)
        yield
        log.info("pool closed")


    async def shutdown_begins(app):
        log.info("shutdown begun")


    def create_app(settings):
        app = create_service_app(settings, ready_check=ready)
        app.cleanup_ctx.append(pool_ctx)
        app.on_shutdown.append(shutdown_begins)
        app.router.add_post("/work", work)
        return app


    run(create_app, SlowSettings)
    """
)


def busy_process(path: Path, pid: int) -> psutil.Process:
    """The process the request is on: the service itself, or the worker that logged it."""
    lines = log_lines(path)
    (busy,) = {line.get("worker") for line in lines if line["msg"] == "work started"}
    if busy is None:
        return psutil.Process(pid)
    started = f"worker {busy} started (pid "
    (start,) = [line["msg"] for line in lines if line["msg"].startswith(started)]
    return psutil.Process(int(start.removeprefix(started).rstrip(")")))


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_requests_in_flight_finish_then_closes_the_pools(
    tmp_path: Path, workers: int
) -> None:
    script = tmp_path / "slow_service.py"
    script.write_text(SLOW_SERVICE)
    port = processes.free_port()
    log = tmp_path / "slow.log"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "JWT_SECRET": JWT_SECRET,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": str(workers),
    }
    service = processes.spawn([sys.executable, str(script)], log_path=log, env=env)
    assert service.popen is not None
    try:
        if workers > 1:
            eventually_logged(log, "all 2 workers serving")
        eventually_sync(
            lambda: processes.accepts_connections(port),
            "the service listening",
            30,
            seen=lambda: processes.log_tail(log),
        )
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            body = b'{"job": 7}'
            client.sendall(
                b"POST /work HTTP/1.1\r\nHost: shop\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            eventually_logged(log, "work started")

            service.popen.send_signal(signal.SIGTERM)
            eventually_logged(log, "shutdown begun", times=workers)  # once per worker
            # No new connections from here on; the one in flight still gets its answer.
            assert not processes.accepts_connections(port)
            busy_process(log, service.popen.pid).send_signal(signal.SIGUSR1)
            response = http.client.HTTPResponse(client)
            response.begin()
            assert response.status == 200
            assert json.loads(response.read()) == {"done": 7}
        assert service.popen.wait(timeout=30) == 0, processes.log_tail(log)
    finally:
        processes.stop(service, timeout=5)

    lines = log_lines(log)
    (busy,) = {line.get("worker") for line in lines if line["msg"] == "work started"}
    messages = [line["msg"] for line in lines if line.get("worker") == busy]
    order = [m for m in messages if m in ("shutdown begun", "work finishing", "pool closed")]
    assert order == ["shutdown begun", "work finishing", "pool closed"], messages
    # Every worker closed its own pool.
    closed = sorted(line.get("worker") for line in lines if line["msg"] == "pool closed")
    assert closed == ([1, 2] if workers > 1 else [None])
