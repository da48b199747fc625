"""The app factory every service starts from, and ``run()``, every service's ``main``."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web
from typing_extensions import TypedDict

from shopkit import workers
from shopkit.client import http_session_ctx
from shopkit.domain import timestamp
from shopkit.errors import SHARED_REFUSALS, Refusals, error_body
from shopkit.keys import METRICS, PROCESS, READY_CHECK, REFUSALS, SETTINGS, UNAVAILABLE_ERRORS
from shopkit.logs import configure_logging
from shopkit.metrics import MULTIPROCESS_DIR_VARIABLE, Metrics
from shopkit.middleware import PARSER_LIMIT, answer_expect_headers, shop_middleware
from shopkit.openapi import Timestamp, answer_shape, build_openapi, endpoint
from shopkit.responses import json_response, ok
from shopkit.settings import ServiceSettings, SettingsError
from shopkit.tracing import configure_tracing
from shopkit.uploads import uploads_closed
from shopkit.validation import MAX_BODY

log = logging.getLogger("shop.app")

READY_TIMEOUT = 2.0

# The endpoints every service has for the cluster (probes, Prometheus, operators): never
# reachable from outside, whatever the path's spelling (CONTRACT.md).
SERVICE_PATHS = frozenset({"/health", "/ready", "/metrics", "/openapi.json"})

ReadyCheck = Callable[[web.Application], Awaitable[dict[str, Any]]]


@answer_shape
class HealthOut(TypedDict):
    """What /health says about the process that answers: enough for `shopctl status` and
    `down` to know which process serves the port (one restarted by hand has a new PID)."""

    status: str
    service: str
    pid: int  # of the process that answers (with WORKERS > 1: one worker)
    started_at: Timestamp  # when that process built its app


class NotReady(Exception):
    """Raised by a ready check; ``details`` go into the 503 body."""

    def __init__(self, reason: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.details = details or {}


class StartupError(Exception):
    """A dependency the service cannot start without is missing; the message says which."""


def package_version() -> str:
    try:
        return version("shop")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


def create_service_app(
    settings: ServiceSettings,
    *,
    ready_check: ReadyCheck,
    unavailable_errors: tuple[type[BaseException], ...] = (),
    refusals: Refusals | None = None,
    http_client: bool = False,
) -> web.Application:
    """A service's application with everything shopkit provides wired in. Does no I/O."""
    app = web.Application(
        middlewares=[shop_middleware, uploads_closed],
        client_max_size=MAX_BODY,
        # Bodies are decoded by shopkit.validation.read_body, which answers every encoding
        # problem in the envelope (aiohttp's own decoder would make some of them 500s).
        handler_args={
            "auto_decompress": False,
            # Read longer lines than aiohttp's 8190 bytes, so that the envelope says no to
            # them (shopkit.middleware.check_request_size) rather than aiohttp's plain text.
            "max_line_size": PARSER_LIMIT,
            "max_field_size": PARSER_LIMIT,
        },
    )
    app[SETTINGS] = settings
    # prometheus_client itself chose per-process files from the same variable at import.
    app[METRICS] = Metrics(settings.service_name, os.environ.get(MULTIPROCESS_DIR_VARIABLE) or None)
    app[READY_CHECK] = ready_check
    app[PROCESS] = (os.getpid(), timestamp(datetime.now(UTC)))
    app[UNAVAILABLE_ERRORS] = unavailable_errors
    app[REFUSALS] = {**SHARED_REFUSALS, **(refusals or {})}
    if http_client:
        app.cleanup_ctx.append(http_session_ctx)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.on_startup.append(answer_expect_headers)
    return app


@endpoint("Liveness: the process answers (never touches a datastore)", response=HealthOut)
async def health(request: web.Request) -> web.Response:
    pid, started_at = request.app[PROCESS]
    answer: HealthOut = {
        "status": "ok",
        "service": request.app[SETTINGS].service_name,
        "pid": pid,
        "started_at": started_at,
    }
    return ok(answer)


@endpoint("Readiness: 200 only when this service's own dependencies answer", errors=(503,))
async def ready(request: web.Request) -> web.Response:
    name = request.app[SETTINGS].service_name
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            details = await request.app[READY_CHECK](request.app)
    except NotReady as exc:
        return _not_ready(name, str(exc), exc.details)
    except Exception as exc:  # any failure of the check means "not ready", never a 500
        reason = "it did not answer in time" if isinstance(exc, TimeoutError) else str(exc)
        return _not_ready(name, reason or type(exc).__name__, {})
    return ok({"status": "ready", "service": name, **details})


def _not_ready(name: str, reason: str, details: dict[str, Any]) -> web.Response:
    body = error_body(
        f"The {name} service is not ready: {reason}.",
        "not_ready",
        extra={"data": {"status": "not ready", "service": name, **details}},
    )
    return json_response(body, status=503)


@endpoint(
    "Prometheus metrics: requests, the process, and the service's own events (README: Metrics)",
    raw=True,
    response={"type": "string"},
    content_type="text/plain",
)
async def metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS]
    return web.Response(body=registry.render(), headers={"Content-Type": registry.content_type})


@endpoint("This OpenAPI document", raw=True, response={"type": "object"})
async def openapi(request: web.Request) -> web.Response:
    title = f"shop {request.app[SETTINGS].service_name} service"
    return json_response(build_openapi(request.app, title, package_version()))


def run(
    create_app: Callable[[Any], web.Application],
    settings_class: type[ServiceSettings],
    environ: Mapping[str, str] | None = None,
) -> None:
    """Read settings, configure logging, serve until SIGINT/SIGTERM. Every service's main.

    With ``WORKERS`` > 1 this process supervises that many workers, each this same command
    (see shopkit.workers), and a worker serves as a single process does, sharing the port."""
    name = settings_class.service_name
    environ = os.environ if environ is None else environ
    try:
        settings = settings_class.from_env(environ)
    except SettingsError as exc:
        print(f"{name} service: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    role = workers.worker_role(environ)
    supervising = settings.workers > 1 and role is None
    if supervising:
        configure_logging(name, settings.log_level, worker=workers.SUPERVISOR)
    else:
        configure_logging(name, settings.log_level, worker=role.number if role else None)
    tracer_provider = None
    try:
        if supervising:
            raise SystemExit(
                workers.supervise(name, settings.host, settings.port, settings.workers, environ)
            )
        # Before the app is built: the instrumentations patch the classes it is made of.
        tracer_provider = configure_tracing(
            name, environ, settings.traces_dir, role.number if role else None
        )
        app = create_app(settings)
        log.info("starting on %s:%s", settings.host, settings.port)
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            access_log=None,
            print=role.serving if role else None,
            # Workers share the port; the kernel spreads connections over them.
            reuse_port=True if role else None,
            loop=_new_event_loop(),
            # On SIGTERM (Kubernetes stopping the pod; the service is PID 1) aiohttp stops
            # listening, gives the requests in flight up to this long to finish, then runs
            # the cleanup contexts, which close the pools. Body bytes that arrive after
            # SIGTERM are dropped: the pod's preStop pause lets traffic drain first.
            shutdown_timeout=10,
        )
    except (StartupError, workers.SupervisorError) as exc:
        log.error("cannot start: %s", exc)
        print(f"{name} service: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        message = f"port {settings.port} on {settings.host} is already in use"
        log.error("cannot start: %s", message)
        print(f"{name} service: cannot start: {message}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()  # writes the spans still waiting


def _new_event_loop() -> asyncio.AbstractEventLoop:
    # uvloop roughly halves the event loop's own overhead; plain asyncio where it is missing.
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
