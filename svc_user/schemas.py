"""What the user service accepts and answers; these models also feed /openapi.json."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, model_validator

from shopkit.validation import Body, PartialBody

MIN_PASSWORD_BYTES = 8
MAX_PASSWORD_BYTES = 72  # bcrypt reads no further
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalise_email(value: str) -> str:
    """Trimmed and lower-cased, as stored and as matched at login."""
    email = value.strip().lower()
    if len(email) > 254 or not _EMAIL.match(email):
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
Email = Annotated[str, Field(max_length=320), AfterValidator(normalise_email)]
# Checked as bytes, not characters; the schema's lengths are the character bounds it implies.
Password = Annotated[str, Field(json_schema_extra=_PASSWORD_SCHEMA), AfterValidator(check_password)]
# Passwords are never stripped, so the bodies here strip names themselves.
Name = Annotated[str, Field(max_length=100), AfterValidator(str.strip)]


class RegisterBody(Body):
    model_config = Body.model_config | {"str_strip_whitespace": False}

    email: Email
    password: Password
    first_name: Name = ""
    last_name: Name = ""
    role: Any = Field(
        None, description="Ignored: registration always makes a customer, whatever this says"
    )


class LoginBody(Body):
    model_config = Body.model_config | {"str_strip_whitespace": False}

    email: Annotated[str, Field(min_length=1, max_length=320)]
    # Any length is accepted here: a wrong password is a wrong password, not a 400.
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class ProfileUpdate(PartialBody):
    """Only the fields given change; a new ``password`` needs ``current_password``."""

    model_config = PartialBody.model_config | {"str_strip_whitespace": False}

    first_name: Name = None  # type: ignore[assignment]
    last_name: Name = None  # type: ignore[assignment]
    password: Password = None  # type: ignore[assignment]
    current_password: Annotated[str, Field(min_length=1, max_length=1024)] = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _current_password_with_a_new_one(self) -> ProfileUpdate:
        if "password" in self.model_fields_set and "current_password" not in self.model_fields_set:
            raise ValueError("a new password needs current_password too")
        return self


class UserOut(BaseModel):
    id: int
    email: str
    first_name: str
    last_name: str
    role: str
    created_at: datetime


class AuthOut(BaseModel):
    user: UserOut
    token: str = Field(description="A JWT for Authorization: Bearer, valid for 24 hours")


class ProfileChanged(UserOut):
    token: str | None = Field(
        None,
        description="Only when the password changed: a fresh token for this client (every "
        "token issued before the change no longer works)",
    )


class LoggedOut(BaseModel):
    logged_out: bool


class AccountRemoval(Body):
    model_config = Body.model_config | {"str_strip_whitespace": False}

    current_password: Annotated[str, Field(min_length=1, max_length=1024)]


class AccountRemoved(BaseModel):
    id: int
    deleted: bool


class TokenStatusOut(BaseModel):
    user_id: int
    tokens_valid_from: int = Field(
        description="Epoch seconds: the user's tokens with an earlier iat are revoked"
    )
