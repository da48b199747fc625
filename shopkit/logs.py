"""Logging: one JSON line per record, each naming the request (and trace) it belongs to."""

from __future__ import annotations

import logging
import select
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import orjson
from aiohttp.http_exceptions import HttpProcessingError
from opentelemetry.trace import get_current_span

from shopkit.context import REQUEST_ID

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
FLUSH_INTERVAL = 0.5  # seconds an info line may wait in the buffer
MAX_PENDING = 1000  # lines that may wait at most (a few hundred KiB)
WRITE_SIZE = select.PIPE_BUF  # bytes a pipe writes in one piece (4096 on Linux)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, worker: int | None = None) -> None:
        super().__init__()
        self.service = service
        # Which of a service's processes wrote the line, when it runs several (WORKERS > 1):
        # 1 .. N for the workers, 0 for the process that supervises them.
        self.worker = worker
        self._second = -1
        self._second_text = ""

    def _timestamp(self, created: float) -> str:
        # An access line per request: format the date and time once a second, not each time.
        second = int(created)
        if second != self._second:
            moment = datetime.fromtimestamp(second, UTC)
            self._second, self._second_text = second, moment.strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "request_id": REQUEST_ID.get(),
        }
        # The trace and span the line was written in (shopkit.tracing), read here rather
        # than by the logging instrumentation, whose record fields would only reach the line
        # if it were set up before this module read the standard attributes.
        span = get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"] = format(span.trace_id, "032x")
            line["span_id"] = format(span.span_id, "016x")
        line["msg"] = record.getMessage()
        if self.worker is not None:
            line["worker"] = self.worker
        # Anything passed as `extra=` becomes a field of its own.
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key[0] != "_":
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


# An INFO record's attributes that are the same for every access line (see request_record).
_INFO_RECORD = {
    **vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None)),
    # What configure_logging stops collecting.
    "thread": None,
    "threadName": None,
    "processName": None,
    "process": None,
}


def request_record(logger: str, message: str, fields: Mapping[str, Any]) -> logging.LogRecord:
    """The INFO record ``logging.getLogger(logger).info(message, extra=fields)`` would make
    (``message`` already formatted), for the line every request writes. It is built from a
    template, without LogRecord.__init__'s work for each record (the source file's base
    name and module, the level's name), which made the access line cost more than the rest
    of the request's middleware; pass it to ``Logger.handle``, so that the logger's level,
    filters and handlers apply as they do to every other record."""
    record = logging.LogRecord.__new__(logging.LogRecord)
    attributes = record.__dict__
    attributes.update(_INFO_RECORD)
    now = time.time()
    attributes["name"] = logger
    attributes["msg"] = message
    attributes["created"] = now
    attributes["msecs"] = int((now - int(now)) * 1000) + 0.0
    attributes["relativeCreated"] = (now - logging._startTime) * 1000  # type: ignore[attr-defined]
    attributes.update(fields)
    return record


class BufferedStreamHandler(logging.StreamHandler):
    """Writes records without a system call each: their lines wait in the handler and are
    written together, at once for a warning or worse (after the lines before it), and
    otherwise by a background thread every FLUSH_INTERVAL seconds, or as soon as
    MAX_PENDING lines wait.

    A write per access line cost more CPU than the rest of the request's own code (see
    benchmarks/README.md). The handler keeps the lines itself instead of leaving that to
    the stream's buffer, which PYTHONUNBUFFERED=1 (set in the Dockerfile) takes away from
    stdout. A SIGKILL may lose the last half second of info lines."""

    def __init__(self, stream: TextIO, interval: float = FLUSH_INTERVAL) -> None:
        super().__init__(stream)
        self._pending: list[str] = []  # formatted lines not yet written (under self.lock)
        self._closed = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_periodically, args=(interval,), name="log-flush", daemon=True
        )
        self._flusher.start()

    def _flush_periodically(self, interval: float) -> None:
        while not self._closed.wait(interval):
            try:
                self.flush_now()
            except Exception:  # stdout gone: the lines are lost, the service goes on
                self._pending.clear()

    def flush(self) -> None:
        """Called by StreamHandler after a record: deliberately nothing (see the class)."""

    def flush_now(self) -> None:
        """Write the waiting lines and flush the stream, in writes of whole lines of at most
        WRITE_SIZE bytes each: a service's workers share one stdout, and a pipe keeps a write
        that small in one piece, so their lines never cut into each other."""
        with self.lock:  # type: ignore[union-attr]
            pending, self._pending = self._pending, []
            if not self.stream:
                return
            chunk: list[str] = []
            size = 0
            for line in pending:
                length = len(line) if line.isascii() else len(line.encode())
                if chunk and size + length > WRITE_SIZE:
                    self._write("".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += length
            if chunk:
                self._write("".join(chunk))
            elif hasattr(self.stream, "flush"):
                self.stream.flush()

    def _write(self, text: str) -> None:
        self.stream.write(text)
        if hasattr(self.stream, "flush"):  # one write system call per chunk, not per buffer
            self.stream.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING or len(self._pending) >= MAX_PENDING:
                self.flush_now()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self._closed.set()
        self.flush_now()
        super().close()


class MalformedRequestsAreWarnings(logging.Filter):
    """aiohttp logs every request it cannot parse (a bad request line, a header with a
    control character, one too long) at error level with a traceback, before any of our
    code runs: a stranger could fill the error log as fast as it sends bytes. Those are the
    client's mistake, answered 400: one warning line naming it, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = f"malformed request refused ({type(exc).__name__}: {exc.message})"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def configure_logging(
    service: str, level: str = "INFO", stream: TextIO | None = None, worker: int | None = None
) -> None:
    """Configure the root logger once, at process start (from ``run()``); ``worker`` names
    the process in every line when the service runs several (see JsonFormatter)."""
    # Our lines name no thread, process or source line: skip collecting them per record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # documented in the logging HOWTO's "Optimization" section
    handler = BufferedStreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter(service, worker))
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, BufferedStreamHandler):
            old.close()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log is replaced by ours (which carries the request id).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestsAreWarnings) for f in server_log.filters):
        server_log.addFilter(MalformedRequestsAreWarnings())


def mask_url(url: str) -> str:
    """A connection URL with its password replaced by ***, fit for a log line or a message."""
    parts = urlsplit(url)
    try:
        password = parts.password
    except ValueError:
        return "<unparseable url>"
    if not password:
        return url
    user_info, _, host = parts.netloc.rpartition("@")
    user = user_info.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
