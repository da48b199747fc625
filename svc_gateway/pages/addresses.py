"""The shopper's address book: the delivery addresses kept on the profile (user service),
listed, added, changed and removed."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shopkit.domain import country_names
from shopkit.errors import NotFound
from svc_gateway.pages.access import local_path, require_user
from svc_gateway.pages.backend import BackendRefused, call_backend_or_raise
from svc_gateway.pages.forms import submit_form
from svc_gateway.pages.params import ADDRESS_NOT_FOUND, id_of
from svc_gateway.pages.rendering import render

ADDRESS_FIELDS = {
    "label": "Name for it",
    "recipient": "Full name",
    "line1": "Street and number",
    "line2": "Flat, floor, company",
    "city": "Town or city",
    "region": "County, state or province",
    "postal_code": "Postcode",
    "country": "Country",
    "phone": "Phone",
}
ADDRESSES_PATH = "/profile/addresses"


def address_values(form: Any) -> dict[str, str]:
    """The address fields of a posted form, as typed (the user service tidies them)."""
    return {name: str(form.get(name, "")) for name in ADDRESS_FIELDS}


def _over_the_form(refusal: BackendRefused) -> dict[str, str]:
    return {"_form": refusal.message}


async def _addresses(request: web.Request) -> dict[str, Any]:
    return (await call_backend_or_raise(request, "user", "GET", "/api/users/addresses"))["data"]


async def _book_page(
    request: web.Request,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    book = await _addresses(request)
    context = {
        "addresses": book["addresses"],
        "limit": book["limit"],
        "values": values or {},
        "errors": errors or {},
        "countries": country_names(),
        "next": local_path(request.query.get("next"), ""),
    }
    return render(request, "addresses.html", context, status=status)


async def addresses_page(request: web.Request) -> web.Response:
    require_user(request, "Log in to see your addresses.")
    return await _book_page(request)


async def add_address(request: web.Request) -> web.Response:
    require_user(request)
    form = await request.post()
    values = address_values(form)
    return await submit_form(
        request,
        "user",
        "POST",
        "/api/users/addresses",
        json=values,
        show_form=lambda errors, status: _book_page(
            request, values=values, errors=errors, status=status
        ),
        fields=ADDRESS_FIELDS,
        shown_refusals={409: _over_the_form},
        success=lambda data: f"Your address {_called(data)} is saved.",
        # From the checkout, back to it with the new address to choose.
        redirect_to=local_path(form.get("next"), ADDRESSES_PATH),
    )


async def _edit_page(
    request: web.Request,
    address_id: str,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    book = await _addresses(request)
    address = next((a for a in book["addresses"] if str(a["id"]) == address_id), None)
    if address is None:
        raise NotFound(ADDRESS_NOT_FOUND)
    context = {
        "address": address,
        "values": values or address,
        "errors": errors or {},
        "countries": country_names(),
    }
    return render(request, "address_edit.html", context, status=status)


async def edit_address_page(request: web.Request) -> web.Response:
    require_user(request, "Log in to see your addresses.")
    return await _edit_page(request, id_of(request, ADDRESS_NOT_FOUND))


async def update_address(request: web.Request) -> web.Response:
    require_user(request)
    address_id = id_of(request, ADDRESS_NOT_FOUND)
    values = address_values(await request.post())
    return await submit_form(
        request,
        "user",
        "PUT",
        f"/api/users/addresses/{address_id}",
        json=values,
        not_found=ADDRESS_NOT_FOUND,
        show_form=lambda errors, status: _edit_page(
            request, address_id, values=values, errors=errors, status=status
        ),
        fields=ADDRESS_FIELDS,
        success=lambda data: f"Your address {_called(data)} is changed.",
        redirect_to=ADDRESSES_PATH,
    )


async def remove_address(request: web.Request) -> web.Response:
    require_user(request)
    address_id = id_of(request, ADDRESS_NOT_FOUND)
    return await submit_form(
        request,
        "user",
        "DELETE",
        f"/api/users/addresses/{address_id}",
        not_found=ADDRESS_NOT_FOUND,
        success=lambda _: "The address is removed.",
        redirect_to=ADDRESSES_PATH,
    )


def _called(address: dict[str, Any]) -> str:
    return f"“{address['label'] or address['line1']}”"
