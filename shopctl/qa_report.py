"""What a `shopctl checkout` run measured and found: per-step latencies, failures with their
request ids, the stock conservation check, what it verified of totals, delivery, payments,
declined cards, guest carts and e-mails, as Rich tables or JSON."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table
from rich.text import Text

from shopctl.chaos import FaultRecord
from shopctl.console import plural
from shopctl.errors import command

FAILURES_KEPT = 200


@dataclass
class StepStats:
    name: str
    seconds: list[float] = field(default_factory=list)
    failures: int = 0
    # Under --chaos: answers that said "not now" during a fault, waited out and retried.
    refused: int = 0

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

    def refused(self, step: str) -> None:
        self._step(step).refused += 1

    def _step(self, step: str) -> StepStats:
        stats = self.steps.get(step)
        if stats is None:
            stats = self.steps[step] = StepStats(step)
        return stats


@dataclass
class ChaosTally:
    """What --chaos added to a run: the faults, its extra checks, how the shop settled."""

    faults: list[FaultRecord] = field(default_factory=list)
    # Processes that had to be started again after the schedule (an error, an interruption).
    restarted_at_end: list[str] = field(default_factory=list)
    retried_checkouts: int = 0
    carts_kept: int = 0
    # Placed during a fault, their cart emptied by the order service's recovery afterwards.
    carts_cleared_late: int = 0
    replays_checked: int = 0
    orders_checked: int = 0
    settled_after: float | None = None
    settle_note: str = ""

    @property
    def recovered(self) -> bool:
        return all(fault.ready_after is not None for fault in self.faults)

    def to_json(self) -> dict[str, Any]:
        return {
            "recovered": self.recovered,
            "faults": [fault.to_json() for fault in self.faults],
            "restarted_at_end": self.restarted_at_end,
            "checkouts_retried": self.retried_checkouts,
            "carts_kept_after_503": self.carts_kept,
            "carts_cleared_by_recovery": self.carts_cleared_late,
            "orders_checked": self.orders_checked,
            "keys_replayed": self.replays_checked,
            "settled_after_s": None if self.settled_after is None else round(self.settled_after, 2),
            "settle_note": self.settle_note,
        }


@dataclass
class MailTally:
    """The e-mail check: one e-mail per event (placed, cancelled) of the run's orders, read
    from the local shop's SMTP sink; `skipped` says why it was not made."""

    expected: int = 0
    found: int = 0
    missing: int = 0
    duplicates: int = 0
    # Under --chaos: owed but never arrived, maybe lost on purpose (an e-mail whose sending
    # a fault interrupted is 'unknown' in the outbox and never sent again).
    not_verifiable: int = 0
    skipped: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": not self.skipped,
            "skipped_because": self.skipped or None,
            "expected": self.expected,
            "found_once": self.found,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "not_verifiable": self.not_verifiable,
        }


@dataclass
class Verification:
    """What the run verified beyond each step's answer, counted for the report (failures
    are in the Recorder)."""

    # Orders whose totals were checked to the cent: subtotal = lines, delivery per the
    # rules (by option, and how many went free), total = subtotal + delivery.
    totals_checked: int = 0
    delivery: Counter[str] = field(default_factory=Counter)
    free_delivery: int = 0
    # Checkouts refused as the test card says (by decline code, or payment_unavailable),
    # each leaving the cart as it was and placing no order.
    refusals: Counter[str] = field(default_factory=Counter)
    # Orders read back at the end: authorised (one reference each), voided when cancelled.
    payments_authorised: int = 0
    payments_voided: int = 0
    saved_addresses: int = 0
    guest_carts_merged: int = 0
    mail: MailTally = field(default_factory=MailTally)

    def to_json(self) -> dict[str, Any]:
        return {
            "totals_checked": self.totals_checked,
            "delivery": dict(sorted(self.delivery.items())),
            "free_delivery": self.free_delivery,
            "payment_refusals": dict(sorted(self.refusals.items())),
            "payments": {
                "authorised": self.payments_authorised,
                "voided": self.payments_voided,
            },
            "saved_addresses": self.saved_addresses,
            "guest_carts_merged": self.guest_carts_merged,
            "emails": self.mail.to_json(),
        }


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
    # Sessions ended mid-way by a second Ctrl-C: an order of theirs may be missing.
    cut_short: int = 0
    # Sessions that found the products' stock all bought by the run, and only browsed.
    browse_only: int = 0
    # Set when a signal ended the run early ("Ctrl-C", "SIGTERM"): the report is partial.
    interrupted: str | None = None
    chaos: ChaosTally | None = None
    verification: Verification = field(default_factory=Verification)

    @property
    def passed(self) -> bool:
        chaos_ok = self.chaos is None or self.chaos.recovered
        return (
            self.recorder.failure_count == 0 and all(check.ok for check in self.stock) and chaos_ok
        )

    @property
    def refused(self) -> int:
        return sum(stats.refused for stats in self.recorder.steps.values())

    def throughput(self, stats: StepStats) -> float:
        return stats.count / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value, 2)

        return {
            "passed": self.passed,
            "interrupted": self.interrupted is not None,
            "sessions_cut_short": self.cut_short,
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
            "sessions_browse_only": self.browse_only,
            "steps": [
                {
                    "step": stats.name,
                    "count": stats.count,
                    "failures": stats.failures,
                    "refused_during_faults": stats.refused,
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
            "verified": self.verification.to_json(),
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
            "chaos": self.chaos.to_json() if self.chaos is not None else None,
        }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def steps_table(summary: RunSummary) -> Table:
    table = Table(title="Steps (latency in ms)", title_justify="left")
    chaos = summary.chaos is not None
    columns = ["step", "count", "failed", *(["refused"] if chaos else []), "p50", "p95"]
    for column in [*columns, "p99", "per s"]:
        table.add_column(column, justify="left" if column == "step" else "right")
    for stats in summary.recorder.steps.values():
        failed = Text(str(stats.failures), style="red" if stats.failures else "green")
        refused = [Text(str(stats.refused), style="yellow" if stats.refused else "")]
        table.add_row(
            stats.name,
            str(stats.count),
            failed,
            *(refused if chaos else []),
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
        *([bought_out_line(summary.browse_only)] if summary.browse_only else []),
        conservation_line(summary.stock),
        *verification_lines(summary.verification),
        *(chaos_lines(summary.chaos, summary.refused) if summary.chaos else []),
    ]


def bought_out_line(sessions: int) -> str:
    return (
        f"{plural(sessions, 'session')} only browsed: the run had bought the stock of the "
        f"products it shops from (restock with {command('seed')}, or shorten the run)."
    )


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


def verification_lines(checked: Verification) -> list[str]:
    """What the run verified of totals, payments, declines, guest carts and e-mails."""
    by_option = ", ".join(f"{n} {option}" for option, n in sorted(checked.delivery.items()))
    lines = [
        f"Totals exact to the cent for {plural(checked.totals_checked, 'order')} (goods + "
        f"delivery{f': {by_option}, {checked.free_delivery} free' if by_option else ''}); "
        f"payments read back: {checked.payments_authorised} authorised, one reference each, "
        f"{checked.payments_voided} voided on cancel."
    ]
    if checked.refusals:
        why = ", ".join(f"{n} {code}" for code, n in sorted(checked.refusals.items()))
        lines.append(
            f"Cards refused as the test cards say ({why}): each placed no order and left the "
            "cart as it was (and its stock: see conservation)."
        )
    extras = []
    if checked.saved_addresses:
        extras.append(f"{plural(checked.saved_addresses, 'order')} to a saved address")
    if checked.guest_carts_merged:
        extras.append(f"{plural(checked.guest_carts_merged, 'guest cart')} merged at login")
    if extras:
        lines.append(f"Also checked: {'; '.join(extras)}.")
    lines.append(mail_line(checked.mail))
    return lines


def mail_line(mail: MailTally) -> str:
    if mail.skipped:
        return f"E-mails not checked: {mail.skipped}."
    line = f"E-mails: {mail.found} of {mail.expected} owed arrived exactly once (placed, cancelled)"
    if mail.missing or mail.duplicates:
        line += f"; {mail.missing} missing, {mail.duplicates} sent more than once"
    if mail.not_verifiable:
        line += (
            f"; {mail.not_verifiable} never arrived after a fault and cannot be verified (the "
            "outbox gives up an e-mail whose sending was cut off, rather than send it twice)"
        )
    return line + "."


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


def faults_table(chaos: ChaosTally) -> Table:
    """Each fault: when (seconds into the run), what, to which process, for how long, and
    how long until the whole shop answered ready again."""
    table = Table(title="Faults injected (seconds into the run)", title_justify="left")
    for column in ("at", "fault", "target", "held", "PID", "ready after"):
        table.add_column(column, justify="left" if column in ("fault", "target") else "right")
    for fault in chaos.faults:
        ready = (
            Text(f"{fault.ready_after:.1f}", style="green")
            if fault.ready_after is not None
            else Text("never", style="red")
        )
        pids = str(fault.pid_before or "-")
        if fault.pid_after and fault.pid_after != fault.pid_before:
            pids += f"→{fault.pid_after}"
        held = f"{fault.hold:.1f}" if fault.hold else "-"
        table.add_row(f"{fault.at:.1f}", fault.kind.value, fault.target, held, pids, ready)
    return table


def chaos_lines(chaos: ChaosTally, refused: int) -> list[str]:
    """The chaos part of the outcome, in a few sentences."""
    kinds = Counter(fault.kind.value for fault in chaos.faults)
    made = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())) or "none"
    recovered = [fault.ready_after for fault in chaos.faults if fault.ready_after is not None]
    slowest = f", slowest recovery {max(recovered):.1f} s" if recovered else ""
    settled = (
        f"settled {chaos.settled_after:.1f} s after the shoppers stopped"
        if chaos.settled_after is not None
        else chaos.settle_note or "not checked"
    )
    lines = [
        f"Chaos: {len(chaos.faults)} faults ({made}){slowest}; {refused} answers refused "
        f"during faults, waited out and retried; {chaos.retried_checkouts} checkouts retried "
        f"with their key ({chaos.carts_kept} refused with 503 left the cart intact); "
        f"{chaos.carts_cleared_late} carts emptied by recovery after the order; {settled}.",
        f"Orders checked against the shop: {chaos.orders_checked}; Idempotency-Keys "
        f"replayed: {chaos.replays_checked}, each answered with its own order.",
    ]
    if chaos.restarted_at_end:
        lines.append(f"Started again after the faults: {', '.join(chaos.restarted_at_end)}.")
    return lines
