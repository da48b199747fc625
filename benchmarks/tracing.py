"""What tracing costs: `GET /api/products/:id` on the shop's product service, which runs with
tracing off (nothing configured: no instrumentation at all), beside copies of it recording
every span to a spans file (`TRACES_DIR`, what `shopctl up` sets) or sending them over OTLP
(`OTEL_EXPORTER_OTLP_ENDPOINT`, what a cluster sets) to a sink that answers every export at
once, and the same with one request in ten sampled."""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import drivers
import harness
from drivers import HttpRequest
from harness import BenchmarkError, measure

from shopctl import processes

OFF = "tracing off"
# What a busy cluster would run: one request in ten recorded; the other nine still pay for
# the instrumentation's own work.
ONE_IN_TEN = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
# The collector: takes every export (OTLP over HTTP) and answers 200 at once, a line per export.
OTLP_SINK = """
import os
from aiohttp import web

async def take(request):
    print(len(await request.read()), flush=True)
    return web.Response(content_type="application/x-protobuf")

app = web.Application()
app.router.add_post("/v1/traces", take)
web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None, access_log=None)
"""


def run(options: argparse.Namespace) -> dict[str, Any]:
    traces_dir = Path(tempfile.mkdtemp(prefix="traces-", dir=options.load.work_dir))
    sink_port = options.base_port + 9  # after the three variants
    sink_log = options.load.work_dir / "otlp-sink.log"
    otlp = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}"}
    variants = {  # line: (variant, its settings)
        "tracing on, to a spans file": ("product-spans-file", {"TRACES_DIR": str(traces_dir)}),
        "tracing on, OTLP to a collector": ("product-otlp", otlp),
        "tracing on, OTLP, 1 in 10 sampled": ("product-otlp-sampled", otlp | ONE_IN_TEN),
    }
    command = [sys.executable, "-c", OTLP_SINK]
    sink = processes.spawn(command, log_path=sink_log, env={"PORT": str(sink_port)})
    try:
        if not processes.wait_until(lambda: processes.port_in_use(sink_port), 30):
            raise BenchmarkError(f"the OTLP sink did not listen on {sink_port}: see {sink_log}")
        copies = {name: ("product", settings) for name, settings in variants.values()}
        with harness.running_shop(options, copies) as shop:
            ids = harness.seed_products(shop, options.products, categories=8)
            services = {OFF: "product"} | {line: name for line, (name, _) in variants.items()}
            for service in services.values():
                answer = harness.call("GET", f"{shop.url(service)}/api/products/{ids[0]}")
                if answer["data"]["id"] != ids[0]:
                    raise BenchmarkError(f"{service} answered another product: {answer}")
            by_id = [HttpRequest(f"/api/products/{product_id}") for product_id in ids]

            def reads(service: str) -> drivers.LoadResult:
                return drivers.http(shop.url(service), by_id, shop.load, service)

            rows = [
                measure(shop, line, service, reads, service) for line, service in services.items()
            ]
    finally:
        processes.stop(sink)
    if not any(traces_dir.iterdir()) or not sink_log.read_text().strip():
        raise BenchmarkError(f"no spans reached {traces_dir} or the OTLP sink ({sink_log})")
    harness.print_lines("GET /api/products/:id on the product service, tracing off and on", rows)
    ratios = harness.print_ratios(rows, [(line, OFF) for line in variants])
    return {"lines": [asdict(row) for row in rows], "ratios": ratios}
