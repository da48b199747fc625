"""Tracing's parts on their own: which spans are kept, what a spans file holds (never a
statement's values), the ids in the log lines, and `shopctl trace`'s waterfall of a trace
written by the real exporter. The whole shop traced end to end: test_tracing_e2e.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from bson import ObjectId
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision
from opentelemetry.trace import SpanKind, StatusCode
from rich.console import Console
from typer.testing import CliRunner

from shopctl.main import app as shopctl_app
from shopctl.trace import waterfall
from shopctl.traces import find_traces
from shopkit.span_files import SpanFile, read_spans, spans_file_name
from shopkit.tracing import (
    RequestsOnly,
    SpanFileExporter,
    configure_tracing,
    mongo_statement,
    otlp_configured,
    record_error_code,
    record_failure,
    set_request_id,
)

# -- what a MongoDB span's statement shows --------------------------------------------------


def test_a_mongo_statement_shows_the_query_shape_and_never_a_value() -> None:
    product_id = ObjectId()
    find = {
        "find": "products",
        "filter": {
            "_id": {"$in": [product_id, ObjectId()]},
            "category": "Kitchen",
            "price_cents": {"$gte": 1250},
            "$or": [{"name": {"$regex": "enamel", "$options": "i"}}, {"stock": {"$gt": 0}}],
        },
        "sort": {"createdAt": -1},
        "limit": 20,
        "lsid": {"id": "session"},
        "$db": "products",
    }
    assert mongo_statement("find", find) == (
        "find products filter={_id: {$in: ?}, category: ?, price_cents: {$gte: ?}, "
        "$or: [{name: {$regex: ?, $options: ?}}, {stock: {$gt: ?}}]} sort={createdAt: ?}"
    )

    take = {
        "findAndModify": "products",
        "query": {"_id": product_id, "stock": {"$gte": 3}, "pending.order-4242": {"$exists": 0}},
        "update": {"$inc": {"stock": -3}, "$set": {"pending.order-4242": "a-secret-token"}},
    }
    statement = mongo_statement("findAndModify", take)
    assert statement == (
        "findAndModify products query={_id: ?, stock: {$gte: ?}, pending.?: {$exists: ?}} "
        "update={$inc: {stock: ?}, $set: {pending.?: ?}}"
    )
    insert = {"insert": "stock_moves", "documents": [{"_id": "order-4242", "units": 3}]}
    assert mongo_statement("insert", insert) == "insert stock_moves"
    for shown in (statement, mongo_statement("insert", insert)):
        for value in (str(product_id), "4242", "a-secret-token", "-3", "Kitchen"):
            assert value not in shown


# -- which spans are kept -----------------------------------------------------------------


def test_only_requests_are_traced_and_never_the_probes() -> None:
    sampler = RequestsOnly(ALWAYS_ON)
    tracer = TracerProvider(sampler=sampler, shutdown_on_exit=False).get_tracer("test")

    def decision(kind: SpanKind, route: str | None = None, parent: Any = None) -> Decision:
        attributes = {"http.route": route} if route else {}
        return sampler.should_sample(parent, 1, "x", kind, attributes).decision

    assert decision(SpanKind.SERVER, "/api/orders") is Decision.RECORD_AND_SAMPLE
    for probe in ("/health", "/ready", "/metrics"):
        assert decision(SpanKind.SERVER, probe) is Decision.DROP
    # A background loop's query or call, with no request around it.
    assert decision(SpanKind.CLIENT) is Decision.DROP
    with tracer.start_as_current_span("GET /api/orders", kind=SpanKind.SERVER) as request:
        assert request.is_recording()
        with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as query:
            assert query.is_recording()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                "OTEL_TRACES_EXPORTER": "none",
            },
            False,
        ),
    ],
)
def test_spans_go_over_otlp_when_the_standard_variables_say_so(
    environ: dict[str, str], expected: bool
) -> None:
    assert otlp_configured(environ) is expected


def test_nothing_configured_or_disabled_means_nothing_is_traced(tmp_path: Path) -> None:
    assert configure_tracing("product", {}) is None
    assert configure_tracing("product", {"OTEL_SDK_DISABLED": "true"}, tmp_path) is None
    assert not list(tmp_path.iterdir())


# -- spans files ------------------------------------------------------------------------------


def test_a_spans_file_keeps_its_latest_lines_within_twice_its_size(tmp_path: Path) -> None:
    path = tmp_path / spans_file_name("order")
    file = SpanFile(path, max_bytes=1000)
    written = []
    for batch in range(40):
        lines = []
        for number in range(5):
            record = {"trace_id": f"{batch:032x}", "span_id": f"{number:016x}", "pad": "x" * 40}
            lines.append(orjson.dumps(record) + b"\n")
        file.write(lines)
        written += lines
    rotated = path.with_name(path.name + ".1")
    assert path.stat().st_size <= 1000 and rotated.stat().st_size <= 1000
    # Another process cut off in the middle of a line: that line alone is skipped.
    with path.open("ab") as cut:
        cut.write(b'{"trace_id": "00')
    kept = [orjson.dumps(record) + b"\n" for record in read_spans(tmp_path)]
    assert kept == written[-len(kept) :] and len(kept) >= 1000 // len(written[0])

    # The directory cleared while a service runs: its next spans start a new file.
    for kept_file in list(tmp_path.iterdir()):
        kept_file.unlink()
    file.write([written[0]])
    file.close()
    assert path.read_bytes() == written[0]


# -- spans written by the real exporter, and `shopctl trace` drawing them ----------------------

T0 = 1_800_000_000 * 10**9  # nanoseconds: every span below is placed on this axis


class Shop:
    """One tracer per service, each writing its own spans file as the services do."""

    def __init__(self, traces: Path) -> None:
        self.traces = traces
        self.clock_ms = 0.0  # where the next request starts on the axis, after T0
        self.tracers = {}
        self.providers: list[TracerProvider] = []
        for service in ("gateway", "order", "product"):
            provider = TracerProvider(
                sampler=RequestsOnly(ALWAYS_ON),
                resource=Resource.create({"service.name": service}),
                shutdown_on_exit=False,
            )
            exporter = SpanFileExporter(traces / spans_file_name(service))
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            self.providers.append(provider)
            self.tracers[service] = provider.get_tracer("test")

    @contextmanager
    def span(
        self,
        service: str,
        name: str,
        kind: SpanKind,
        start_ms: float,
        end_ms: float,
        attributes: dict[str, Any] | None = None,
    ) -> Iterator[trace.Span]:
        with self.tracers[service].start_as_current_span(
            name,
            kind=kind,
            start_time=T0 + int((self.clock_ms + start_ms) * 1e6),
            attributes=attributes,
            end_on_exit=False,
        ) as span:
            yield span
        span.end(end_time=T0 + int((self.clock_ms + end_ms) * 1e6))


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    """Tracers writing spans files under tmp_path/traces, as `shopctl up`'s services do."""
    traced = Shop(tmp_path / "traces")
    yield traced
    for provider in traced.providers:
        provider.shutdown()  # closes the files


def served(method: str, target: str, status: int) -> dict[str, Any]:
    """A server span's attributes, as the aiohttp instrumentation sets them."""
    route = target.split("?")[0]
    return {"http.method": method, "http.target": target, "http.route": route,
            "http.status_code": status}  # fmt: skip


def called(method: str, url: str, status: int) -> dict[str, Any]:
    """A client span's attributes, as the aiohttp instrumentation sets them."""
    return {"http.method": method, "http.url": url, "http.status_code": status}


def failed_checkout(shop: Shop, request_id: str, took_ms: float = 40) -> None:
    """A checkout the order service refuses (not enough stock), as the services trace it."""
    server, client, end = SpanKind.SERVER, SpanKind.CLIENT, took_ms
    query = {"db.system": "postgresql", "db.statement": "SELECT id\n   FROM orders WHERE key = $1"}
    query["db.statement.parameters"] = "('hunter2',)"  # were asyncpg asked to capture them
    with shop.span(
        "gateway", "POST /api/orders", server, 0, end, served("POST", "/api/orders", 409)
    ):
        set_request_id(request_id)
        order_url = "http://127.0.0.1:3003/api/orders"
        with shop.span(
            "gateway", "POST", client, 1, end - 1, called("POST", order_url, 409)
        ) as call:
            call.set_status(StatusCode.ERROR)
            with shop.span(
                "order", "POST /api/orders", server, 2, end - 2, served("POST", "/api/orders", 409)
            ):
                set_request_id(request_id)
                record_error_code("insufficient_stock")
                with shop.span("order", "SELECT", client, 3, 5, query):
                    pass
                products = "http://127.0.0.1:3001/api/products?ids=1"
                find = {"db.system": "mongodb", "db.statement": "find products"}
                with (
                    shop.span("order", "GET", client, 6, end - 4, called("GET", products, 200)),
                    shop.span(
                        "product",
                        "GET /api/products",
                        server,
                        7,
                        end - 5,
                        served("GET", "/api/products?ids=1", 200),
                    ),
                    shop.span("product", "products.find", client, 8, 9, find),
                ):
                    pass
                with shop.span("order", "boom", SpanKind.INTERNAL, end - 4, end - 3):
                    record_failure(RuntimeError("the ledger is on fire"))


def test_a_trace_is_written_as_a_tree_without_parameters_and_drawn_as_a_waterfall(
    shop: Shop,
) -> None:
    traces = shop.traces
    failed_checkout(shop, "qa-run-000007")

    spans = list(read_spans(traces))
    assert len({span["trace_id"] for span in spans}) == 1 and len(spans) == 8
    assert not any("db.statement.parameters" in span["attributes"] for span in spans)
    assert "hunter2" not in "".join(path.read_text() for path in traces.iterdir())
    by_name = {(span["service"], span["name"]): span for span in spans}
    order = by_name["order", "POST /api/orders"]
    assert order["parent_id"] == by_name["gateway", "POST"]["span_id"]
    assert order["attributes"]["shop.request_id"] == "qa-run-000007"
    assert order["attributes"]["shop.error_code"] == "insufficient_stock"
    assert by_name["order", "boom"]["status"] == "error"
    assert by_name["order", "boom"]["error"] == "RuntimeError: the ledger is on fire"

    [found] = find_traces(traces, "qa-run-000007")
    console = Console(width=140, force_terminal=True, color_system="standard", record=True)
    console.print(waterfall(found, console.width))
    lines = console.export_text(styles=False, clear=False).splitlines()
    assert lines[0].startswith(f"Trace {found.trace_id}  request qa-run-000007")
    assert "8 spans in gateway, order, product  2 failed" in lines[0]
    assert lines[1].split()[:4] == ["span", "status", "statement", "ms"]
    label_width = lines[1].index("status") - 2
    rows = [line[:label_width].rstrip() for line in lines[2:]]
    assert rows == [
        "gateway POST /api/orders",
        "└─ gateway POST → order /api/orders",
        "   └─ order POST /api/orders",
        "      ├─ order postgresql SELECT",
        "      ├─ order GET → product /api/products",
        "      │  └─ product GET /api/products",
        "      │     └─ product mongodb find",
        "      └─ order boom",
    ]
    assert "insufficient_stock" in lines[4] and "409" in lines[4]
    assert "SELECT id FROM orders WHERE key = $1" in lines[5]  # on one line
    assert "RuntimeError: the ledger is on fire" in lines[9]
    # Bars on one axis: the root spans it all, a span 2 ms long is a sliver of it.
    assert lines[2].endswith("█" * 40) and lines[5].rstrip().endswith(" ██")

    coloured = console.export_text(styles=True).splitlines()
    red = "\x1b[1;31m"
    assert red in coloured[3] and red in coloured[9]  # the failed call, the failed span
    assert red not in coloured[2] and red not in coloured[5]


def trace_command(data_dir: Path, *args: str) -> Any:
    return CliRunner().invoke(
        shopctl_app, ["trace", *args, "--data-dir", str(data_dir)], env={"COLUMNS": "120"}
    )


def test_shopctl_trace_finds_a_trace_by_request_id_trace_id_or_as_the_latest_slow_one(
    shop: Shop, tmp_path: Path
) -> None:
    failed_checkout(shop, "qa-slow", took_ms=400)
    shop.clock_ms = 1000
    failed_checkout(shop, "qa-quick", took_ms=20)
    quick = find_traces(tmp_path / "traces", "qa-quick")[0]

    by_request = trace_command(tmp_path, "qa-quick")
    assert by_request.exit_code == 0, by_request.output
    assert f"Trace {quick.trace_id}  request qa-quick" in by_request.output
    by_trace = trace_command(tmp_path, quick.trace_id.upper())
    assert by_trace.exit_code == 0 and by_trace.output == by_request.output

    slow = trace_command(tmp_path, "--last")  # slower than 100 ms
    assert slow.exit_code == 0, slow.output
    assert "request qa-slow" in slow.output
    latest = trace_command(tmp_path, "--last", "--slower-than", "0")
    assert "request qa-quick" in latest.output

    unknown = trace_command(tmp_path, "qa-never-ran")
    assert unknown.exit_code == 1 and "no trace of 'qa-never-ran'" in unknown.output
    none_slow = trace_command(tmp_path, "--last", "--slower-than", "1000")
    assert none_slow.exit_code == 1 and "none of the 2 requests" in none_slow.output
    for args in ((), ("qa-quick", "--last")):
        asked_badly = trace_command(tmp_path, *args)
        assert asked_badly.exit_code == 1 and "a request id or a trace id" in asked_badly.output
    nothing = trace_command(tmp_path / "elsewhere", "qa-quick")
    assert nothing.exit_code == 1 and "no spans recorded" in nothing.output


def test_log_lines_name_the_trace_and_span_they_were_written_in(json_logs: Any) -> None:
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("test")
    with tracer.start_as_current_span("GET /api/products", kind=SpanKind.SERVER) as span:
        logging.getLogger("shop.test").info("inside")
    logging.getLogger("shop.test").info("outside")
    inside, outside = json_logs()[-2:]
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert list(inside)[:7] == [
        "ts",
        "level",
        "service",
        "logger",
        "request_id",
        "trace_id",
        "span_id",
    ]
    assert "trace_id" not in outside and "span_id" not in outside
