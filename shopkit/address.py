"""A delivery address as a request body: the user service keeps them on the profile, the
order service takes one inline at checkout; both judge it by this one model."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field
from typing_extensions import TypedDict

from shopkit.domain import country_names
from shopkit.openapi import answer_shape
from shopkit.parsing import Line
from shopkit.validation import Body


def check_country(value: str) -> str:
    if value not in country_names():
        raise ValueError(
            "must be a country's ISO 3166-1 alpha-2 code in capitals, such as GB, DE or US"
        )
    return value


_POSTAL_CODE_PATTERN = r"^([A-Za-z0-9]([A-Za-z0-9 -]{0,10}[A-Za-z0-9])?)?$"
_PHONE_PATTERN = r"^(\+?[0-9]([0-9 ()-]{4,18}[0-9])?)?$"
AddressLine = Annotated[Line, Field(min_length=1, max_length=100)]
OptionalLine = Annotated[Line, Field(max_length=100)]


class AddressBody(Body):
    """A delivery address: where an order goes and who takes it in."""

    label: Annotated[
        Line, Field(max_length=40, description="The customer's name for it: Home, Work")
    ] = ""
    recipient: Annotated[AddressLine, Field(description="Who takes the parcel in")]
    line1: Annotated[AddressLine, Field(description="Street and number")]
    line2: Annotated[OptionalLine, Field(description="Flat, floor, company")] = ""
    city: Annotated[Line, Field(min_length=1, max_length=60)]
    region: Annotated[Line, Field(max_length=60, description="State, county or province")] = ""
    postal_code: Annotated[
        str,
        Field(
            max_length=12,
            pattern=_POSTAL_CODE_PATTERN,
            description="Letters, digits, spaces and hyphens (kept upper-case); empty where "
            "the country has none",
        ),
        AfterValidator(str.upper),
    ] = ""
    country: Annotated[
        str,
        AfterValidator(check_country),
        Field(
            json_schema_extra={"enum": sorted(country_names())},
            description="ISO 3166-1 alpha-2 code, such as GB, DE or US",
        ),
    ]
    phone: Annotated[
        str,
        Field(max_length=20, pattern=_PHONE_PATTERN, description="For the courier; optional"),
    ] = ""


# The fields of an address, in the order AddressBody declares them: what the user service
# keeps, what an order copies.
ADDRESS_FIELDS = tuple(AddressBody.model_fields)


@answer_shape
class AddressFieldsOut(TypedDict):
    """An address as answers show it: its fields, and its country's name."""

    label: str
    recipient: str
    line1: str
    line2: str
    city: str
    region: str
    postal_code: str
    country: str
    country_name: Annotated[str, Field(description="The country's name, in English")]
    phone: str
