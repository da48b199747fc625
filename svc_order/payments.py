"""Card payments: the provider interface the checkout saga talks to, and the built-in test
provider that behaves like a card processor's test mode.

A provider moves money in four steps, each under an idempotency key of the caller's
(``order-<id>-auth``, ``order-<id>-capture``...), so that a step sent again after a lost
answer is answered as the first one was and never moves money twice:

- ``authorise(order_id, amount_cents, idempotency_key, method)`` puts a hold on the card
  (raises PaymentDeclined for a decline, ProviderUnavailable when the outcome is unknown);
- ``find(idempotency_key)`` answers the authorisation a key made, if it made one: after a
  lost answer or a crash, what the saga voids;
- ``capture(auth, key)`` takes the held money (when the order ships), ``void(auth, key)``
  releases the hold (an order cancelled or a checkout undone before capture), and
  ``refund(auth, amount_cents, key)`` gives captured money back.

Card numbers reach ``authorise`` and go no further: nothing here stores, logs or repeats
one; an authorisation keeps the provider's reference, the brand and the last four digits.
The README ("Payments") says how a real provider (Stripe's PaymentIntents) maps onto this.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import orjson

from shopkit.postgres import POSTGRES_UNAVAILABLE, FairPool

# -- what the saga hands a provider and gets back --------------------------------------------


@dataclass(frozen=True, slots=True)
class Card:
    """Card details as the customer typed them; never stored, logged or shown (repr hides
    them, so a traceback that prints one shows nothing)."""

    number: str = field(repr=False)
    exp_month: int = field(repr=False)
    exp_year: int = field(repr=False)
    cvc: str = field(repr=False)

    @property
    def last4(self) -> str:
        return self.number[-4:]


@dataclass(frozen=True, slots=True)
class ProviderToken:
    """A payment method the provider's own page or script made from the card (Stripe's
    ``pm_...``): the card number never reaches the shop."""

    token: str


PaymentMethod = Card | ProviderToken


@dataclass(frozen=True, slots=True)
class Authorisation:
    reference: str  # the provider's id of the hold (Stripe: the PaymentIntent id)
    amount_cents: int
    brand: str
    last4: str


class PaymentDeclined(Exception):
    """The card was refused; ``reason`` is the decline code (card_declined,
    insufficient_funds, expired_card, incorrect_number)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProviderUnavailable(Exception):
    """The provider did not answer, or answered with its own error: the step's outcome is
    unknown (an authorisation may exist: ask ``find``)."""


class PaymentStateError(Exception):
    """The step does not fit the authorisation's state (a void after a capture...)."""


class PaymentProvider(Protocol):
    name: str

    async def authorise(
        self, order_id: int, amount_cents: int, idempotency_key: str, method: PaymentMethod
    ) -> Authorisation: ...

    async def find(self, idempotency_key: str) -> Authorisation | None: ...

    async def capture(self, auth: Authorisation, idempotency_key: str) -> None: ...

    async def void(self, auth: Authorisation, idempotency_key: str) -> None: ...

    async def refund(
        self, auth: Authorisation, amount_cents: int, idempotency_key: str
    ) -> None: ...


# -- cards -----------------------------------------------------------------------------------


def luhn_valid(number: str) -> bool:
    if not number.isdigit() or not 12 <= len(number) <= 19:
        return False
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def card_brand(number: str) -> str:
    """The brand a card number's first digits name (as the receipt shows it)."""
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"} or "2221" <= number[:4] <= "2720":
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    return "unknown"


def expired(card: Card, now: datetime) -> bool:
    """A card is good to the end of its expiry month."""
    return (card.exp_year, card.exp_month) < (now.year, now.month)


# The test provider's documented cards (README, "Test cards"); any other Luhn-valid number is
# declined, as a processor's test mode declines a real card. Any future expiry, any CVC.
TEST_CARDS: dict[str, str] = {
    "4242424242424242": "succeeds",
    "5555555555554444": "succeeds",
    "4000000000000002": "card_declined",
    "4000000000009995": "insufficient_funds",
    "4000000000000119": "processing_error",  # the provider answers with its own error
    "4000000000000309": "timeout",  # authorised, but the answer is lost on the way back
}
# Tokens standing in for what a provider's script makes from those cards.
TEST_TOKENS: dict[str, str] = {
    "tok_visa": "4242424242424242",
    "tok_mastercard": "5555555555554444",
    "tok_card_declined": "4000000000000002",
    "tok_insufficient_funds": "4000000000009995",
    "tok_processing_error": "4000000000000119",
    "tok_timeout": "4000000000000309",
}


class TestCardProvider:
    """A card processor's test mode, kept in the order service's PostgreSQL under a schema of
    its own (``test_card_provider``, migration 0004): it stands for an outside system, so the
    order tables never join it. It remembers every idempotency key it was sent, with its
    answer, and replays that answer to a repeat, as a real processor does."""

    __test__ = False  # not a pytest class, whatever its name
    name = "test"

    def __init__(self, pool: FairPool, clock: type[datetime] = datetime) -> None:
        self.pool = pool
        self.clock = clock

    async def authorise(
        self, order_id: int, amount_cents: int, idempotency_key: str, method: PaymentMethod
    ) -> Authorisation:
        if isinstance(method, ProviderToken):
            number = TEST_TOKENS.get(method.token)
            if number is None:
                return await self._decide(idempotency_key, order_id, amount_cents, None, None)
            card = Card(number, 12, self.clock.now(UTC).year + 1, "123")
        else:
            card = method
        behaviour = TEST_CARDS.get(card.number, "card_declined")
        if behaviour == "processing_error":
            # A 5xx: nothing happened, nothing is remembered (a repeat is judged afresh).
            raise ProviderUnavailable("the test provider answered with a processing error")
        if not luhn_valid(card.number):
            decline: str | None = "incorrect_number"
        elif expired(card, self.clock.now(UTC)):
            decline = "expired_card"
        elif behaviour in ("succeeds", "timeout"):
            decline = None
        else:
            decline = behaviour
        auth = await self._decide(idempotency_key, order_id, amount_cents, card, decline)
        if behaviour == "timeout":
            raise ProviderUnavailable("the test provider did not answer in time")
        return auth

    async def _decide(
        self,
        key: str,
        order_id: int,
        amount_cents: int,
        card: Card | None,
        decline: str | None,
    ) -> Authorisation:
        """Record the answer to ``key`` once (a repeat, even one racing this, gets the first
        answer), and give it."""
        if card is None:
            decline = "card_declined"
        answer: dict[str, object]
        if decline is not None:
            answer = {"declined": decline}
        else:
            assert card is not None
            answer = {
                "reference": "tp_" + secrets.token_hex(12),
                "amount_cents": amount_cents,
                "brand": card_brand(card.number),
                "last4": card.last4,
            }
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                # Waits for a racing insert of the same key, then sees it: one answer per key.
                stored = await connection.fetchval(
                    """INSERT INTO test_card_provider.requests (idempotency_key, operation, answer)
                       VALUES ($1, 'authorise', $2) ON CONFLICT (idempotency_key) DO NOTHING
                       RETURNING answer""",
                    key,
                    orjson.dumps(answer).decode(),
                )
                if stored is None:
                    answer = orjson.loads(
                        await connection.fetchval(
                            "SELECT answer FROM test_card_provider.requests "
                            "WHERE idempotency_key = $1",
                            key,
                        )
                    )
                elif "reference" in answer:
                    await connection.execute(
                        """INSERT INTO test_card_provider.authorisations
                               (reference, order_id, amount_cents, brand, last4)
                           VALUES ($1, $2, $3, $4, $5)""",
                        answer["reference"],
                        order_id,
                        amount_cents,
                        answer["brand"],
                        answer["last4"],
                    )
        except POSTGRES_UNAVAILABLE as exc:
            raise ProviderUnavailable("the test provider's store is unavailable") from exc
        if "declined" in answer:
            raise PaymentDeclined(str(answer["declined"]))
        return _authorisation(answer)

    async def find(self, idempotency_key: str) -> Authorisation | None:
        try:
            raw = await self.pool.fetchval(
                """SELECT answer FROM test_card_provider.requests
                   WHERE idempotency_key = $1 AND operation = 'authorise'""",
                idempotency_key,
            )
        except POSTGRES_UNAVAILABLE as exc:
            raise ProviderUnavailable("the test provider's store is unavailable") from exc
        answer = orjson.loads(raw) if raw is not None else {}
        return _authorisation(answer) if "reference" in answer else None

    async def capture(self, auth: Authorisation, idempotency_key: str) -> None:
        await self._move(auth, idempotency_key, "capture", ("authorised",), "captured")

    async def void(self, auth: Authorisation, idempotency_key: str) -> None:
        await self._move(auth, idempotency_key, "void", ("authorised",), "voided")

    async def refund(self, auth: Authorisation, amount_cents: int, idempotency_key: str) -> None:
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                first = await connection.fetchval(
                    """INSERT INTO test_card_provider.requests (idempotency_key, operation, answer)
                       VALUES ($1, 'refund', $2) ON CONFLICT (idempotency_key) DO NOTHING
                       RETURNING true""",
                    idempotency_key,
                    orjson.dumps(
                        {"reference": auth.reference, "amount_cents": amount_cents}
                    ).decode(),
                )
                if not first:
                    return  # this refund was made before
                done = await connection.fetchval(
                    """UPDATE test_card_provider.authorisations
                       SET refunded_cents = refunded_cents + $2,
                           status = CASE WHEN refunded_cents + $2 = amount_cents
                                         THEN 'refunded' ELSE status END,
                           updated_at = now()
                       WHERE reference = $1 AND status = 'captured'
                         AND refunded_cents + $2 <= amount_cents AND $2 > 0
                       RETURNING true""",
                    auth.reference,
                    amount_cents,
                )
                if not done:
                    raise PaymentStateError(
                        f"{auth.reference}: only captured money, at most what is left, is refunded"
                    )
        except POSTGRES_UNAVAILABLE as exc:
            raise ProviderUnavailable("the test provider's store is unavailable") from exc

    async def _move(
        self, auth: Authorisation, key: str, operation: str, sources: tuple[str, ...], target: str
    ) -> None:
        """One step of an authorisation's life; its repeat (same key, or the state already
        reached) changes nothing."""
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                await connection.execute(
                    """INSERT INTO test_card_provider.requests (idempotency_key, operation, answer)
                       VALUES ($1, $2, $3) ON CONFLICT (idempotency_key) DO NOTHING""",
                    key,
                    operation,
                    orjson.dumps({"reference": auth.reference}).decode(),
                )
                status = await connection.fetchval(
                    """SELECT status FROM test_card_provider.authorisations
                       WHERE reference = $1 FOR UPDATE""",
                    auth.reference,
                )
                if status == target:
                    return
                if status not in sources:
                    raise PaymentStateError(f"{auth.reference} is {status}: no {operation}")
                await connection.execute(
                    """UPDATE test_card_provider.authorisations
                       SET status = $2, updated_at = now() WHERE reference = $1""",
                    auth.reference,
                    target,
                )
        except POSTGRES_UNAVAILABLE as exc:
            raise ProviderUnavailable("the test provider's store is unavailable") from exc


def _authorisation(answer: dict[str, object]) -> Authorisation:
    return Authorisation(
        reference=str(answer["reference"]),
        amount_cents=int(answer["amount_cents"]),  # type: ignore[call-overload]
        brand=str(answer["brand"]),
        last4=str(answer["last4"]),
    )
