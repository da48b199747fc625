"""The traces a shop started by `shopctl up` recorded (DATA_DIR/traces, shopkit.span_files):
found by trace id or request id, or the latest slow one, and put back together as trees."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shopkit.span_files import (
    ERROR_CODE_ATTRIBUTE,
    REQUEST_ID_ATTRIBUTE,
    STATEMENT_ATTRIBUTE,
    read_spans,
)

TRACE_ID = re.compile(r"[0-9a-fA-F]{32}")
MOST_TRACES_SHOWN = 5  # a request id a client sent again and again: its latest traces


@dataclass
class Span:
    """One recorded span, with the spans recorded under it."""

    record: dict[str, Any]
    children: list[Span] = field(default_factory=list)

    @property
    def span_id(self) -> str:
        return self.record["span_id"]

    @property
    def parent_id(self) -> str | None:
        return self.record.get("parent_id")

    @property
    def service(self) -> str:
        return str(self.record.get("service", "?"))

    @property
    def name(self) -> str:
        return str(self.record.get("name", ""))

    @property
    def kind(self) -> str:
        return str(self.record.get("kind", "internal"))

    @property
    def start(self) -> int:
        return int(self.record["start"])

    @property
    def end(self) -> int:
        return int(self.record.get("end") or self.record["start"])

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start) / 1e6

    @property
    def attributes(self) -> dict[str, Any]:
        attributes = self.record.get("attributes")
        return attributes if isinstance(attributes, dict) else {}

    @property
    def failed(self) -> bool:
        return self.record.get("status") == "error"

    @property
    def error(self) -> str:
        return str(self.record.get("error", ""))

    @property
    def request_id(self) -> str | None:
        return self.attributes.get(REQUEST_ID_ATTRIBUTE)

    @property
    def error_code(self) -> str:
        """The error code a service answered with (``insufficient_stock``), if it refused."""
        return str(self.attributes.get(ERROR_CODE_ATTRIBUTE, ""))

    @property
    def http_status(self) -> int | None:
        status = self.attributes.get(
            "http.status_code", self.attributes.get("http.response.status_code")
        )
        return status if isinstance(status, int) else None

    @property
    def http_method(self) -> str | None:
        return self.attributes.get("http.method", self.attributes.get("http.request.method"))

    @property
    def url(self) -> str | None:
        return self.attributes.get("http.url", self.attributes.get("url.full"))

    @property
    def path(self) -> str | None:
        """The path the request asked for, without its query string."""
        target = self.attributes.get("http.target", self.attributes.get("url.path"))
        if isinstance(target, str):
            return target.split("?", 1)[0]
        return urlsplit(self.url).path if isinstance(self.url, str) else None

    @property
    def database(self) -> str | None:
        """The datastore a client span spoke to (postgresql, mongodb, redis)."""
        return self.attributes.get("db.system", self.attributes.get("db.system.name"))

    @property
    def statement(self) -> str:
        """The datastore statement, on one line (the spans hold no parameters)."""
        statement = self.attributes.get(STATEMENT_ATTRIBUTE, self.attributes.get("db.query.text"))
        return " ".join(str(statement).split()) if statement else ""


@dataclass
class Trace:
    trace_id: str
    roots: list[Span]
    spans: int

    @property
    def start(self) -> int:
        return min(root.start for root in self.roots)

    @property
    def end(self) -> int:
        return max(span.end for span, _ in self.walk())

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start) / 1e6

    @property
    def request_id(self) -> str | None:
        return next((span.request_id for span, _ in self.walk() if span.request_id), None)

    @property
    def services(self) -> list[str]:
        return list(dict.fromkeys(span.service for span, _ in self.walk()))

    def walk(self) -> Iterator[tuple[Span, int]]:
        """Every span with its depth, depth first, each one's children in start order."""
        stack = [(root, 0) for root in reversed(self.roots)]
        while stack:
            span, depth = stack.pop()
            yield span, depth
            stack.extend((child, depth + 1) for child in reversed(span.children))


def build_trace(trace_id: str, records: list[dict[str, Any]]) -> Trace:
    """The spans of one trace as trees: a span whose parent was not recorded (the caller is
    outside the shop, or its spans are not written yet) is a root."""
    spans: dict[str, Span] = {}
    for record in records:
        spans.setdefault(record["span_id"], Span(record))
    roots = []
    for span in spans.values():
        parent = spans.get(span.parent_id) if span.parent_id else None
        (parent.children if parent is not None else roots).append(span)
    for span in spans.values():
        span.children.sort(key=lambda child: child.start)
    roots.sort(key=lambda root: root.start)
    return Trace(trace_id, roots, len(spans))


def load_trace(directory: Path, trace_id: str) -> Trace | None:
    trace_id = trace_id.lower()
    records = [r for r in read_spans(directory, containing=trace_id) if r["trace_id"] == trace_id]
    return build_trace(trace_id, records) if records else None


def find_traces(directory: Path, wanted: str) -> list[Trace]:
    """The traces ``wanted`` names: a trace id (32 hex digits), or the request id of the
    requests they answered (usually one; the latest few when a client reused it)."""
    if TRACE_ID.fullmatch(wanted):
        trace = load_trace(directory, wanted)
        if trace is not None:
            return [trace]
    starts: dict[str, int] = {}
    for record in read_spans(directory, containing=f'"{wanted}"'):
        attributes = record.get("attributes") or {}
        if attributes.get(REQUEST_ID_ATTRIBUTE) == wanted:
            trace_id = record["trace_id"]
            starts[trace_id] = min(starts.get(trace_id, record["start"]), record["start"])
    latest = sorted(starts, key=starts.__getitem__)[-MOST_TRACES_SHOWN:]
    return [trace for trace_id in latest if (trace := load_trace(directory, trace_id))]


def latest_slow_trace(directory: Path, slower_than_ms: float) -> tuple[Trace | None, int]:
    """The latest trace whose request took at least ``slower_than_ms`` (by its first span),
    and how many traces were looked at."""
    latest: dict[str, Any] | None = None
    seen = 0
    for record in read_spans(directory, containing='"parent_id":null'):
        if record.get("parent_id") is not None:
            continue
        seen += 1
        took_ms = ((record.get("end") or record["start"]) - record["start"]) / 1e6
        if took_ms >= slower_than_ms and (latest is None or record["start"] > latest["start"]):
            latest = record
    if latest is None:
        return None, seen
    return load_trace(directory, latest["trace_id"]), seen
