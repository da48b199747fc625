"""What the user service accepts and answers; these models also feed /openapi.json."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, NotRequired

from pydantic import AfterValidator, BaseModel, Field, model_validator
from typing_extensions import TypedDict

from shopkit.address import AddressBody, AddressFieldsOut  # noqa: F401 - AddressBody: shared with the order service (checkout)
from shopkit.openapi import Timestamp, answer_shape
from shopkit.parsing import (
    ID_PATTERN,
    LINE_PATTERN,
    REFUSED_IN_LINE,
    REFUSED_IN_TEXT,
    Line,
    check_text,
)
from shopkit.validation import Body, PartialBody, _partial_schema

MIN_PASSWORD_BYTES = 8
MAX_PASSWORD_BYTES = 72  # bcrypt reads no further
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# What normalise_email accepts, as a pattern (for the document and the fuzzer's hooks).
_EMAIL_PART = f"[^@\\s{REFUSED_IN_LINE}]+"
EMAIL_PATTERN = f"{_EMAIL_PART}@{_EMAIL_PART}\\.{_EMAIL_PART}"


def canonical_email(value: str) -> str:
    """The one spelling an email is stored and matched under: NFKC-normalised (so "\uff4eorm"
    and "norm", fullwidth n or not, are one account), trimmed and lower-cased."""
    return unicodedata.normalize("NFKC", value).strip().lower()


def normalise_email(value: str) -> str:
    """The canonical email, if it looks like one (at registration and in settings)."""
    email = check_text(canonical_email(value))
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise ValueError("must be an email address such as ann@example.com")
    return email


def check_password(value: str) -> str:
    size = len(value.encode("utf-8"))
    if size < MIN_PASSWORD_BYTES or size > MAX_PASSWORD_BYTES:
        raise ValueError(
            f"must be {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes long in UTF-8 "
            f"(this one is {size})"
        )
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


_PASSWORD_SCHEMA = {"minLength": 8, "maxLength": 72, "description": "8 to 72 bytes in UTF-8"}
# What normalise_email accepts, for the document (written as the canonical form: the
# service also takes surrounding spaces and compatibility forms, which NFKC folds).
_EMAIL_SCHEMA = {
    "maxLength": 254,
    "pattern": f"^{EMAIL_PATTERN}$",
    "description": "An email address such as ann@example.com (at most 254 characters once "
    "NFKC-normalised, trimmed and lower-cased)",
}
Email = Annotated[
    str,
    Field(max_length=320),
    AfterValidator(normalise_email),
    Field(json_schema_extra=_EMAIL_SCHEMA),
]
# Checked as bytes, not characters; the schema's lengths are the character bounds it implies.
Password = Annotated[str, Field(json_schema_extra=_PASSWORD_SCHEMA), AfterValidator(check_password)]
# Passwords are never stripped, so the bodies here strip names themselves.
Name = Annotated[Line, Field(max_length=100), AfterValidator(str.strip)]


class RegisterBody(Body):
    model_config = Body.model_config | {"str_strip_whitespace": False}

    email: Email
    password: Password
    first_name: Name = ""
    last_name: Name = ""
    role: Any = Field(
        None,
        description="Ignored: registration always makes a customer, whatever this says",
        # Any value, but text with control characters is refused in every body.
        json_schema_extra={"not": {"type": "string", "pattern": f"[{REFUSED_IN_TEXT}]"}},
    )


class LoginBody(Body):
    model_config = Body.model_config | {"str_strip_whitespace": False}

    # Matched as registration stored it (canonical_email); not judged further: an email
    # that could never have registered is simply a failed login.
    email: Annotated[
        str,
        Field(min_length=1, max_length=320),
        AfterValidator(canonical_email),
        AfterValidator(check_text),
        # One line, as the check says (the document's words for it).
        Field(json_schema_extra={"pattern": LINE_PATTERN}),
    ]
    # Any length is accepted here: a wrong password is a wrong password, not a 400.
    password: Annotated[str, Field(min_length=1, max_length=1024)]


def _profile_update_schema(schema: dict[str, Any]) -> None:
    _partial_schema(schema)
    # _current_password_with_a_new_one, for the document.
    schema["dependentRequired"] = {"password": ["current_password"]}
    schema["not"] = {"required": ["current_password"], "maxProperties": 1}


class ProfileUpdate(PartialBody):
    """Only the fields given change; a new ``password`` needs ``current_password``."""

    model_config = PartialBody.model_config | {
        "str_strip_whitespace": False,
        "json_schema_extra": _profile_update_schema,
    }

    first_name: Name = None  # type: ignore[assignment]
    last_name: Name = None  # type: ignore[assignment]
    password: Password = None  # type: ignore[assignment]
    current_password: Annotated[str, Field(min_length=1, max_length=1024)] = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _current_password_with_a_new_one(self) -> ProfileUpdate:
        given = self.model_fields_set
        if "password" in given and "current_password" not in given:
            raise ValueError("a new password needs current_password too")
        if given == {"current_password"}:
            # A body that changes nothing is refused rather than answered as a change.
            raise ValueError("give first_name, last_name or password to change")
        return self


@answer_shape
class UserOut(TypedDict):
    id: int
    email: str
    first_name: str
    last_name: str
    role: str
    created_at: Timestamp


@answer_shape
class AuthOut(TypedDict):
    user: UserOut
    token: Annotated[str, Field(description="A JWT for Authorization: Bearer, valid for 24 hours")]


@answer_shape
class ProfileChanged(UserOut):
    token: NotRequired[
        Annotated[
            str | None,
            Field(
                description="Only when the password changed: a fresh token for this client "
                "(every token issued before the change no longer works)",
            ),
        ]
    ]


@answer_shape
class LoggedOut(TypedDict):
    logged_out: bool


class AccountRemoval(Body):
    model_config = Body.model_config | {"str_strip_whitespace": False}

    current_password: Annotated[str, Field(min_length=1, max_length=1024)]


@answer_shape
class AccountRemoved(TypedDict):
    id: int
    deleted: bool


class UserPath(BaseModel):
    """The path of one user's internal routes (for the document: a malformed id is a 404)."""

    id: str = Field(pattern=ID_PATTERN, description="The user's id; any other id is a 404")


@answer_shape
class TokenStatusOut(TypedDict):
    user_id: int
    tokens_valid_from: Annotated[
        int, Field(description="Epoch seconds: the user's tokens with an earlier iat are revoked")
    ]


# -- delivery addresses ------------------------------------------------------------------

MAX_ADDRESSES = 5  # kept per customer: enough for home, work and a few others


class AddressPath(BaseModel):
    """The path of one of the caller's addresses (a malformed or another's id is a 404)."""

    id: str = Field(pattern=ID_PATTERN, description="The address's id")


class UserAddressPath(BaseModel):
    """The path of one user's address, for the services."""

    id: str = Field(pattern=ID_PATTERN, description="The user's id")
    address_id: str = Field(pattern=ID_PATTERN, description="The address's id")


@answer_shape
class AddressOut(AddressFieldsOut):
    id: int
    created_at: Timestamp
    updated_at: Timestamp


@answer_shape
class AddressList(TypedDict):
    addresses: list[AddressOut]
    limit: Annotated[int, Field(description="How many addresses a customer may keep")]


@answer_shape
class AddressRemoved(TypedDict):
    id: int
    deleted: bool
