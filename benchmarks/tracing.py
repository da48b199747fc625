"""What tracing costs: `GET /api/products/:id` on product services side by side, in one run,
with tracing off (nothing configured, the default) and on (recording every span).

    .venv/bin/python benchmarks/tracing.py [--duration 10] [--rounds 3] [--json FILE]

The services differ only in their environment: nothing (tracing off: no instrumentation
at all), `TRACES_DIR` (what `shopctl up` sets: every span written to a bounded JSON-lines
file), and `OTEL_EXPORTER_OTLP_ENDPOINT` (what a cluster sets: every span sent over OTLP,
here to a sink process that answers every export at once; and the same with one request
in ten sampled). Each line is measured
`--rounds` times, interleaved, and the median round of each is reported, with the CPU the
service spent per request. Starts the embedded MongoDB-protocol server (or uses
MONGODB_URI, in a fresh database) and seeds it as run.py does; stops everything on the way
out. The latest figures are in README.md (design notes, Tracing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.dont_write_bytecode = True

import drivers  # noqa: E402 - sibling modules (this is a script), imported after the flag
import harness  # noqa: E402
import run  # noqa: E402
from harness import err  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from shopctl import processes  # noqa: E402

START_TIMEOUT = 30.0
# Line name -> what differs in the product service's environment ("{work}": the run's
# temporary directory, "{sink}": the OTLP sink's URL).
VARIANTS = {
    "tracing off": {},
    "tracing on, to a spans file": {"TRACES_DIR": "{work}/traces"},
    "tracing on, OTLP to a collector": {"OTEL_EXPORTER_OTLP_ENDPOINT": "{sink}"},
    # What a busy cluster would run: one request in ten recorded (the others still pay for
    # the instrumentation's own work, not for recording and sending).
    "tracing on, OTLP, 1 in 10 sampled": {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "{sink}",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
}
BASELINE = "tracing off"
# The collector: takes every export (OTLP over HTTP) and answers 200 at once.
OTLP_SINK = """
import os
from aiohttp import web

async def take(request):
    await request.read()
    return web.Response(content_type="application/x-protobuf")

app = web.Application()
app.router.add_post("/v1/traces", take)
web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None, access_log=None)
"""


@contextlib.contextmanager
def product_services(products: int) -> Iterator[tuple[dict[str, str], dict[str, int], list[str]]]:
    """A seeded datastore and one product service per variant: (URLs, PIDs, product ids)."""
    with contextlib.ExitStack() as cleanup:
        work_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="shop-bench-")))
        mongo_uri, _, _ = cleanup.enter_context(
            harness.mongo_database(work_dir, "shop_benchmark_tracing", "benchmark")
        )
        product_ids = run.seed_products(mongo_uri, products)
        base_env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("OTEL_") and key != "TRACES_DIR"
        }
        base_env |= {
            "HOST": "127.0.0.1",
            "JWT_SECRET": secrets.token_urlsafe(48),
            "MONGODB_URI": mongo_uri,
            # Required; a read by id asks it nothing (no token), so nothing need listen.
            "USER_SERVICE_URL": "http://127.0.0.1:9",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        started: list[processes.ManagedProcess] = []
        cleanup.callback(lambda: processes.stop_all(started))
        sink_port = processes.free_port()
        sink = processes.spawn(
            [sys.executable, "-c", OTLP_SINK],
            log_path=work_dir / "otlp-sink.log",
            env={**base_env, "PORT": str(sink_port)},
        )
        cleanup.callback(lambda: processes.stop(sink))
        places = {"work": str(work_dir), "sink": f"http://127.0.0.1:{sink_port}"}
        urls, pids, ports = {}, {}, {sink_port}
        for name, settings in VARIANTS.items():
            port = processes.free_port(avoid=ports)
            ports.add(port)
            chosen = {key: value.format(**places) for key, value in settings.items()}
            env = {**base_env, **chosen, "PORT": str(port)}
            process = processes.spawn(
                [sys.executable, "-m", "svc_product"],
                log_path=work_dir / f"{name.replace(' ', '-')}.log",
                env=env,
            )
            started.append(process)
            urls[name], pids[name] = f"http://127.0.0.1:{port}", process.pid
        for name, process in zip(VARIANTS, started, strict=True):
            harness.wait_for_health(name, process, urls[name], START_TIMEOUT)
        yield urls, pids, product_ids


def measure_all(
    args: argparse.Namespace, use_wrk: bool
) -> dict[str, list[tuple[drivers.LoadResult, float]]]:
    """Each variant's rounds: (load result, CPU µs the service spent per request)."""
    rounds: dict[str, list[tuple[drivers.LoadResult, float]]] = {name: [] for name in VARIANTS}
    with (
        product_services(args.products) as (urls, pids, product_ids),
        tempfile.TemporaryDirectory(prefix="shop-bench-wrk-") as scripts,
    ):
        by_id = [drivers.HttpRequest(f"/api/products/{pid}") for pid in product_ids]
        for number in range(1, args.rounds + 1):
            for name in VARIANTS:
                err.print(f"measuring {name} (round {number} of {args.rounds})")
                meter = harness.CpuMeter({name: pids[name]})
                result = drivers.http_load(
                    use_wrk,
                    urls[name],
                    by_id,
                    threads=args.threads,
                    work_dir=Path(scripts),
                    connections=args.connections,
                    duration=args.duration,
                    warmup=args.warmup,
                    name="by_id",
                )
                cpu = meter.read()[name]
                rounds[name].append((result, cpu / result.rate * 1e6 if result.rate else 0.0))
    return rounds


def report(rounds: dict[str, list[tuple[drivers.LoadResult, float]]]) -> list[dict]:
    rows = []
    for name, measured in rounds.items():
        median = sorted(measured, key=lambda pair: pair[0].rate)[len(measured) // 2]
        result, cpu_us = median
        rows.append(
            {
                "line": name,
                "rate": round(result.rate, 1),
                "p50_ms": round(result.p50_ms, 2),
                "p99_ms": round(result.p99_ms, 2),
                "errors": result.errors,
                "cpu_us_per_request": round(cpu_us, 1),
                "rates": [round(r.rate, 1) for r, _ in measured],
            }
        )
    baseline = next(row for row in rows if row["line"] == BASELINE)
    table = Table(
        title="GET /api/products/:id on the product service (median round)",
        title_justify="left",
    )
    for column in ("line", "req/s", "vs off", "p50 ms", "p99 ms", "CPU µs/req", "errors"):
        table.add_column(column, justify="left" if column == "line" else "right")
    for row in rows:
        table.add_row(
            row["line"],
            f"{row['rate']:,.0f}",
            f"{row['rate'] / baseline['rate']:.2f}" if baseline["rate"] else "-",
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{row['cpu_us_per_request']:.0f}",
            str(row["errors"]),
        )
    out = Console(highlight=False)
    out.print(table)
    for row in rows:
        rates = ", ".join(f"{rate:,.0f}" for rate in row["rates"])
        out.print(f"{row['line']}: rounds {rates} req/s")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--duration", type=float, default=10, help="seconds measured per round")
    add("--warmup", type=float, default=2, help="unmeasured seconds before each round")
    add("--rounds", type=int, default=3, help="rounds per line, interleaved; the median is kept")
    add("--connections", type=int, default=32)
    add("--threads", type=int, default=2, help="wrk's threads")
    add("--products", type=int, default=200)
    add("--driver", choices=("auto", "wrk", "python"), default="auto")
    add("--json", type=Path, metavar="FILE", help="also write the results here")
    args = parser.parse_args(argv)
    use_wrk = drivers.use_wrk(args.driver)
    if use_wrk is None:
        parser.error("wrk is not on PATH (Debian: apt-get install -y wrk)")
    signal.signal(signal.SIGTERM, harness.interrupt)
    with harness.ended_plainly():
        rows = report(measure_all(args, use_wrk))
    if args.json:
        args.json.write_text(json.dumps({"tracing": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
