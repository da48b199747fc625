"""Tracing with OpenTelemetry, set up once per process by ``run()``: which spans are made and
where they go.

Every service process instruments aiohttp (server spans for the requests it answers, client
spans for the calls it makes, which carry W3C ``traceparent``), asyncpg, redis and pymongo.
Spans are exported over OTLP (HTTP/protobuf) when the standard variables ask for it
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_TRACES_EXPORTER=otlp``; the exporter reads its other ``OTEL_EXPORTER_OTLP_*``
settings itself), and to a bounded JSON-lines file when ``TRACES_DIR`` names a directory
(``shopctl up`` sets it: see shopkit.span_files). With neither, or with
``OTEL_SDK_DISABLED=true``, nothing is instrumented at all, so tracing costs nothing: the
instrumentations' own work for a span no one records is about half of what a recorded one
costs (``benchmarks/run.py --only tracing``), and trace ids no one can look up would add
nothing to the request id the log lines carry anyway.

Only requests are traced: a span with no parent that is not a request's server span (a
background loop's query) is dropped, and so are the probes (/health, /ready, /metrics),
with everything below them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, StatusCode
from opentelemetry.util.types import Attributes

from shopkit.span_files import (
    ERROR_CODE_ATTRIBUTE,
    MAX_BYTES,
    REQUEST_ID_ATTRIBUTE,
    STATEMENT_ATTRIBUTE,
    SpanFile,
    spans_file_name,
)

log = logging.getLogger("shop.tracing")

# Spans wait this long before they are written to the file (the SDK's default is 5 s): a
# trace is there to look at a moment after its request answered.
FILE_EXPORT_DELAY_MS = 500
PROBE_ROUTES = frozenset({"/health", "/ready", "/metrics"})
# Attributes that may hold a statement's values; no instrumentation here sets them (asyncpg
# only when asked to capture parameters), and the file never keeps them.
_PARAMETER_ATTRIBUTES = ("db.statement.parameters", "db.query.parameter")
STATEMENT_LIMIT = 500


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def otlp_configured(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables ask for spans to be sent over OTLP."""
    exporters = {name.strip() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")}
    if "none" in exporters:
        return False
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return bool(endpoint) or "otlp" in exporters


def configure_tracing(
    service: str,
    environ: Mapping[str, str],
    traces_dir: Path | None = None,
    worker: int | None = None,
) -> TracerProvider | None:
    """Make this process trace as the module docstring says; the provider, to shut down
    (which writes what waits) when the process ends, or None when nothing is traced.
    Call it once, before the app is built: the instrumentations patch aiohttp's Application
    and ClientSession, which must be made after."""
    if _is_true(environ.get("OTEL_SDK_DISABLED")):
        return None
    exporters: list[SpanExporter] = []
    if otlp_configured(environ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter())  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*
    if traces_dir is not None:
        exporters.append(SpanFileExporter(traces_dir / spans_file_name(service, worker)))
    if not exporters:
        return None
    # The sampler the standard variables choose (OTEL_TRACES_SAMPLER: parent-based, always
    # on, unless they say otherwise), for requests only.
    chosen = TracerProvider(shutdown_on_exit=False).sampler
    provider = TracerProvider(
        sampler=RequestsOnly(chosen), resource=Resource.create({"service.name": service})
    )
    for exporter in exporters:
        delay = FILE_EXPORT_DELAY_MS if isinstance(exporter, SpanFileExporter) else None
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=delay))
    trace.set_tracer_provider(provider)
    _instrument(provider)
    log.info("tracing to %s", ", ".join(_describe(exporter) for exporter in exporters))
    return provider


def _describe(exporter: SpanExporter) -> str:
    if isinstance(exporter, SpanFileExporter):
        return str(exporter.file.path)
    return "OTLP"


def _instrument(provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    AioHttpServerInstrumentor().instrument(tracer_provider=provider)
    AioHttpClientInstrumentor().instrument(tracer_provider=provider)
    # Statements only: its parameters are captured only with capture_parameters=True.
    AsyncPGInstrumentor(capture_parameters=False).instrument(tracer_provider=provider)
    # Its statements are the command with every argument (keys too) replaced by "?".
    RedisInstrumentor().instrument(tracer_provider=provider)
    # Without capture_statement its statement is the command's name alone; the hook puts
    # the command's shape in its place, every value replaced by "?".
    PymongoInstrumentor().instrument(tracer_provider=provider, request_hook=_mongo_statement)


class RequestsOnly(Sampler):
    """Samples as ``chosen`` does, but never a trace that does not start with a request's
    server span (a background loop's queries and calls) or that starts with a probe."""

    def __init__(self, chosen: Sampler) -> None:
        self.chosen = chosen

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid and (
            kind is not SpanKind.SERVER or (attributes or {}).get("http.route") in PROBE_ROUTES
        ):
            return SamplingResult(Decision.DROP)
        return self.chosen.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"RequestsOnly{{{self.chosen.get_description()}}}"


def set_request_id(request_id: str) -> None:
    """Name the request on its server span (when it is recorded)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)


def record_error_code(code: str) -> None:
    """Name the error code a request is answered with on its span (when it is recorded)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(ERROR_CODE_ATTRIBUTE, code)


def record_failure(error: BaseException) -> None:
    """Put an error no one expected on the current span (it is answered 500)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.record_exception(error)
        span.set_status(StatusCode.ERROR, f"{type(error).__name__}: {error}")


# -- MongoDB statements without their values -----------------------------------------------

# The parts of each command that say what it does; documents written are never shown.
_MONGO_PARTS = {
    "find": ("filter", "sort", "projection"),
    "update": ("updates",),
    "delete": ("deletes",),
    "findAndModify": ("query", "update", "sort"),
    "aggregate": ("pipeline",),
    "count": ("query",),
    "distinct": ("key", "query"),
}
_DEPTH = 6
_DIGIT = re.compile(r"\d")
_LIST_ITEMS = 3


def mongo_statement(command_name: str, command: Mapping[str, Any]) -> str:
    """A MongoDB command as a statement that shows its shape and never its values:
    ``find products filter={category: ?, price: {$gte: ?}}``; field names and operators
    are kept (they are the query's, not the user's), every value is ``?``."""
    collection = command.get(command_name)
    parts = [command_name] + ([collection] if isinstance(collection, str) else [])
    for key in _MONGO_PARTS.get(command_name, ()):
        if key in command:
            parts.append(f"{key}={_shape(command[key], _DEPTH)}")
    return " ".join(parts)[:STATEMENT_LIMIT]


def _shape(value: Any, depth: int) -> str:
    if isinstance(value, Mapping):
        if depth == 0:
            return "{…}"
        inner = ", ".join(
            f"{_field(key)}: {_shape(item, depth - 1)}" for key, item in value.items()
        )
        return "{" + inner + "}"
    if isinstance(value, list | tuple) and value and all(isinstance(v, Mapping) for v in value):
        # A list of documents (updates, pipeline stages, $or branches): their shapes.
        shown = [_shape(item, depth - 1) for item in value[:_LIST_ITEMS]]
        if len(value) > _LIST_ITEMS:
            shown.append(f"…{len(value) - _LIST_ITEMS} more")
        return "[" + ", ".join(shown) + "]"
    return "?"


def _field(name: object) -> str:
    # A field path may hold a value of its own (`pending.order-42`, a map keyed by
    # reference): a part with a digit in it is shown as "?" too.
    return ".".join("?" if _DIGIT.search(part) else part for part in str(name).split("."))


def _mongo_statement(span: trace.Span, event: Any) -> None:
    if span.is_recording():
        span.set_attribute(STATEMENT_ATTRIBUTE, mongo_statement(event.command_name, event.command))


# -- the file exporter ---------------------------------------------------------------------

_KINDS = {kind: kind.name.lower() for kind in SpanKind}
_STATUSES = {code: code.name.lower() for code in StatusCode}


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """A span as one line of a spans file (see shopkit.span_files)."""
    context = span.get_span_context()
    parent = span.parent
    attributes = {
        key: value
        for key, value in (span.attributes or {}).items()
        if key not in _PARAMETER_ATTRIBUTES
    }
    record: dict[str, Any] = {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_id": format(parent.span_id, "016x") if parent is not None else None,
        "service": span.resource.attributes.get("service.name", "?"),
        "name": span.name,
        "kind": _KINDS.get(span.kind, "internal"),
        "start": span.start_time,
        "end": span.end_time,
        "status": _STATUSES.get(span.status.status_code, "unset"),
        "attributes": attributes,
    }
    error = span.status.description or _exception_text(span)
    if error:
        record["error"] = error
    return record


def _exception_text(span: ReadableSpan) -> str:
    for event in span.events:
        if event.name == "exception" and event.attributes:
            kind = event.attributes.get("exception.type", "")
            message = event.attributes.get("exception.message", "")
            return f"{kind}: {message}" if message else str(kind)
    return ""


class SpanFileExporter(SpanExporter):
    """Writes spans to a bounded JSON-lines file (shopkit.span_files), from the batch
    processor's thread, never the event loop."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES) -> None:
        self.file = SpanFile(path, max_bytes)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            self.file.write(orjson.dumps(span_record(span), default=str) + b"\n" for span in spans)
        except OSError as exc:
            log.warning("could not write %d spans to %s: %s", len(spans), self.file.path, exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.file.close()
