"""What a `shopctl checkout` run measured and found: per-step latencies, failures with their
request ids, the stock conservation check, as Rich tables or JSON."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table
from rich.text import Text

from shopctl.console import plural

FAILURES_KEPT = 200


@dataclass
class StepStats:
    name: str
    seconds: list[float] = field(default_factory=list)
    failures: int = 0

    @property
    def count(self) -> int:
        return len(self.seconds)

    def percentile_ms(self, fraction: float) -> float | None:
        """Nearest-rank percentile in milliseconds (None with no samples)."""
        if not self.seconds:
            return None
        ordered = sorted(self.seconds)
        rank = max(1, math.ceil(fraction * len(ordered)))
        return ordered[rank - 1] * 1000


@dataclass(frozen=True)
class Failure:
    step: str
    shopper: str
    message: str
    request_id: str

    def line(self) -> str:
        where = f" ({self.shopper})" if self.shopper else ""
        request = f" [request {self.request_id}]" if self.request_id else ""
        return f"{self.step}{where}: {self.message}{request}"


@dataclass(frozen=True)
class StockCheck:
    """Conservation for one product: units sold + stock left = stock at start."""

    product_id: str
    name: str
    at_start: int
    sold: int
    left: int | None  # None: could not be read back

    @property
    def ok(self) -> bool:
        return self.left is not None and self.at_start == self.sold + self.left


class Recorder:
    """Every call's time by step, every failure (the first FAILURES_KEPT kept in full)."""

    def __init__(self) -> None:
        self.steps: dict[str, StepStats] = {}
        self.failures: list[Failure] = []
        self.failure_count = 0

    def timed(self, step: str, seconds: float) -> None:
        self._step(step).seconds.append(seconds)

    def failed(self, step: str, shopper: str, message: str, request_id: str = "") -> None:
        self._step(step).failures += 1
        self.failure_count += 1
        if len(self.failures) < FAILURES_KEPT:
            self.failures.append(Failure(step, shopper, message, request_id))

    def _step(self, step: str) -> StepStats:
        stats = self.steps.get(step)
        if stats is None:
            stats = self.steps[step] = StepStats(step)
        return stats


@dataclass
class RunSummary:
    run_id: str
    target: str
    url: str
    seed: int
    scenarios: list[str]
    users: int
    concurrency: int
    duration: float | None
    elapsed: float
    sessions: int
    orders_placed: int
    orders_cancelled: int
    sold_out_answers: int
    recorder: Recorder
    stock: list[StockCheck]

    @property
    def passed(self) -> bool:
        return self.recorder.failure_count == 0 and all(check.ok for check in self.stock)

    def throughput(self, stats: StepStats) -> float:
        return stats.count / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value, 2)

        return {
            "passed": self.passed,
            "run_id": self.run_id,
            "target": self.target,
            "url": self.url,
            "seed": self.seed,
            "scenarios": self.scenarios,
            "users": self.users,
            "concurrency": self.concurrency,
            "duration_s": self.duration,
            "elapsed_s": round(self.elapsed, 3),
            "sessions": self.sessions,
            "orders": {
                "placed": self.orders_placed,
                "cancelled": self.orders_cancelled,
                "sold_out_answers": self.sold_out_answers,
            },
            "steps": [
                {
                    "step": stats.name,
                    "count": stats.count,
                    "failures": stats.failures,
                    "p50_ms": ms(stats.percentile_ms(0.50)),
                    "p95_ms": ms(stats.percentile_ms(0.95)),
                    "p99_ms": ms(stats.percentile_ms(0.99)),
                    "per_second": round(self.throughput(stats), 2),
                }
                for stats in self.recorder.steps.values()
            ],
            "conservation": {
                "ok": all(check.ok for check in self.stock),
                "products": [
                    {
                        "product_id": check.product_id,
                        "name": check.name,
                        "at_start": check.at_start,
                        "sold": check.sold,
                        "left": check.left,
                        "ok": check.ok,
                    }
                    for check in self.stock
                ],
            },
            "failure_count": self.recorder.failure_count,
            "failures": [
                {
                    "step": failure.step,
                    "shopper": failure.shopper,
                    "message": failure.message,
                    "request_id": failure.request_id,
                }
                for failure in self.recorder.failures
            ],
        }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def steps_table(summary: RunSummary) -> Table:
    table = Table(title="Steps (latency in ms)", title_justify="left")
    for column in ("step", "count", "failed", "p50", "p95", "p99", "per s"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for stats in summary.recorder.steps.values():
        failed = Text(str(stats.failures), style="red" if stats.failures else "green")
        table.add_row(
            stats.name,
            str(stats.count),
            failed,
            _ms(stats.percentile_ms(0.50)),
            _ms(stats.percentile_ms(0.95)),
            _ms(stats.percentile_ms(0.99)),
            f"{summary.throughput(stats):,.1f}",
        )
    return table


def outcome_lines(summary: RunSummary) -> list[str]:
    """The run in a few sentences, for the end of the report."""
    return [
        f"{plural(summary.sessions, 'shopper session')} ({', '.join(summary.scenarios)}) against "
        f"{summary.url} in {summary.elapsed:.1f} s, concurrency {summary.concurrency}, "
        f"seed {summary.seed}.",
        f"Orders: {summary.orders_placed} placed, {summary.orders_cancelled} cancelled, "
        f"{summary.sold_out_answers} refused for lack of stock (as expected).",
        conservation_line(summary.stock),
    ]


def conservation_line(checks: list[StockCheck]) -> str:
    """Whether units sold + stock left = stock at start held for every product checked."""
    bad = [check for check in checks if not check.ok]
    if bad:
        return f"Stock conservation FAILED for {len(bad)} of {plural(len(checks), 'product')}."
    sold = sum(check.sold for check in checks)
    touched = plural(len(checks), "product")
    return (
        f"Stock conservation holds for {'all ' if len(checks) > 1 else ''}{touched} touched "
        f"({plural(sold, 'unit')} sold + stock left = stock at start)."
    )


def conservation_table(checks: Iterable[StockCheck]) -> Table:
    """Only the products whose numbers do not add up."""
    table = Table(title="Stock that does not add up", title_justify="left")
    for column in ("product", "at start", "sold", "left", "missing"):
        table.add_column(column, justify="left" if column == "product" else "right")
    for check in checks:
        left = "?" if check.left is None else str(check.left)
        missing = "?" if check.left is None else str(check.at_start - check.sold - check.left)
        table.add_row(check.name, str(check.at_start), str(check.sold), left, missing)
    return table
