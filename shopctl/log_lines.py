"""The services' log files of a shop started by `shopctl up` (DATA_DIR/logs, one per
service, shopkit.logs' JSON lines): read, filtered, and merged into one stream in time order,
whole or as they grow."""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from shopctl.services import SERVICES

LEVELS = ("debug", "info", "warning", "error", "critical")
# A line that is not one of ours (a traceback Python printed before logging was set up, a
# library's warning on stderr) is shown at this level: it is rare and worth a look.
FOREIGN_LEVEL = "warning"
# How far out of time order a file's lines may be: a service's workers share one file and
# each writes its lines every half second (shopkit.logs.FLUSH_INTERVAL), so a later line of
# one worker can come before an earlier one of another.
REORDER_WINDOW = timedelta(seconds=5)
READ_SIZE = 1 << 16
SERVICE_NAMES = frozenset(service.name for service in SERVICES)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(order=True)
class LogLine:
    """One line of one file: ``when`` is its ``ts`` (a foreign line takes its file's last
    one), ``order`` keeps a file's lines in the order written when their times tie."""

    when: datetime
    order: tuple[int, int]
    raw: str = field(compare=False)
    source: str = field(compare=False)  # the file's name without .log: the service, a variant
    record: dict[str, Any] | None = field(compare=False)

    @property
    def level(self) -> str:
        if self.record is None:
            return FOREIGN_LEVEL
        return str(self.record.get("level", "info")).lower()

    @property
    def service(self) -> str:
        if self.record is not None and isinstance(self.record.get("service"), str):
            return self.record["service"]
        return self.source.split("-", 1)[0]

    def field(self, name: str) -> Any:
        return None if self.record is None else self.record.get(name)

    def as_json(self) -> str:
        """The line as written; a foreign line as a JSON line of the same shape, so what
        reads the output (jq, a collector) sees only JSON."""
        if self.record is not None:
            return self.raw
        line = {
            "ts": _format_ts(self.when),
            "level": FOREIGN_LEVEL,
            "service": self.service,
            "logger": "stderr",
            "request_id": "-",
            "msg": self.raw,
        }
        return orjson.dumps(line).decode()


@dataclass(frozen=True)
class LineFilter:
    """Which lines to show; an empty field lets every line through."""

    services: frozenset[str] = frozenset()
    min_level: str = "debug"
    request_id: str | None = None
    trace_id: str | None = None
    since: datetime | None = None

    def __call__(self, line: LogLine) -> bool:
        if self.since is not None and line.when < self.since:
            return False
        if self.services and line.service not in self.services and line.source not in self.services:
            return False
        if _level_rank(line.level) < _level_rank(self.min_level):
            return False
        if self.request_id is not None and line.field("request_id") != self.request_id:
            return False
        return self.trace_id is None or line.field("trace_id") == self.trace_id

    def may_match(self, raw: bytes) -> bool:
        """A cheap test on the line's bytes before it is parsed: an id asked for must be in it."""
        for wanted in (self.request_id, self.trace_id):
            if wanted is not None and wanted.encode() not in raw:
                return False
        return True


def _level_rank(level: str) -> int:
    try:
        return LEVELS.index(level)
    except ValueError:
        return LEVELS.index("info")


def service_log_files(directory: Path) -> list[Path]:
    """The log files of the services (and of any variant the benchmarks start, such as
    cart-2-workers), not of the embedded database servers beside them."""
    if not directory.is_dir():
        return []
    return sorted(
        path
        for path in directory.glob("*.log")
        if path.stem.split("-", 1)[0] in SERVICE_NAMES and path.is_file()
    )


class LogFile:
    """One log file, read from where the last read stopped; a file that was replaced or
    cut short is read again from its start."""

    def __init__(self, path: Path, number: int) -> None:
        self.path = path
        self.source = path.stem
        self.number = number
        self._offset = 0
        self._inode: int | None = None
        self._partial = b""
        self._sequence = 0
        self._last_when: datetime | None = None

    def read_new(self, wanted: LineFilter | None = None) -> Iterator[LogLine]:
        """The complete lines written since the last read (that ``wanted`` may let through:
        the rest are skipped before they are parsed when they cannot match)."""
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return
        with handle:
            status = os.fstat(handle.fileno())
            if status.st_ino != self._inode or status.st_size < self._offset:
                self._inode, self._offset, self._partial = status.st_ino, 0, b""
            handle.seek(self._offset)
            while chunk := handle.read(READ_SIZE):
                self._offset += len(chunk)
                *lines, self._partial = (self._partial + chunk).split(b"\n")
                for raw in lines:
                    line = self._parse(raw, status.st_mtime, wanted)
                    if line is not None:
                        yield line

    def _parse(self, raw: bytes, mtime: float, wanted: LineFilter | None) -> LogLine | None:
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            return None
        self._sequence += 1
        if raw[:1] == b"{" and wanted is not None and not wanted.may_match(raw):
            # Still read its time: a foreign line after it takes it.
            self._last_when = _parse_ts(_peek_ts(raw)) or self._last_when
            return None
        record = _json_object(raw)
        when = _parse_ts(record.get("ts")) if record is not None else None
        if when is None:
            when = self._last_when or datetime.fromtimestamp(mtime, UTC)
        self._last_when = when
        text = raw.decode("utf-8", "replace")
        return LogLine(when, (self.number, self._sequence), text, self.source, record)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    if raw[:1] != b"{":
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _peek_ts(raw: bytes) -> str | None:
    # shopkit.logs writes "ts" first: {"ts":"2026-12-06T09:59:35.690Z",...
    if raw.startswith(b'{"ts":"'):
        return raw[7:31].decode("ascii", "replace")
    record = _json_object(raw)
    return None if record is None else record.get("ts")


def _parse_ts(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _format_ts(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def in_time_order(
    lines: Iterable[LogLine], window: timedelta = REORDER_WINDOW
) -> Iterator[LogLine]:
    """``lines`` sorted by time, given that none comes more than ``window`` after a line
    written later (as within one file), holding only the lines of that window."""
    waiting: list[LogLine] = []
    for line in lines:
        heapq.heappush(waiting, line)
        while waiting and waiting[0].when < line.when - window:
            yield heapq.heappop(waiting)
    while waiting:
        yield heapq.heappop(waiting)


def merged(files: Iterable[LogFile], wanted: LineFilter) -> Iterator[LogLine]:
    """The lines of every file written so far that ``wanted`` lets through, in time order."""
    streams = [in_time_order(log.read_new(wanted)) for log in files]
    return (line for line in heapq.merge(*streams) if wanted(line))


class Follower:
    """The files of a logs directory as they grow: ``poll`` gives the lines written since
    the last poll, in time order, holding back each line for ``hold`` so that a line a
    worker still buffers (written up to half a second late) takes its place. Files that
    appear later (a service started after) are read from their start."""

    def __init__(self, directory: Path, wanted: LineFilter, hold: timedelta) -> None:
        self.directory = directory
        self.wanted = wanted
        self.hold = hold
        self.files: dict[Path, LogFile] = {}
        self._waiting: list[LogLine] = []

    def catch_up(self) -> Iterator[LogLine]:
        """What the files hold now, in time order (the lines before following them)."""
        return merged(self._current_files(), self.wanted)

    def poll(self, now: datetime, final: bool = False) -> list[LogLine]:
        for log in self._current_files():
            for line in log.read_new(self.wanted):
                if self.wanted(line):
                    heapq.heappush(self._waiting, line)
        ready = []
        while self._waiting and (final or self._waiting[0].when <= now - self.hold):
            ready.append(heapq.heappop(self._waiting))
        return ready

    def _current_files(self) -> list[LogFile]:
        for path in service_log_files(self.directory):
            if path not in self.files:
                self.files[path] = LogFile(path, len(self.files))
        return list(self.files.values())


def parse_since(text: str, now: datetime) -> datetime:
    """A time given as how long ago (90s, 15m, 2h, 1d, 1h30m) or as an ISO 8601 date or
    time (2026-12-06, 2026-12-06T09:30, 09:30 for today; local time unless it says)."""
    text = text.strip()
    if _DURATION.fullmatch(text):
        seconds = sum(float(amount) * _UNITS[unit] for amount, unit in _DURATION_PART.findall(text))
        try:
            return now - timedelta(seconds=seconds)
        except OverflowError:
            raise ValueError(f"{text!r} is longer ago than any log line") from None
    local_now = now.astimezone()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        try:
            clock = datetime.strptime(text, "%H:%M:%S" if text.count(":") == 2 else "%H:%M")
        except ValueError:
            raise ValueError(
                f"{text!r} is neither a duration (90s, 15m, 2h, 1d) nor a date or time "
                "(2026-12-06, 2026-12-06T09:30, 09:30)"
            ) from None
        when = local_now.replace(
            hour=clock.hour, minute=clock.minute, second=clock.second, microsecond=0
        )
    if when.tzinfo is None:
        when = when.replace(tzinfo=local_now.tzinfo)
    return when.astimezone(UTC)
