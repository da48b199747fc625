"""SIGTERM, as Kubernetes sends it to a service that is PID 1 of its container: the
requests in flight finish, then the connections and pools close, then the process exits 0.
A real process runs shopkit's run(), the main every service has."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import sys
import textwrap
from pathlib import Path

from support import JWT_SECRET, REPO

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


def log_messages(path: Path) -> list[str]:
    messages = []
    for line in path.read_text().splitlines():
        try:
            messages.append(json.loads(line)["msg"])
        except (ValueError, KeyError):
            messages.append(line)
    return messages


def logged(path: Path, message: str) -> bool:
    return processes.wait_until(lambda: message in log_messages(path), timeout=30)


def test_sigterm_lets_requests_in_flight_finish_then_closes_the_pools(tmp_path: Path) -> None:
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
    }
    service = processes.spawn([sys.executable, str(script)], log_path=log, env=env)
    assert service.popen is not None
    try:
        listening = processes.wait_until(lambda: processes.accepts_connections(port), 30)
        assert listening, processes.log_tail(log)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            body = b'{"job": 7}'
            client.sendall(
                b"POST /work HTTP/1.1\r\nHost: shop\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert logged(log, "work started"), processes.log_tail(log)

            service.popen.send_signal(signal.SIGTERM)
            assert logged(log, "shutdown begun"), processes.log_tail(log)
            # No new connections from here on; the one in flight still gets its answer.
            assert not processes.accepts_connections(port)
            service.popen.send_signal(signal.SIGUSR1)
            response = http.client.HTTPResponse(client)
            response.begin()
            assert response.status == 200
            assert json.loads(response.read()) == {"done": 7}
        assert service.popen.wait(timeout=30) == 0, processes.log_tail(log)
    finally:
        processes.stop(service, timeout=5)

    messages = log_messages(log)
    order = [m for m in messages if m in ("shutdown begun", "work finishing", "pool closed")]
    assert order == ["shutdown begun", "work finishing", "pool closed"], messages
