"""Forms that change something: ``submit_form`` sends one to its backend and answers the way
every form here does, with the backend's refusals in the shopper's words (next to the fields
they are about, or as one sentence for a flash message)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from shopkit.errors import NotFound
from shopkit.parsing import parse_int
from svc_gateway.pages.access import Redirect, log_in, session_of
from svc_gateway.pages.backend import BackendRefused, call_backend

# The form again, with these errors ({field: sentence}, "_form" over the form), answering
# with this status.
ShowForm = Callable[[dict[str, str], int], Awaitable[web.Response]]
# A refusal the form shows, as the errors to show.
FormRefusal = Callable[[BackendRefused], dict[str, str]]

# A form shown again answers 400: what was typed is what to correct. A login refused for its
# credentials (401) or for too many attempts (429) keeps its status, which clients and the
# login limits tell apart.
_KEPT_STATUSES = frozenset({401, 429})

_FRIENDLIER = {
    "must not be empty": "Fill this in.",
    "is required": "Fill this in.",
    "must be a number": "Enter a number, such as 12.50.",
    "Input should be a valid integer": "Enter a whole number.",
}


def _sentence(message: str) -> str:
    message = _FRIENDLIER.get(message, message)
    message = message[:1].upper() + message[1:]
    return message if message.endswith((".", "!", "?")) else message + "."


def field_errors(refusal: BackendRefused, fields: Mapping[str, str]) -> dict[str, str]:
    """The API's validation details as ``{form field: sentence}``, for the fields the form
    has; a detail about anything else is added to ``_form`` (the message over the form)."""
    errors: dict[str, str] = {}
    others = []
    for detail in refusal.details or []:
        if not isinstance(detail, dict):
            continue
        field, message = str(detail.get("field", "")), str(detail.get("message", ""))
        if field in fields and field not in errors:
            errors[field] = _sentence(message)
        elif message:
            others.append(f"{fields.get(field, field)}: {message}")
    if others or not errors:
        errors["_form"] = "; ".join(others) + "." if others else refusal.message
    return errors


def readable(refusal: BackendRefused, labels: Mapping[str, str] | None = None) -> str:
    """A refusal as one sentence for a flash message, naming fields as the form does."""
    details = [detail for detail in refusal.details or [] if isinstance(detail, dict)]
    if not details:
        return refusal.message
    labels = labels or {}
    return _sentence(
        "; ".join(
            f"{labels.get(str(detail.get('field')), str(detail.get('field')))}: "
            f"{detail.get('message')}"
            for detail in details
        )
    )


def parse_quantity(value: object, low: int, high: int) -> int | None:
    """A whole number from a form field within [low, high], or None."""
    try:  # typed by a person: spaces around it are no reason to refuse it
        return parse_int(value.strip() if isinstance(value, str) else value, low=low, high=high)
    except ValueError:
        return None


async def submit_form(
    request: web.Request,
    backend: str,
    method: str,
    path: str,
    *,
    success: Callable[[Any], str],
    redirect_to: str,
    not_found: str | None = None,
    show_form: ShowForm | None = None,
    fields: Mapping[str, str] | None = None,
    shown_refusals: Mapping[int, FormRefusal] | None = None,
    logs_in: bool = False,
    then: Callable[[], Awaitable[None]] | None = None,
    **call: Any,
) -> web.Response:
    """Send a form's change to a backend (``call``: what else ``call_backend`` takes) and
    answer it the way every form here is answered, Post/Redirect/Get:

    - done: with ``logs_in`` this browser logs in with the answer's token; ``success(data)``
      is flashed, ``then`` is awaited (what follows a login: the guest cart's merge) and
      the shopper goes to ``redirect_to``;
    - a 404, with ``not_found``: the 404 page saying that;
    - with ``show_form`` (fields typed in that can be corrected): a 400 shows the form again,
      the values as typed and each detail next to its field (``fields``: field -> label), and
      so does a status in ``shown_refusals`` with the errors it makes; any other refusal is
      the error page;
    - without it (a button, nothing typed to correct): any refusal is flashed in the
      backend's own words, and the shopper goes to ``redirect_to`` all the same.
    """
    reply = await call_backend(request, backend, method, path, **call)
    if reply.status == 404 and not_found is not None:
        raise NotFound(not_found)
    session = session_of(request)
    if reply.status >= 400:
        refusal = BackendRefused(reply)
        if show_form is None:
            session.flash("error", readable(refusal))
            raise Redirect(redirect_to)
        shown = (shown_refusals or {}).get(reply.status)
        if shown is not None:
            status = reply.status if reply.status in _KEPT_STATUSES else 400
            return await show_form(shown(refusal), status)
        if reply.status == 400:
            return await show_form(field_errors(refusal, fields or {}), 400)
        raise refusal
    if logs_in:
        log_in(request, reply.data["token"])
    session.flash("success", success(reply.data))
    if then is not None:
        await then()
    raise Redirect(redirect_to)
