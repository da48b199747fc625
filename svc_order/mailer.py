"""The e-mail sender: delivers what the outbox owes the customers over SMTP, at most once each.

Every replica (and worker) runs a pass every EMAIL_INTERVAL_SECONDS. A pass first marks the
e-mails whose sender stopped while holding them as ``unknown``, then claims due e-mails one
at a time (svc_order/outbox.py: FOR UPDATE SKIP LOCKED, committed before the SMTP
conversation starts, with a lease), renders each (Jinja templates in templates/mail/, a plain
text part and an HTML part) and hands it to the SMTP server:

- the server accepts it: ``sent``;
- it certainly did not arrive (connection refused or lost, a timeout, a 4xx reply, all
  before the message's DATA began): tried again later, the wait doubling from
  EMAIL_RETRY_SECONDS; after EMAIL_MAX_ATTEMPTS attempts, ``failed``;
- the server refused it for good (5xx): ``failed``;
- the conversation broke off after DATA began (the message may be in the server's hands),
  or the sender died while holding it: ``unknown``, never sent again.

So an e-mail is sent at most once, and a rare one may be lost (counted and logged), rather
than sent twice: see README, "E-mails". Its Message-ID names the event, so a receiving
system could drop a copy as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from typing import Any
from urllib.parse import unquote, urlsplit

import aiosmtplib
import jinja2

from shopkit.metrics import Metrics
from shopkit.money import cents_to_money
from svc_order.delivery import LABELS as DELIVERY_LABELS
from svc_order.outbox import ClaimedEmail, OrderForEmail, Outbox

log = logging.getLogger("shop.order.mail")

SUBJECTS = {
    "placed": "Your order #{id} is placed",
    "shipped": "Your order #{id} is on its way",
    "cancelled": "Your order #{id} is cancelled",
}
# The longest wait between two attempts at one e-mail.
MAX_RETRY_SECONDS = 3600.0
# A pass sends at most this many, then lets the next pass (or another replica) go on.
MAX_PER_PASS = 100
# A claim outlives the SMTP conversation's timeout by this much before the e-mail is taken
# for one whose sender died.
LEASE_MARGIN_SECONDS = 30.0
DEFAULT_PORTS = {"smtp": 25, "smtps": 465}


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """Where the e-mails go: SMTP_URL, ``smtp://[user:password@]host[:port]`` (STARTTLS
    when the server offers it) or ``smtps://...`` (TLS from the first byte)."""

    hostname: str
    port: int
    use_tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> SmtpServer:
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError("must be smtp://host[:port] or smtps://host[:port]")
        return cls(
            hostname=parts.hostname,
            port=parts.port or DEFAULT_PORTS[parts.scheme],
            use_tls=parts.scheme == "smtps",
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


class Undelivered(Exception):
    """The message certainly did not arrive; ``temporary``: the same may work later."""

    def __init__(self, reason: str, *, temporary: bool) -> None:
        super().__init__(reason)
        self.temporary = temporary


class MaybeDelivered(Exception):
    """The conversation broke off after the message's DATA began: it may have arrived."""


async def send_over_smtp(
    server: SmtpServer, sender: str, recipient: str, message: bytes, time_limit: float
) -> None:
    """Hand ``message`` to the SMTP server for ``recipient``, or raise Undelivered (it did
    not arrive) or MaybeDelivered (no telling). The envelope (MAIL, RCPT) is sent on its own
    before DATA, so that what fails before the message itself is known not to have arrived.
    The whole conversation gets ``time_limit`` seconds, each reply as long."""
    client = aiosmtplib.SMTP(
        hostname=server.hostname,
        port=server.port,
        use_tls=server.use_tls,
        username=server.username,
        password=server.password,
        timeout=time_limit,
    )
    handing_over = False
    try:
        async with asyncio.timeout(time_limit):
            await client.connect()
            await client.mail(sender)
            await client.rcpt(recipient)
            handing_over = True
            await client.data(message)
    except aiosmtplib.SMTPAuthenticationError as exc:
        # Our credentials, not this message: retried, so a fixed SMTP_URL sends it after all.
        raise Undelivered(f"login refused: {exc.code} {exc.message}", temporary=True) from None
    except aiosmtplib.SMTPResponseException as exc:
        # The server answered, to the envelope or to the whole message: it did not take it.
        raise Undelivered(f"{exc.code} {exc.message}", temporary=exc.code < 500) from None
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        if handing_over:
            raise MaybeDelivered(reason) from None
        raise Undelivered(reason, temporary=True) from None
    finally:
        if client.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await client.quit(timeout=min(time_limit, 5.0))
            client.close()


class EmailTemplates:
    """The e-mails' words and looks: templates/mail/<kind>.txt and <kind>.html."""

    def __init__(self) -> None:
        self.environment = jinja2.Environment(
            loader=jinja2.PackageLoader("svc_order", "templates/mail"),
            autoescape=jinja2.select_autoescape(["html"]),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.environment.filters["money"] = _money
        self.environment.filters["address_lines"] = _address_lines

    def render(self, kind: str, context: dict[str, Any]) -> tuple[str, str, str]:
        """The subject, the plain-text part and the HTML part."""
        subject = SUBJECTS[kind].format(id=context["order"]["id"])
        context = {**context, "subject": subject}
        text = self.environment.get_template(f"{kind}.txt").render(context)
        html = self.environment.get_template(f"{kind}.html").render(context)
        return subject, text, html


def _money(value: Any) -> str:
    return f"${value:,.2f}"


def _address_lines(address: dict[str, Any]) -> list[str]:
    """An order's address as the web shop prints it (templates/macros.html address_lines),
    its empty fields left out."""
    town = " ".join(part for part in (address.get("city"), address.get("postal_code")) if part)
    lines = [
        address.get("recipient"),
        address.get("line1"),
        address.get("line2"),
        town,
        address.get("region"),
        address.get("country_name") or address.get("country"),
    ]
    return [str(line) for line in lines if line]


def _when(moment: datetime) -> str:
    """As the web shop writes a moment: 25 Nov 2025, 08:45 UTC."""
    return moment.astimezone(UTC).strftime("%d %b %Y, %H:%M UTC").lstrip("0")


class EmailCounts:
    """What the sender counts: e-mails sent, given up by why, attempts to be tried again,
    and the outbox's backlog (measured by each pass; the most any replica saw)."""

    def __init__(self, metrics: Metrics) -> None:
        self.sent = metrics.counter("shop_emails_sent", "E-mails the SMTP server accepted").labels()
        self.failed = metrics.counter(
            "shop_emails_failed",
            "E-mails given up: refused for good by the SMTP server (rejected), out of "
            "attempts (attempts_exhausted), or stopped while being handed over, so maybe "
            "delivered and never sent again (unknown)",
            "reason",
            known=("rejected", "attempts_exhausted", "unknown"),
        )
        self.retried = metrics.counter(
            "shop_email_retries",
            "Attempts at an e-mail that failed for now (SMTP server away, a 4xx reply) and "
            "will be tried again",
        ).labels()
        self.backlog = metrics.gauge(
            "shop_email_outbox_backlog",
            "E-mails owed to customers and not sent yet (waiting, or being sent)",
            mode="livemax",
        ).labels()


@dataclass(frozen=True)
class MailSettings:
    """How the sender sends: from whom, links to where, how patiently."""

    sender: str  # MAIL_FROM, e.g. "Corner Shop <orders@shop.example>"
    storefront_url: str | None
    retry_seconds: float
    max_attempts: int
    timeout_seconds: float

    @property
    def shop_name(self) -> str:
        name, address = parseaddr(self.sender)
        return name or address

    @property
    def sender_address(self) -> str:
        return parseaddr(self.sender)[1]

    @property
    def lease_seconds(self) -> float:
        return self.timeout_seconds + LEASE_MARGIN_SECONDS


class EmailSender:
    """One replica's sender (``server`` None: SMTP_URL is unset, so its passes only
    measure the backlog, and the e-mails wait in the outbox)."""

    def __init__(
        self,
        outbox: Outbox,
        server: SmtpServer | None,
        settings: MailSettings,
        counts: EmailCounts,
        templates: EmailTemplates | None = None,
    ) -> None:
        self.outbox = outbox
        self.server = server
        self.settings = settings
        self.counts = counts
        self.templates = templates or EmailTemplates()

    async def run_pass(self) -> int:
        """Send what is due (at most MAX_PER_PASS); how many were sent."""
        if self.server is None:
            self.counts.backlog.set(await self.outbox.backlog())
            return 0
        for row in await self.outbox.expire_leases():
            self.counts.failed.labels("unknown").inc()
            log.error(
                "e-mail %s (order %s, %s): its sender stopped while sending it; it may have "
                "arrived, and is not sent again",
                row["id"],
                row["order_id"],
                row["kind"],
            )
        sent = 0
        for _ in range(MAX_PER_PASS):
            claimed = await self.outbox.claim(self.settings.lease_seconds)
            if claimed is None:
                break
            sent += await self.deliver(claimed)
        self.counts.backlog.set(await self.outbox.backlog())
        return sent

    async def deliver(self, email: ClaimedEmail) -> bool:
        """Send one claimed e-mail and record how it went; True when it was accepted."""
        assert self.server is not None
        message = self.message(email, await self.outbox.order(email.order_id))
        what = f"e-mail {email.id} (order {email.order_id}, {email.kind})"
        try:
            await send_over_smtp(
                self.server,
                self.settings.sender_address,
                email.recipient,
                message.as_bytes(),
                self.settings.timeout_seconds,
            )
        except MaybeDelivered as exc:
            await self.outbox.settle(email.id, "unknown", f"may have arrived: {exc}")
            self.counts.failed.labels("unknown").inc()
            log.error("%s broke off while being handed over (%s); not sent again", what, exc)
            return False
        except Undelivered as exc:
            await self._undelivered(email, what, exc)
            return False
        await self.outbox.sent(email.id)
        self.counts.sent.inc()
        log.info("%s sent", what, extra={"attempt": email.attempts})
        return True

    async def _undelivered(self, email: ClaimedEmail, what: str, exc: Undelivered) -> None:
        reason = str(exc)
        if not exc.temporary:
            await self.outbox.settle(email.id, "failed", reason)
            self.counts.failed.labels("rejected").inc()
            log.error("%s refused by the SMTP server (%s); given up", what, reason)
        elif email.attempts >= self.settings.max_attempts:
            await self.outbox.settle(email.id, "failed", reason)
            self.counts.failed.labels("attempts_exhausted").inc()
            log.error("%s failed %s times (last: %s); given up", what, email.attempts, reason)
        else:
            delay = self.retry_delay(email.attempts)
            await self.outbox.retry_later(email.id, delay, reason)
            self.counts.retried.inc()
            log.warning(
                "%s not sent (%s); trying again in %.0f s",
                what,
                reason,
                delay,
                extra={"attempt": email.attempts},
            )

    def retry_delay(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failure: doubling, capped, with a little
        jitter so that e-mails held up by one outage do not all come back at once."""
        delay = min(self.settings.retry_seconds * 2 ** (attempts - 1), MAX_RETRY_SECONDS)
        return delay * random.uniform(0.9, 1.1)

    def message(self, email: ClaimedEmail, order: OrderForEmail) -> EmailMessage:
        """The e-mail as it goes out: headers, a plain-text part and an HTML alternative."""
        subject, text, html = self.templates.render(email.kind, self.context(email, order))
        message = EmailMessage(policy=SMTP)
        message["From"] = self.settings.sender
        message["To"] = email.recipient
        message["Subject"] = subject
        message["Date"] = format_datetime(datetime.now(UTC))
        domain = self.settings.sender_address.rpartition("@")[2] or "shop.local"
        # Names the event, so a receiver could tell a copy (there should be none) apart.
        message["Message-ID"] = f"<order-{order.id}.{email.kind}.{email.id}@{domain}>"
        # RFC 3834: an automatic message; auto-responders do not answer it.
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        return message

    def context(self, email: ClaimedEmail, order: OrderForEmail) -> dict[str, Any]:
        storefront = (self.settings.storefront_url or "").rstrip("/") or None
        items = [
            {
                "name": line["product_name"],
                "quantity": line["quantity"],
                "price": cents_to_money(line["price_cents"]),
                "subtotal": cents_to_money(line["price_cents"] * line["quantity"]),
            }
            for line in order.lines
        ]
        return {
            "shop_name": self.settings.shop_name,
            "shop_url": storefront,
            "order_url": f"{storefront}/orders/{order.id}" if storefront else None,
            "recipient": email.recipient,
            "event_at": _when(email.created_at),
            "order": {
                "id": order.id,
                "status": order.status,
                "placed_at": _when(order.created_at),
                "items": items,
                "total": cents_to_money(order.total_cents),
                "goods": None
                if order.subtotal_cents is None
                else cents_to_money(order.subtotal_cents),
                "delivery": None
                if order.delivery_option is None
                else {
                    "label": DELIVERY_LABELS.get(order.delivery_option, order.delivery_option),
                    "price": cents_to_money(order.delivery_cents or 0),
                },
                "address": order.address,
            },
        }


def check_sender(value: str) -> str:
    """MAIL_FROM: an address with an optional display name (``Shop <orders@shop.example>``)."""
    name, address = parseaddr(value)
    local, at, domain = address.partition("@")
    if not (local and at and domain) or "@" in domain:
        raise ValueError("must be an e-mail address, e.g. Shop <orders@shop.example>")
    return str(Address(display_name=name, addr_spec=address)) if name else address
