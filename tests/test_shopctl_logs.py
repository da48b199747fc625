"""`shopctl logs` on log files written by shopkit's own formatter: merged in time order
(also when a service's workers wrote out of order), filtered, passed on as JSON, followed as
they grow, and any bytes a file may hold read without failing. The same command on a
running shop is tested in test_tracing_e2e.py."""

from __future__ import annotations

import heapq
import json
import logging
import re
import subprocess
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import eventually_sync, following_logs, shop_env, shopctl

from shopctl.log_lines import LineFilter, LogFile, LogLine, in_time_order, merged, parse_since
from shopctl.logs import render
from shopkit.context import REQUEST_ID
from shopkit.logs import JsonFormatter

START = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def line(
    service: str,
    when: float | datetime,
    message: str,
    *,
    level: int = logging.INFO,
    request_id: str = "-",
    worker: int | None = None,
    **fields: object,
) -> str:
    """A line as the service's JsonFormatter writes it, at ``when`` (or so many seconds
    after START); ``fields`` as a service passes them with ``extra=``."""
    if not isinstance(when, datetime):
        # A tenth of a millisecond more: the formatter cuts the time to whole milliseconds.
        when = START + timedelta(seconds=when, microseconds=100)
    record = logging.makeLogRecord(
        {"name": "shop.test", "levelno": level, "levelname": logging.getLevelName(level)}
    )
    record.msg, record.created = message, when.timestamp()
    record.__dict__.update(fields)
    token = REQUEST_ID.set(request_id)
    try:
        return JsonFormatter(service, worker).format(record) + "\n"
    finally:
        REQUEST_ID.reset(token)


def write_logs(data_dir: Path, files: dict[str, list[str]]) -> Path:
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        with (logs / name).open("a") as handle:
            handle.write("".join(lines))
    return logs


def run_logs(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return shopctl("logs", "--data-dir", data_dir, *args, env=shop_env(TZ="UTC"))


@pytest.fixture
def shop_logs(tmp_path: Path) -> Path:
    """A data directory whose logs hold two requests across three services, a service
    whose two workers wrote out of order, a traceback on stderr and the databases' logs."""
    write_logs(
        tmp_path,
        {
            "gateway.log": [
                line("gateway", 0.0, "starting on 127.0.0.1:3000"),
                line("gateway", 1.002, "GET /api/products 200", request_id="r-1", ms=3.5),
                line("gateway", 2.004, "POST /api/orders 409", request_id="r-2", ms=8.0),
            ],
            "product.log": [
                # Worker 2 wrote its second late: its lines come after worker 1's later one.
                line("product", 1.500, "stock low", worker=1, level=logging.WARNING),
                line("product", 1.001, "GET /api/products 200", worker=2, request_id="r-1"),
                line("product", 2.002, "not enough stock", worker=1, request_id="r-2", id="p1"),
            ],
            "order.log": [
                line("order", 2.001, "POST /api/orders 409", request_id="r-2", trace_id=TRACE),
                "Traceback (most recent call last):\n",
                '  File "x.py", line 1, in <module>\n',
                line(
                    "order",
                    2.003,
                    "unexpected",
                    level=logging.ERROR,
                    request_id="r-2",
                    exc="Traceback\nValueError: bad",  # as JsonFormatter writes exc_info
                ),
            ],
            "mongodb.log": ["2026-12-06 09:30:01,000 - nx_27017 - INFO - not ours\n"],
            "redis.log": ["7346:C 06 Dec 2026 09:30:00.000 # not ours either\n"],
        },
    )
    return tmp_path


def messages(output: str) -> list[str]:
    return [json.loads(text)["msg"] for text in output.splitlines()]


def test_lines_of_every_service_come_merged_in_time_order(shop_logs: Path) -> None:
    shown = run_logs(shop_logs, "--json")
    assert shown.returncode == 0, shown.stderr
    records = [json.loads(text) for text in shown.stdout.splitlines()]
    assert [(r["service"], r["msg"]) for r in records] == [
        ("gateway", "starting on 127.0.0.1:3000"),
        ("product", "GET /api/products 200"),
        ("gateway", "GET /api/products 200"),
        ("product", "stock low"),
        ("order", "POST /api/orders 409"),
        # A line that is not JSON takes the time of the line before it, and stays in place.
        ("order", "Traceback (most recent call last):"),
        ("order", '  File "x.py", line 1, in <module>'),
        ("product", "not enough stock"),
        ("order", "unexpected"),
        ("gateway", "POST /api/orders 409"),
    ]
    # --json passes the services' lines on as written; the others become lines of that shape.
    written = (shop_logs / "logs/gateway.log").read_text().splitlines()
    assert shown.stdout.splitlines()[0] == written[0]
    foreign = records[5]
    assert (foreign["level"], foreign["logger"], foreign["ts"]) == (
        "warning",
        "stderr",
        "2026-12-06T09:30:02.001Z",
    )


def test_the_terminal_view_is_one_readable_line_each(shop_logs: Path) -> None:
    shown = run_logs(shop_logs)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "── 2026-12-06 (UTC)"
    assert lines[1].split() == [
        "09:30:00.000",
        "gateway",
        "INFO",
        "starting",
        "on",
        "127.0.0.1:3000",
    ]
    assert lines[2].split() == [
        "09:30:01.001",
        "product/2",
        "INFO",
        "GET",
        "/api/products",
        "200",
        "r-1",
    ]
    assert lines[3].split() == [
        "09:30:01.002",
        "gateway",
        "INFO",
        "GET",
        "/api/products",
        "200",
        "ms=3.5",
        "r-1",
    ]
    assert lines[4].split()[1:4] == ["product/1", "WARN", "stock"]
    # Fields beyond the usual ones follow the message; a traceback follows its line.
    assert "not enough stock id=p1  r-2" in shown.stdout
    unexpected = lines.index(next(text for text in lines if "unexpected" in text))
    assert lines[unexpected + 1 : unexpected + 3] == ["    Traceback", "    ValueError: bad"]
    # Coloured by level and service when asked (FORCE_COLOR: as on a terminal).
    coloured = shopctl(
        "logs", "--data-dir", shop_logs, env=shop_env(TZ="UTC", FORCE_COLOR="1")
    ).stdout
    assert "\x1b[" in coloured and "\x1b[1;31m" in coloured  # the error, in bold red


def test_control_characters_a_stranger_sent_never_reach_the_terminal(tmp_path: Path) -> None:
    # A request path is logged as the client sent it: ESC, BEL, a C1 CSI, a NUL.
    sent = "/api/products/\x1b]0;owned\x07\x1b[2J\u009b31m\x00\n10:00:00.000 forged"
    write_logs(
        tmp_path,
        {
            "gateway.log": [line("gateway", 0, f"GET {sent} 404", path=sent)],
            "cart.log": ["raw \x1b[31mred\x1b[0m on stderr\n"],
        },
    )
    for colour in ("", "1"):  # piped as it is; then as on a terminal
        shown = shopctl("logs", "--data-dir", tmp_path, env=shop_env(FORCE_COLOR=colour))
        assert shown.returncode == 0, shown.stderr
        # Only the colours shopctl sets itself may be escape sequences; nothing else is a
        # control character but the line ends.
        text = re.sub("\x1b\\[[0-9;]*m", "", shown.stdout) if colour == "1" else shown.stdout
        assert not [c for c in text if unicodedata.category(c) == "Cc" and c != "\n"]
        assert (
            "GET /api/products/\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\x00\\x0a10:00:00.000 forged 404"
            in text
        )
        assert len(text.splitlines()) == 3  # the day, the request, the stderr line
        assert "raw \\x1b[31mred\\x1b[0m on stderr" in text


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            ["--service", "order"],
            [
                "POST /api/orders 409",
                "Traceback (most recent call last):",
                '  File "x.py", line 1, in <module>',
                "unexpected",
            ],
        ),
        (["-s", "gateway", "-s", "product", "--level", "warning"], ["stock low"]),
        (["--level", "error"], ["unexpected"]),
        (
            ["--request-id", "r-2"],
            ["POST /api/orders 409", "not enough stock", "unexpected", "POST /api/orders 409"],
        ),
        (["--trace-id", TRACE.upper()], ["POST /api/orders 409"]),
        (
            ["--since", "2026-12-06T09:30:02.002"],
            ["not enough stock", "unexpected", "POST /api/orders 409"],
        ),
        (["--tail", "2"], ["unexpected", "POST /api/orders 409"]),
    ],
)
def test_filters_choose_the_lines(shop_logs: Path, options: list[str], expected: list[str]) -> None:
    shown = run_logs(shop_logs, "--json", *options)
    assert shown.returncode == 0, shown.stderr
    got = messages(shown.stdout)
    assert got == expected


def test_since_takes_durations_dates_and_times() -> None:
    now = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("1h30m", now) == now - timedelta(minutes=90)
    assert parse_since("2d", now) == now - timedelta(days=2)
    assert parse_since("2026-12-06T09:30Z", now) == datetime(2026, 12, 6, 9, 30, tzinfo=UTC)
    local = now.astimezone()
    assert parse_since("08:15", now) == local.replace(hour=8, minute=15, second=0).astimezone(UTC)
    for bad in ("5x", "yesterday", "25:00", "-1h", "1e999999999s", "\uff11h", "1h\x00", ""):
        with pytest.raises(ValueError, match="neither a duration"):
            parse_since(bad, now)
    with pytest.raises(ValueError, match="longer ago than any log line"):
        parse_since("99999999999d", now)


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (["--since", "soon"], "Invalid value for --since: 'soon' is neither a duration"),
        (["--trace-id", "xyz"], "Invalid value for --trace-id: 'xyz' is not a trace id"),
        (["--service", "warehouse"], "Invalid value for '--service'"),
        (["--level", "loud"], "Invalid value for '--level'"),
        (["--tail", "-1"], "Invalid value for '--tail'"),
    ],
)
def test_bad_options_are_refused_with_what_is_wrong(
    shop_logs: Path, options: list[str], complaint: str
) -> None:
    shown = run_logs(shop_logs, *options)
    assert shown.returncode == 2
    assert complaint in " ".join(shown.stderr.replace("│", " ").split())


def test_no_logs_and_no_match_say_so(
    shop_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    empty = tmp_path_factory.mktemp("empty")
    shown = run_logs(empty)
    assert shown.returncode == 1
    assert f"no service logs in {empty / 'logs'}" in " ".join(shown.stderr.split())
    none = run_logs(shop_logs, "--request-id", "never-sent")
    assert (none.returncode, none.stdout, none.stderr.strip()) == (0, "", "No log lines match.")


def test_following_shows_lines_as_they_are_written(tmp_path: Path) -> None:
    logs = write_logs(tmp_path, {"gateway.log": [line("gateway", 0, "before")]})

    def fresh(service: str, message: str, ago: float = 0.0) -> str:
        return line(service, datetime.now(UTC) - timedelta(seconds=ago), message)

    with following_logs(tmp_path) as followed:

        def shown() -> list[str]:
            return [record["msg"] for record in followed()]

        eventually_sync(lambda: shown() == ["before"], "the lines before following", seen=shown)
        # A later line of one file, then an earlier one of another (a worker's late write),
        # and a file that did not exist when following began: shown in time order.
        write_logs(tmp_path, {"gateway.log": [fresh("gateway", "second")]})
        write_logs(tmp_path, {"cart.log": [fresh("cart", "first", ago=0.3)]})
        eventually_sync(lambda: shown() == ["before", "first", "second"], "new lines", seen=shown)
        # A file cut short (as when `shopctl up` starts the shop again) is read anew.
        (logs / "gateway.log").write_text(fresh("gateway", "after restart"))
        eventually_sync(lambda: shown()[-1:] == ["after restart"], "the new file", seen=shown)


# -- any bytes a file may hold -------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=4,
)
file_lines = st.one_of(
    st.binary(max_size=80).map(lambda raw: raw.replace(b"\n", b"")),
    st.dictionaries(
        st.sampled_from(["ts", "level", "service", "msg", "request_id", "worker", "exc", "x"]),
        json_values,
        max_size=4,
    ).map(lambda record: json.dumps(record).encode()),
    st.datetimes(timezones=st.just(UTC)).map(
        lambda when: b'{"ts":"' + when.isoformat().encode() + b'","level":"info","msg":"m"}'
    ),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(file_lines, max_size=8), wanted=st.sampled_from([None, "r-1"]))
def test_any_file_content_is_read_line_for_line(
    tmp_path: Path, lines: list[bytes], wanted: str | None
) -> None:
    path = tmp_path / "cart.log"
    path.write_bytes(b"\n".join(lines) + b"\n")
    read = list(LogFile(path, 0).read_new())
    assert len(read) == sum(1 for raw in lines if raw.strip(b" \t\r\x0b\x0c"))
    for each in read:  # whatever the line, it is shown and passed on
        assert isinstance(json.loads(each.as_json()), dict)
        assert list(render(each, each.when))
    # Filtered, the same lines (in time order, which need not be the file's).
    filtered = merged([LogFile(path, 0)], LineFilter(request_id=wanted))
    expected = [each.order for each in read if LineFilter(request_id=wanted)(each)]
    assert sorted(each.order for each in filtered) == expected


@given(st.lists(st.lists(st.floats(0, 100), max_size=30), max_size=4))
def test_merging_keeps_time_order_for_lines_out_of_order_within_the_window(
    offsets: list[list[float]],
) -> None:
    # Each file's lines are less than 5 s out of order (the window), as workers write them.
    files = [
        [
            LogLine(START + timedelta(seconds=index + offset % 5), (number, index), "", "cart", {})
            for index, offset in enumerate(times)
        ]
        for number, times in enumerate(offsets)
    ]
    result = list(heapq.merge(*(in_time_order(lines) for lines in files)))
    assert [each.when for each in result] == sorted(each.when for lines in files for each in lines)
