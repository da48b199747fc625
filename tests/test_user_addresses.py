"""Delivery addresses on a customer's profile: the user service over HTTP against a real
PostgreSQL, with requests at once where the limit is shared."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from support import as_service, bearer, call

from svc_user.schemas import MAX_ADDRESSES

PASSWORD = "s3cret-enough"
HOME = {
    "label": "Home",
    "recipient": "Ann Lee",
    "line1": "10 Downing Street",
    "city": "London",
    "postal_code": " sw1a 2aa ",
    "country": "GB",
}


async def customer(client: TestClient, email: str) -> tuple[int, dict[str, str]]:
    """A new customer: its id and the headers of its token."""
    body = {"email": email, "password": PASSWORD}
    reply = await call(client, "POST", "/api/users/register", json=body, expected_status=201)
    return reply["data"]["user"]["id"], bearer(reply["data"]["token"])


async def add(client: TestClient, headers: dict[str, str], **overrides: Any) -> dict[str, Any]:
    body = {**HOME, **overrides}
    reply = await call(
        client, "POST", "/api/users/addresses", json=body, headers=headers, expected_status=201
    )
    return reply["data"]


async def listed(client: TestClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    reply = await call(client, "GET", "/api/users/addresses", headers=headers, expected_status=200)
    assert reply["data"]["limit"] == MAX_ADDRESSES
    return reply["data"]["addresses"]


async def test_a_customer_keeps_changes_and_removes_addresses(user: TestClient) -> None:
    _, ann = await customer(user, "ann@shop.test")
    assert await listed(user, ann) == []
    home = await add(user, ann)
    # Kept tidy: trimmed, the postal code upper-case, the country named.
    assert {k: home[k] for k in ("label", "recipient", "postal_code", "country")} == {
        "label": "Home",
        "recipient": "Ann Lee",
        "postal_code": "SW1A 2AA",
        "country": "GB",
    }
    assert (home["country_name"], home["line2"], home["region"], home["phone"]) == (
        "United Kingdom",
        "",
        "",
        "",
    )
    work = await add(user, ann, label="Work", line1="1 Main St", city="Berlin", country="DE")
    assert [a["id"] for a in await listed(user, ann)] == [home["id"], work["id"]]

    changed = {**HOME, "line2": "Flat 2", "phone": "+44 20 7946 0000"}
    reply = await call(
        user,
        "PUT",
        f"/api/users/addresses/{home['id']}",
        json=changed,
        headers=ann,
        expected_status=200,
    )
    assert (reply["data"]["line2"], reply["data"]["phone"]) == ("Flat 2", "+44 20 7946 0000")
    assert reply["data"]["created_at"] == home["created_at"]

    reply = await call(
        user, "DELETE", f"/api/users/addresses/{work['id']}", headers=ann, expected_status=200
    )
    assert reply["data"] == {"id": work["id"], "deleted": True}
    assert [a["id"] for a in await listed(user, ann)] == [home["id"]]
    again = await call(
        user, "DELETE", f"/api/users/addresses/{work['id']}", headers=ann, expected_status=404
    )
    assert again["code"] == "address_not_found"


async def test_another_customers_address_is_not_found_and_stays_as_it_was(
    user: TestClient,
) -> None:
    _, ann = await customer(user, "ann@shop.test")
    _, bob = await customer(user, "bob@shop.test")
    home = await add(user, ann)
    for method, body in (("PUT", {**HOME, "recipient": "Bob"}), ("DELETE", None)):
        reply = await call(
            user,
            method,
            f"/api/users/addresses/{home['id']}",
            json=body,
            headers=bob,
            expected_status=404,
        )
        assert reply["code"] == "address_not_found"
    assert await listed(user, bob) == []
    assert await listed(user, ann) == [home]
    for path in ("0", "-1", "1.0", "\uff11", "99999999999999999999", "1%00"):
        reply = await call(
            user, "DELETE", f"/api/users/addresses/{path}", headers=ann, expected_status=404
        )
        assert reply["code"] == "address_not_found"


async def test_the_same_address_sent_twice_is_kept_once(user: TestClient) -> None:
    _, ann = await customer(user, "ann@shop.test")
    answers = await asyncio.gather(*(add(user, ann) for _ in range(6)))
    assert len({answer["id"] for answer in answers}) == 1
    assert await listed(user, ann) == [answers[0]]
    # Tidied first: the same address typed with other spaces and case is the same one.
    again = await add(user, ann, recipient=" Ann Lee ", postal_code="sw1a 2aa")
    assert again == answers[0]
    other = await add(user, ann, line2="Flat 2")
    assert other["id"] != again["id"]


async def test_no_more_than_the_limit_even_asked_at_once(user: TestClient) -> None:
    _, ann = await customer(user, "ann@shop.test")
    await add(user, ann)

    async def attempt(n: int) -> Any:
        response = await user.post(
            "/api/users/addresses", json={**HOME, "label": f"#{n}"}, headers=ann
        )
        return response.status, await response.json()

    # Each a different address (its label), or they would be one.
    answers = await asyncio.gather(*(attempt(n) for n in range(3 * MAX_ADDRESSES)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [201] * (MAX_ADDRESSES - 1) + [409] * (2 * MAX_ADDRESSES + 1)
    refused = next(body for status, body in answers if status == 409)
    assert (refused["code"], refused["limit"]) == ("too_many_addresses", MAX_ADDRESSES)
    assert str(MAX_ADDRESSES) in refused["error"]
    assert len(await listed(user, ann)) == MAX_ADDRESSES


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"country": "XX"}, "country"),
        ({"country": "gb"}, "country"),
        ({"country": "GBR"}, "country"),
        ({"country": "\uff27\uff22"}, "country"),  # fullwidth GB
        ({"country": None}, "country"),
        ({"recipient": "   "}, "recipient"),
        ({"line1": "10 Downing\x00Street"}, "line1"),
        ({"line1": "x" * 101}, "line1"),
        ({"city": "Lon\ndon"}, "city"),
        ({"postal_code": "SW1A!2AA"}, "postal_code"),
        ({"postal_code": "-SW1A"}, "postal_code"),
        ({"phone": "call me"}, "phone"),
        ({"label": "\u202eemoH"}, "label"),
        ({"line1": 10}, "line1"),
        ({"role": "admin"}, "role"),
    ],
)
async def test_a_bad_address_is_refused_naming_the_field(
    user: TestClient, change: dict[str, Any], field: str
) -> None:
    _, ann = await customer(user, "ann@shop.test")
    reply = await call(
        user,
        "POST",
        "/api/users/addresses",
        json={**HOME, **change},
        headers=ann,
        expected_status=400,
    )
    assert reply["code"] == "validation_error"
    assert field in reply["error"], reply
    assert await listed(user, ann) == []


async def test_the_order_service_reads_a_customers_address_and_no_one_else_does(
    user: TestClient,
) -> None:
    ann_id, ann = await customer(user, "ann@shop.test")
    bob_id, _ = await customer(user, "bob@shop.test")
    home = await add(user, ann)
    path = f"/internal/users/{ann_id}/addresses/{home['id']}"
    reply = await call(user, "GET", path, headers=as_service("order"), expected_status=200)
    assert reply["data"] == home
    # A customer's token does not reach it, and a service's reaches no customer's list.
    await call(user, "GET", path, headers=ann, expected_status=403)
    reply = await call(
        user, "GET", "/api/users/addresses", headers=as_service("order"), expected_status=403
    )
    assert reply["code"] == "not_a_user"
    # Another user's id with this address's: not found.
    other = f"/internal/users/{bob_id}/addresses/{home['id']}"
    reply = await call(user, "GET", other, headers=as_service("order"), expected_status=404)
    assert reply["code"] == "address_not_found"

    # An account removed takes its addresses with it.
    await call(
        user,
        "DELETE",
        "/api/users/profile",
        json={"current_password": PASSWORD},
        headers=ann,
        expected_status=200,
    )
    reply = await call(user, "GET", path, headers=as_service("order"), expected_status=404)
    assert reply["code"] == "address_not_found"
