"""Logging: one JSON line per record, each naming the request it belongs to."""

from __future__ import annotations

import logging
import sys
import threading
from datetime import UTC, datetime
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

import orjson
from aiohttp.http_exceptions import HttpProcessingError

from shopkit.context import REQUEST_ID

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
FLUSH_INTERVAL = 0.5  # seconds an info line may wait in the buffer


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
            "msg": record.getMessage(),
        }
        if self.worker is not None:
            line["worker"] = self.worker
        # Anything passed as `extra=` becomes a field of its own.
        for key in record.__dict__.keys() - _STANDARD_ATTRS:
            if not key.startswith("_"):
                line[key] = record.__dict__[key]
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class BufferedStreamHandler(logging.StreamHandler):
    """Writes records without a system call each: the stream is flushed for a warning or
    worse at once, and otherwise by a background thread every FLUSH_INTERVAL seconds.

    A flush per access line cost more CPU than the rest of the request's own code (see
    benchmarks/README.md); a SIGKILL may lose the last half second of info lines."""

    def __init__(self, stream: TextIO, interval: float = FLUSH_INTERVAL) -> None:
        super().__init__(stream)
        self._closed = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_periodically, args=(interval,), name="log-flush", daemon=True
        )
        self._flusher.start()

    def _flush_periodically(self, interval: float) -> None:
        while not self._closed.wait(interval):
            self.flush_now()

    def flush(self) -> None:
        """Called by ``emit`` after every record: deliberately nothing (see the class)."""

    def flush_now(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if record.levelno >= logging.WARNING:
            self.flush_now()

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
