"""What shopkit gives every service: envelope, request ids, logs, metrics, docs, settings."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate
from support import JWT_SECRET, call

from shopkit.logs import (
    MAX_PENDING,
    WRITE_SIZE,
    BufferedStreamHandler,
    JsonFormatter,
    mask_url,
    request_record,
)
from shopkit.settings import SettingsError
from svc_gateway.app import GatewaySettings
from svc_product.app import ProductSettings

# -- the envelope for aiohttp's own errors --------------------------------------------------


async def test_unknown_routes_are_404_envelopes(product: TestClient) -> None:
    body = await call(product, "GET", "/no/such/thing", expected_status=404)
    assert body["code"] == "not_found"


async def test_wrong_methods_are_405_envelopes_with_allow(product: TestClient) -> None:
    response = await product.request("PATCH", "/api/products")
    assert response.status == 405
    assert "GET" in response.headers["Allow"]
    assert (await response.json())["code"] == "method_not_allowed"


# -- request ids ----------------------------------------------------------------------------


async def test_request_id_is_echoed_or_made_up(product: TestClient) -> None:
    given = await product.get("/health", headers={"X-Request-ID": "qa-run-7.step:3"})
    assert given.headers["X-Request-ID"] == "qa-run-7.step:3"
    made_up = await product.get("/health")
    other = await product.get("/health")
    assert made_up.headers["X-Request-ID"] != other.headers["X-Request-ID"]
    for hostile in ("has space", "x" * 200, "new\tline", "ünïcode"):
        response = await product.get("/health", headers={"X-Request-ID": hostile})
        assert response.headers["X-Request-ID"] != hostile


async def test_log_lines_are_json_and_name_the_request(product: TestClient, json_logs: Any) -> None:
    await product.get("/api/products/nope", headers={"X-Request-ID": "trace-me-1"})
    access = [line for line in json_logs() if line["logger"] == "shop.access"]
    assert access[-1]["request_id"] == "trace-me-1"
    assert access[-1]["status"] == 404 and access[-1]["path"] == "/api/products/nope"
    assert access[-1]["service"] == "product" and access[-1]["level"] == "info"


def test_info_lines_wait_and_a_warning_writes_them_all_in_order() -> None:
    stream = io.StringIO()
    handler = BufferedStreamHandler(stream, interval=3600)  # no flush by the clock here
    handler.setFormatter(JsonFormatter("product"))
    logger = logging.getLogger("shop.test-buffering")
    logger.addHandler(handler)
    logger.propagate, logger.level = False, logging.INFO
    try:
        logger.info("first")
        logger.info("second")
        assert stream.getvalue() == ""  # whatever the stream's own buffering (PYTHONUNBUFFERED)
        logger.warning("third")
        messages = [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]
        assert messages == ["first", "second", "third"]
        for _ in range(MAX_PENDING):  # so many lines waiting are written without a warning
            logger.info("more")
        assert len(stream.getvalue().splitlines()) == 3 + MAX_PENDING
    finally:
        logger.removeHandler(handler)
        handler.close()


class WriteRecorder(io.StringIO):
    """A stream that keeps what each flush sent on: what reached the system in one write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def flush(self) -> None:
        sent = self.getvalue()[sum(len(write) for write in self.writes) :]
        if sent:
            self.writes.append(sent)


def test_waiting_lines_go_out_in_whole_lines_a_pipe_keeps_together() -> None:
    stream = WriteRecorder()
    handler = BufferedStreamHandler(stream, interval=3600)
    handler.setFormatter(JsonFormatter("product"))
    logger = logging.getLogger("shop.test-chunks")
    logger.addHandler(handler)
    logger.propagate, logger.level = False, logging.INFO
    try:
        for number in range(300):
            logger.info("line %d %s", number, "é" * (number % 50))
        handler.flush_now()
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert len(stream.writes) > 1
    for write in stream.writes:  # workers share stdout: no write may cut a line in two
        assert write.endswith("\n") and len(write.encode()) <= WRITE_SIZE
    lines = "".join(stream.writes).splitlines()
    assert [json.loads(line)["msg"].split()[1] for line in lines] == [str(n) for n in range(300)]


def test_a_request_record_is_written_as_logger_info_writes_it(json_logs: Any) -> None:
    log = logging.getLogger("shop.access")
    fields = {"method": "GET", "path": "/x", "status": 200, "ms": 1.5}
    log.info("GET /x 200", extra=fields)
    log.handle(request_record("shop.access", "GET /x 200", fields))
    by_info, by_record = json_logs()[-2:]
    assert by_info.pop("ts")[:10] == by_record.pop("ts")[:10]
    assert by_info == by_record


def test_urls_in_logs_hide_passwords() -> None:
    assert (
        mask_url("postgresql://shop:s3cret@db:5432/users") == "postgresql://shop:***@db:5432/users"
    )
    assert mask_url("mongodb://127.0.0.1:27017/products") == "mongodb://127.0.0.1:27017/products"
    assert mask_url("postgresql://u@h/d") == "postgresql://u@h/d"
    socket = "postgresql://postgres:pw@/postgres?host=/tmp/pg"
    assert mask_url(socket) == "postgresql://postgres:***@/postgres?host=/tmp/pg"


# -- health, readiness, metrics, docs -------------------------------------------------------


async def test_health_and_ready(product: TestClient) -> None:
    health = await call(product, "GET", "/health", expected_status=200)
    # It names the process that answers (here this one), so shopctl can tell who serves.
    assert health["data"] == {
        "status": "ok",
        "service": "product",
        "pid": os.getpid(),
        "started_at": health["data"]["started_at"],
    }
    assert health["data"]["started_at"].endswith("Z")
    ready = await call(product, "GET", "/ready", expected_status=200)
    assert ready["data"]["status"] == "ready"


async def test_metrics_count_requests_by_route_template_and_status(product: TestClient) -> None:
    for product_id in ("a", "b", "c"):
        await product.get(f"/api/products/{product_id}")
    await product.get("/nowhere")
    response = await product.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    counted = (
        'http_requests_total{method="GET",route="/api/products/{id}",service="product",'
        'status="404"} 3.0'
    )
    assert counted in text
    assert 'route="unmatched"' in text
    assert "http_request_duration_seconds_bucket{" in text


async def test_openapi_describes_every_route_with_its_models(product: TestClient) -> None:
    document = await (await product.get("/openapi.json")).json()
    validate(document)
    paths = document["paths"]
    assert set(paths) >= {
        "/api/products",
        "/api/products/categories",
        "/api/products/{id}",
        "/api/products/{id}/stock",
        "/health",
        "/ready",
        "/metrics",
    }
    create = paths["/api/products"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ProductCreate"
    }
    assert {"201", "400", "401", "403", "413"} <= set(create["responses"])
    assert create["security"] == [{"bearerAuth": []}]
    listing = paths["/api/products"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {
        "ids",
        "q",
        "category",
        "minPrice",
        "maxPrice",
        "inStock",
        "sort",
        "page",
        "limit",
    }
    schema = document["components"]["schemas"]["ProductCreate"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "price", "category"}


# -- settings -------------------------------------------------------------------------------


# The product service checks admins' tokens, so it must be able to ask about revocation.
USER_SERVICE = {"USER_SERVICE_URL": "http://user:3002"}


def test_settings_read_the_contract_names() -> None:
    settings = ProductSettings.from_env(
        {"MONGODB_URI": "mongodb://db:27017/products", "JWT_SECRET": JWT_SECRET, "PORT": "4001"}
        | USER_SERVICE
    )
    assert settings.port == 4001 and settings.mongodb_uri == "mongodb://db:27017/products"
    assert settings.user_service_url == "http://user:3002"
    assert settings.token_status_cache_seconds == 2
    default = ProductSettings.from_env(
        {"MONGODB_URI": "mongodb://db", "JWT_SECRET": JWT_SECRET} | USER_SERVICE
    )
    assert default.port == 3001 and default.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"JWT_SECRET": JWT_SECRET}, "MONGODB_URI is required but not set"),
        ({"MONGODB_URI": "mongodb://db"}, "JWT_SECRET is required but not set"),
        ({"MONGODB_URI": "http://db", "JWT_SECRET": JWT_SECRET}, "MONGODB_URI is malformed"),
        ({"MONGODB_URI": "mongodb://db", "JWT_SECRET": "short"}, "JWT_SECRET is malformed"),
        ({"MONGODB_URI": "mongodb://db", "JWT_SECRET": JWT_SECRET, "PORT": "http"}, "PORT is"),
        ({"MONGODB_URI": "mongodb://db", "JWT_SECRET": JWT_SECRET, "PORT": "70000"}, "PORT is"),
        ({"MONGODB_URI": "mongodb://db", "JWT_SECRET": JWT_SECRET, "LOG_LEVEL": "loud"}, "LOG_LEV"),
        (
            {"MONGODB_URI": "mongodb://db", "JWT_SECRET": JWT_SECRET, "USER_SERVICE_URL": ""},
            "USER_SERVICE_URL is required but not set",
        ),
    ],
)
def test_bad_settings_are_one_line_naming_the_variable(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        ProductSettings.from_env(USER_SERVICE | environ)
    text = str(caught.value)
    assert text.startswith(message)
    assert "\n" not in text
    assert "short" not in text  # a secret's value is never echoed


def test_gateway_settings_list_the_configured_backends() -> None:
    settings = GatewaySettings.from_env(
        {"PRODUCT_SERVICE_URL": "http://product:3001", "CORS_ORIGINS": "https://a.example, b"}
    )
    assert settings.backend_urls() == {"product": "http://product:3001"}
    assert settings.cors_origins == ["https://a.example", "b"]
    with pytest.raises(SettingsError, match="USER_SERVICE_URL is malformed"):
        GatewaySettings.from_env({"USER_SERVICE_URL": "user:3002"})


def run_service(module: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module],
        env={"PATH": "/usr/bin:/bin", **USER_SERVICE, **environ},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_service_missing_a_setting_refuses_to_start_with_one_line() -> None:
    result = run_service("svc_product", {"JWT_SECRET": JWT_SECRET})
    assert result.returncode == 2
    assert result.stderr.strip() == "product service: MONGODB_URI is required but not set"


def test_a_taken_port_is_one_clear_line(mongo_uri: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_service(
            "svc_product",
            {
                "JWT_SECRET": JWT_SECRET,
                "MONGODB_URI": mongo_uri,
                "HOST": "127.0.0.1",
                "PORT": str(port),
            },
        )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().endswith(f"port {port} on 127.0.0.1 is already in use")
    assert "Traceback" not in result.stderr


def test_an_unreachable_datastore_stops_start_up_with_a_clear_line() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = run_service(
        "svc_product",
        {
            "JWT_SECRET": JWT_SECRET,
            "MONGODB_URI": f"mongodb://127.0.0.1:{port}/products",
            "HOST": "127.0.0.1",
            "PORT": "0",
        },
    )
    assert result.returncode == 1, result.stderr
    assert "cannot start: MongoDB at mongodb://127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_handler_bug_is_a_500_envelope_naming_the_request(
    aiohttp_client: Any, product_settings: ProductSettings
) -> None:
    from shopkit.app import create_service_app

    async def ready(app: web.Application) -> dict[str, Any]:
        return {}

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    app = create_service_app(product_settings, ready_check=ready)
    app.router.add_get("/broken", broken)
    client = await aiohttp_client(app)
    response = await client.get("/broken", headers={"X-Request-ID": "bug-1"})
    body = await response.json()
    assert response.status == 500
    assert body["code"] == "internal_error" and "bug-1" in body["error"]
    assert "boom" not in body["error"]
