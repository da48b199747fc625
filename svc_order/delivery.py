"""Delivery: the options a checkout offers, what each costs (exact cents, computed here and
never taken from the client), and the countries the shop delivers to. All from settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BeforeValidator

from shopkit.domain import country_names
from shopkit.money import money_to_cents
from shopkit.parsing import parse_amount

# The EU, the UK, the EFTA countries: where a European shop's carriers usually go.
DEFAULT_DELIVERY_COUNTRIES = (
    "AT,BE,BG,CH,CY,CZ,DE,DK,EE,ES,FI,FR,GB,GR,HR,HU,IE,IS,IT,LI,LT,LU,LV,MT,NL,NO,PL,PT,RO,"
    "SE,SI,SK"
)
LABELS = {
    "standard": "Standard delivery (3 to 5 working days)",
    "express": "Express delivery (next working day)",
}


def _cents(value: object) -> int:
    amount = parse_amount(value)
    if amount < 0:
        raise ValueError("must not be negative")
    return money_to_cents(amount)


def _threshold(value: object) -> int | None:
    if isinstance(value, str) and value.strip().lower() in ("off", "none", "never"):
        return None
    return None if value is None else _cents(value)


def _countries(value: object) -> frozenset[str]:
    if not isinstance(value, str):
        raise ValueError("must be a comma-separated list of country codes")
    codes = {code.strip().upper() for code in value.split(",") if code.strip()}
    unknown = sorted(codes - set(country_names()))
    if unknown or not codes:
        raise ValueError(
            "must be ISO 3166-1 alpha-2 codes separated by commas, such as GB,DE,FR"
            + (f" ({', '.join(unknown[:3])} is not one)" if unknown else "")
        )
    return frozenset(codes)


# Settings' types: "4.95" is 495 cents; FREE_DELIVERY_FROM=off: delivery is never free.
PriceSetting = Annotated[int, BeforeValidator(_cents)]
ThresholdSetting = Annotated[int | None, BeforeValidator(_threshold)]
CountriesSetting = Annotated[frozenset[str], BeforeValidator(_countries)]


@dataclass(frozen=True, slots=True)
class DeliveryRules:
    prices: dict[str, int]  # option -> cents
    free_from_cents: int | None  # standard delivery is free from this goods subtotal
    countries: frozenset[str]

    def free_from(self, option: str) -> int | None:
        # Only standard delivery is ever free: express costs what it costs.
        return self.free_from_cents if option == "standard" else None

    def price(self, option: str, subtotal_cents: int) -> int:
        """What delivery by ``option`` costs on goods of ``subtotal_cents``."""
        threshold = self.free_from(option)
        if threshold is not None and subtotal_cents >= threshold:
            return 0
        return self.prices[option]

    def delivers_to(self, country: str) -> bool:
        return country in self.countries
