"""Turning request bodies and query strings into pydantic models, or a 400 with details.

Bodies are strict (``"12"`` is not a number, ``1.5`` is not an integer, unknown fields are
refused); JSON floats are parsed as ``Decimal`` so that money never passes through a binary
float. Query strings are text by nature, so query models convert, but still refuse unknown
or repeated parameters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Self, TypeVar

from aiohttp import web
from multidict import MultiMapping
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from shopkit.errors import BadRequest, ValidationFailed

M = TypeVar("M", bound=BaseModel)


class Body(BaseModel):
    """Base of every request body model: strict types, unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid", str_strip_whitespace=True)


def _partial_schema(schema: dict[str, Any]) -> None:
    schema["minProperties"] = 1
    for prop in schema["properties"].values():
        if prop.get("default", "") is None and "anyOf" not in prop:
            del prop["default"]  # null is not a value a client may send


class PartialBody(Body):
    """A body that changes only the fields it gives, at least one.

    Fields are declared ``name: T = None``: the default is never validated, so an explicit
    null is refused unless the field's type allows it (``T | None``)."""

    model_config = ConfigDict(json_schema_extra=_partial_schema)

    @model_validator(mode="after")
    def _something_to_change(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        return self


class Query(BaseModel):
    """Base of every query-string model: text converted, unknown parameters refused."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, populate_by_name=True)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("The request body is nested too deeply.", code="invalid_json") from None
    except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise BadRequest(
            f"The request body is not valid JSON: {reason}.", code="invalid_json"
        ) from None


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body is an empty object."""
    raw = await request.read()  # aiohttp raises 413 past client_max_size
    if not raw.strip():
        return {}
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    return data


def error_details(exc: ValidationError, whole: str = "body") -> list[dict[str, str]]:
    """``[{"field", "message"}]``; a rule about the whole input names ``whole`` as its field."""
    details = []
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"]) or whole
        if error["type"] == "extra_forbidden":
            message = "is not a known field"
        elif error["type"] == "missing":
            message = "is required"
        else:
            message = error["msg"].removeprefix("Value error, ")
        details.append({"field": field, "message": message})
    return details


def _fail(exc: ValidationError, whole: str, what: str) -> ValidationFailed:
    details = error_details(exc, whole)
    first = details[0]
    field, message = first["field"], first["message"]
    problem = message if field == whole else f"{field}: {message}"
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ValidationFailed(f"The {what} is invalid: {problem}{more}.", details=details)


def validate_body(model: type[M], data: Mapping[str, Any]) -> M:
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise _fail(exc, "body", "request body") from None


def validate_query(model: type[M], query: MultiMapping[str]) -> M:
    repeated = sorted({key for key in query if len(query.getall(key)) > 1})
    if repeated:
        details = [{"field": key, "message": "is given more than once"} for key in repeated]
        raise ValidationFailed(
            f"The query string is invalid: {repeated[0]} is given more than once.", details=details
        )
    try:
        return model.model_validate(dict(query))
    except ValidationError as exc:
        raise _fail(exc, "query", "query string") from None
