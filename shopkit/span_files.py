"""Spans kept in files, one JSON object a line: what each service writes into TRACES_DIR (see
shopkit.tracing) and what `shopctl trace` reads back. Each process writes a file of its own,
bounded in size: past MAX_BYTES it becomes ``<name>.1`` (replacing the previous one) and a
new file starts, so a service keeps at most twice MAX_BYTES of its latest spans.

A line holds: ``trace_id`` (32 hex), ``span_id`` (16 hex), ``parent_id`` (16 hex or null),
``service``, ``name``, ``kind`` (server, client, internal, ...), ``start`` and ``end``
(nanoseconds since the epoch), ``status`` (unset, ok, error), ``error`` (a sentence, when
there is one) and ``attributes`` (as the instrumentations set them: statements, never
their parameters).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

# Set on every server span: `shopctl trace` finds a trace by the request id QA pastes.
REQUEST_ID_ATTRIBUTE = "shop.request_id"
# The envelope's error code on the server span of a request answered with an error.
ERROR_CODE_ATTRIBUTE = "shop.error_code"
# A datastore span's statement (the instrumentations' name for it), never its parameters.
STATEMENT_ATTRIBUTE = "db.statement"

SUFFIX = ".spans.jsonl"
ROTATED_SUFFIX = SUFFIX + ".1"
MAX_BYTES = 8 * 1024 * 1024


def spans_file_name(service: str, worker: int | None = None) -> str:
    """The file a service's process writes: one per process, so no two ever share one."""
    return f"{service}{SUFFIX}" if worker is None else f"{service}-{worker}{SUFFIX}"


class SpanFile:
    """Appends lines to one file, moving it aside once it would pass ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._size = 0

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
            self._size = self._file.tell()
        return self._file

    def write(self, lines: Iterable[bytes]) -> None:
        """Append whole lines (each ending in a newline), in one write."""
        text = b"".join(lines)
        if not text:
            return
        with self._lock:
            if self._file is not None and not self.path.exists():
                # Deleted (someone cleared the traces directory): start a new file, rather
                # than write on into one no one can read.
                self._file.close()
                self._file = None
            file = self._open()
            if self._size and self._size + len(text) > self.max_bytes:
                file.close()
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                self._file = None
                file = self._open()
            file.write(text)
            file.flush()
            self._size += len(text)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def span_files(directory: Path) -> list[Path]:
    """Every spans file in ``directory``, older (rotated) ones first."""
    if not directory.is_dir():
        return []
    rotated = sorted(directory.glob(f"*{ROTATED_SUFFIX}"))
    return rotated + sorted(directory.glob(f"*{SUFFIX}"))


def read_spans(directory: Path, containing: str | None = None) -> Iterator[dict[str, Any]]:
    """The spans recorded in ``directory``; with ``containing``, only those whose line holds
    that text (a cheap filter before parsing: an id). A line cut short (a process killed
    while writing) is skipped."""
    for path in span_files(directory):
        try:
            with path.open(encoding="utf-8", errors="replace") as file:
                for line in file:
                    if containing is not None and containing not in line:
                        continue
                    try:
                        span = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(span, dict) and "trace_id" in span:
                        yield span
        except FileNotFoundError:  # rotated away while we listed them
            continue
