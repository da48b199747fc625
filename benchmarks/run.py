"""Run the benchmarks: each scenario starts the shop with the code `shopctl up` runs, measures
its lines, and prints them with the ratios that matter, all from the same run.

    .venv/bin/python benchmarks/run.py [--only catalogue,checkout] [--duration 10] [--json FILE]

Everything a scenario starts is stopped when it ends, also on Ctrl-C, SIGTERM or an error.
See benchmarks/README.md for what each line means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import carts
import catalogue
import checkouts
import drivers
import harness
import logins
import order_search
import scale
import tracing

SCENARIOS = {
    "catalogue": catalogue.reads,
    "sales": catalogue.sales,
    "carts": carts.run,
    "scale": scale.run,
    "logins": logins.run,
    "checkout": checkouts.run,
    "tracing": tracing.run,
    "order-search": order_search.run,
}


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add = parser.add_argument
    add("--only", default=",".join(SCENARIOS), metavar="SCENARIOS", help="comma-separated")
    add("--duration", type=float, default=10, help="seconds measured per line")
    add("--warmup", type=float, default=2, help="unmeasured seconds before each line")
    add("--connections", type=int, default=32, help="concurrent clients of an HTTP line")
    add("--driver", choices=("auto", "wrk", "python"), default="auto", help="HTTP load driver")
    add("--threads", type=int, default=2, help="wrk's threads")
    add("--base-port", type=int, default=5100, help="the gateway's; the rest take the next 10")
    add("--json", type=Path, metavar="FILE", help="also write the results here")
    add("--products", type=int, default=200, help="catalogue, sales, carts, tracing: products")
    add("--orders", type=int, default=20_000, help="sales: order lines between before and after")
    add("--scales", type=_numbers, default="1000,10000,100000", help="scale: catalogue sizes")
    add("--order-scales", type=_numbers, default="10000,100000", help="order-search: orders held")
    add("--bcrypt-rounds", type=_numbers, default="12,10", help="logins: BCRYPT_ROUNDS values")
    add("--accounts", type=int, default=200, help="logins: customers registered per rounds value")
    add("--shoppers", type=int, default=300, help="checkout: measured shoppers, one order each")
    add("--concurrency", type=int, default=8, help="checkout: shoppers active at once")
    add("--scarce", action="store_true", help="checkout: stock for a third of what carts want")
    add("--via-gateway", action="store_true", help="checkout: through the gateway")
    options = parser.parse_args(argv)
    options.only = [name.strip() for name in options.only.split(",") if name.strip()]
    if unknown := set(options.only) - set(SCENARIOS):
        parser.error(f"no scenario {', '.join(unknown)}; there are {', '.join(SCENARIOS)}")
    if options.products < 160 or options.duration < 1 or options.warmup < 0:
        parser.error("--products must be at least 160, --duration 1, --warmup 0")
    if options.driver == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not on PATH (Debian: apt-get install -y wrk)")
    return options


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that every `finally` stops what it started


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    use_wrk = options.driver == "wrk" or (options.driver == "auto" and bool(shutil.which("wrk")))
    machine = f"{os.cpu_count()} cores, Python {platform.python_version()}"
    driver = "wrk" if use_wrk else "the Python driver (no wrk: HTTP rates read low)"
    harness.out.print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine}, HTTP load: {driver}")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="shop-bench-") as work_dir:
        load = (options.connections, options.duration, options.warmup, use_wrk, options.threads)
        options.load = drivers.Load(*load, Path(work_dir))
        try:
            for name in options.only:
                harness.err.rule(name)
                results[name] = SCENARIOS[name](options)
        except harness.BenchmarkError as exc:
            harness.err.print(f"[red]benchmark failed:[/] {exc}")
            return 1
        except KeyboardInterrupt:
            harness.err.print("interrupted; everything this run started is stopped")
            return 130
    if options.json:
        report = {"machine": machine, "settings": vars(options), **results}
        options.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if all(result.get("passed", True) for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
