"""The login limits, as an attacker meets them: parallel guesses at two replicas on one
PostgreSQL, strangers at other addresses, one address spraying many emails, and forged
X-Forwarded-For through the gateway. Clients get addresses of their own on loopback
(127.0.0.2, 127.0.0.3, ...), so every limit per client address is met as in production.

The semantics under test (README "Login limits"): an attempt is taken, in PostgreSQL, before
its password is checked, and counts as a failure until its check ends; while the failures
and the checks under way reach a limit's free failures, further attempts are refused with
429 without a check. So of any number of guesses at once, exactly the free number is
checked (each a 401), every other one is a 429, and nothing a refused request carried, the
right password included, is ever looked at.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request
from support import ADMIN_EMAIL, ADMIN_PASSWORD, JWT_SECRET, postgres

from shopkit.client_address import (
    client_behind_hops,
    client_from_trusted,
    limit_key,
    parse_networks,
)
from svc_gateway.app import GatewaySettings
from svc_gateway.app import create_app as create_gateway_app
from svc_user.app import UserSettings
from svc_user.app import create_app as create_user_app
from svc_user.keys import STORE
from svc_user.store import ACCOUNT_FREE_FAILURES, ADDRESS_FREE_FAILURES, FREE_FAILURES

PASSWORD = "s3cret-enough"
WRONG = "not-the-password"
LOGIN = "/api/users/login"


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    retry_after: str | None


@asynccontextmanager
async def client_at(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client whose connections come from ``address`` (any of 127.0.0.0/8)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def log_in(
    session: aiohttp.ClientSession,
    server: TestServer,
    email: str,
    password: str,
    headers: dict[str, str] | None = None,
) -> Answer:
    body = {"email": email, "password": password}
    async with session.post(server.make_url(LOGIN), json=body, headers=headers) as response:
        return Answer(response.status, await response.json(), response.headers.get("Retry-After"))


def statuses(answers: list[Answer]) -> dict[int, int]:
    counted: dict[int, int] = {}
    for answer in answers:
        counted[answer.status] = counted.get(answer.status, 0) + 1
    return counted


def assert_limited(answer: Answer, scope_words: str) -> None:
    """A 429 in the envelope, with Retry-After and a message naming what is limited."""
    assert answer.status == 429, answer
    assert answer.body["success"] is False
    assert answer.body["code"] == "too_many_attempts"
    assert answer.retry_after is not None and int(answer.retry_after) >= 1
    assert f"try again in {answer.retry_after} seconds" in answer.body["error"]
    assert scope_words in answer.body["error"], answer.body


async def register(server: TestServer, email: str, at: str = "127.0.0.1") -> None:
    async with client_at(at) as session:
        body = {"email": email, "password": PASSWORD}
        async with session.post(server.make_url("/api/users/register"), json=body) as response:
            assert response.status == 201, await response.text()


async def replicas_of(
    aiohttp_server: Any, settings: UserSettings, **changes: Any
) -> list[TestServer]:
    """Two replicas of the user service on one database, with ``changes`` to its settings."""
    changed = settings.model_copy(update=changes)
    return [await aiohttp_server(create_user_app(changed)) for _ in range(2)]


@pytest.fixture
async def slow_replicas(aiohttp_server: Any, user_settings: UserSettings) -> list[TestServer]:
    """Two replicas at the production bcrypt cost (checks still run as guesses arrive)."""
    return await replicas_of(aiohttp_server, user_settings, bcrypt_rounds=12)


@pytest.fixture
async def replicas(aiohttp_server: Any, user_settings: UserSettings) -> list[TestServer]:
    """Two replicas of the user service on one database (cheap bcrypt)."""
    return await replicas_of(aiohttp_server, user_settings)


# -- parallel guesses ------------------------------------------------------------------------


async def test_thirty_guesses_at_once_get_exactly_the_free_checks(
    slow_replicas: list[TestServer],
) -> None:
    server = slow_replicas[0]
    await register(server, "ann@shop.test")
    async with client_at("127.0.0.2") as session:
        answers = await asyncio.gather(
            *(log_in(session, server, "ann@shop.test", WRONG) for _ in range(30))
        )
        assert statuses(answers) == {401: FREE_FAILURES, 429: 30 - FREE_FAILURES}
        for answer in answers:
            if answer.status == 429:
                assert_limited(answer, "for this email from your network address")
        # The limit holds: the right password is not even checked now.
        right = await log_in(session, server, "ann@shop.test", PASSWORD)
    assert_limited(right, "for this email from your network address")


async def test_the_right_password_among_29_wrong_ones_is_not_checked(
    slow_replicas: list[TestServer],
) -> None:
    # The attack: 29 wrong guesses and then the right one, all on their way at once.
    # The right one leaves once the 29 have been answered or taken (the refused answer at
    # once; the taken ones are still in bcrypt): it must be refused, not checked.
    server = slow_replicas[0]
    await register(server, "ann@shop.test")
    refused = asyncio.Event()
    wrong_answers: list[Answer] = []

    async with client_at("127.0.0.2") as session:

        async def wrong() -> Answer:
            answer = await log_in(session, server, "ann@shop.test", WRONG)
            wrong_answers.append(answer)
            if sum(a.status == 429 for a in wrong_answers) == 29 - FREE_FAILURES:
                refused.set()
            return answer

        async def right() -> Answer:
            await refused.wait()
            return await log_in(session, server, "ann@shop.test", PASSWORD)

        *answers, last = await asyncio.gather(*(wrong() for _ in range(29)), right())
    assert statuses(answers) == {401: FREE_FAILURES, 429: 29 - FREE_FAILURES}
    assert_limited(last, "for this email from your network address")


async def test_59_guesses_at_two_replicas_get_exactly_the_free_checks(
    slow_replicas: list[TestServer],
) -> None:
    replicas = slow_replicas
    await register(replicas[0], "ann@shop.test")
    async with client_at("127.0.0.2") as session:
        answers = await asyncio.gather(
            *(log_in(session, replicas[n % 2], "ann@shop.test", WRONG) for n in range(59))
        )
        assert statuses(answers) == {401: FREE_FAILURES, 429: 59 - FREE_FAILURES}
        for server in replicas:
            right = await log_in(session, server, "ann@shop.test", PASSWORD)
            assert_limited(right, "for this email from your network address")


async def test_guesses_from_many_addresses_stop_at_the_account_limit(
    aiohttp_server: Any, user_settings: UserSettings
) -> None:
    # Distributed guessing: 20 addresses, 3 guesses each, at once, at two replicas. Each
    # address is within its own limit; the account's (10 here) caps the checks in all.
    replicas = await replicas_of(aiohttp_server, user_settings, login_account_free_failures=10)
    await register(replicas[0], "ann@shop.test")
    async with client_at("127.0.0.50") as owner:  # where Ann logs in from, every day
        assert (await log_in(owner, replicas[0], "ann@shop.test", PASSWORD)).status == 200

    async def guesses_from(number: int) -> list[Answer]:
        async with client_at(f"127.0.1.{number}") as session:
            return await asyncio.gather(
                *(log_in(session, replicas[n % 2], "ann@shop.test", WRONG) for n in range(3))
            )

    answers = [a for batch in await asyncio.gather(*map(guesses_from, range(20))) for a in batch]
    assert statuses(answers) == {401: 10, 429: 50}
    async with client_at("127.0.0.51") as elsewhere:
        refused = await log_in(elsewhere, replicas[1], "ann@shop.test", PASSWORD)
    assert_limited(refused, "for this email from many network addresses")
    assert "where you have logged in to this account before" in refused.body["error"]
    # Ann's usual address is not held by the account-wide lock.
    async with client_at("127.0.0.50") as owner:
        assert (await log_in(owner, replicas[1], "ann@shop.test", PASSWORD)).status == 200


# -- strangers and spraying ----------------------------------------------------------------


async def test_a_stranger_cannot_lock_the_owner_out(replicas: list[TestServer]) -> None:
    stranger_answers = []
    async with client_at("127.0.0.2") as stranger:
        for _ in range(FREE_FAILURES + 3):
            stranger_answers.append(await log_in(stranger, replicas[0], ADMIN_EMAIL, WRONG))
    assert [a.status for a in stranger_answers] == [401] * FREE_FAILURES + [429] * 3
    # The admin, from its own address, is not held by what the stranger did.
    async with client_at("127.0.0.3") as owner:
        for server in replicas:
            answer = await log_in(owner, server, ADMIN_EMAIL, ADMIN_PASSWORD)
            assert answer.status == 200, answer
    async with client_at("127.0.0.2") as stranger:
        assert_limited(
            await log_in(stranger, replicas[1], ADMIN_EMAIL, ADMIN_PASSWORD),
            "for this email from your network address",
        )


async def test_spraying_one_password_over_many_emails_gets_429(
    replicas: list[TestServer],
) -> None:
    emails = [f"victim{n}@shop.test" for n in range(ADDRESS_FREE_FAILURES + 10)]
    async with client_at("127.0.0.4") as sprayer:
        answers = await asyncio.gather(
            *(
                log_in(sprayer, replicas[n % 2], email, "Summer2026!")
                for n, email in enumerate(emails)
            )
        )
    assert statuses(answers) == {401: ADDRESS_FREE_FAILURES, 429: 10}
    for answer in answers:
        if answer.status == 429:
            assert_limited(answer, "from your network address, whichever the email")
    # Another address is not affected.
    async with client_at("127.0.0.5") as other:
        assert (await log_in(other, replicas[0], emails[-1], "Summer2026!")).status == 401


async def test_a_customer_who_only_registered_is_not_held_where_it_registered(
    aiohttp_server: Any, user_settings: UserSettings
) -> None:
    # 20 strangers' addresses, 5 wrong guesses each, all at once at two replicas: 100
    # failures, the account-wide limit. Bea has never logged in, only registered; the address
    # she registered from is hers all the same. (Room for every check at once: a 503 busy
    # would count for nothing and leave the account short of its limit.)
    replicas = await replicas_of(aiohttp_server, user_settings, bcrypt_queue_limit=1000)
    await register(replicas[0], "bea@shop.test", at="127.0.0.60")

    async def guesses_from(number: int) -> list[Answer]:
        async with client_at(f"127.0.2.{number}") as session:
            return await asyncio.gather(
                *(
                    log_in(session, replicas[n % 2], "bea@shop.test", WRONG)
                    for n in range(FREE_FAILURES)
                )
            )

    batches = await asyncio.gather(*map(guesses_from, range(1, 21)))
    answers = [answer for batch in batches for answer in batch]
    assert statuses(answers) == {401: ACCOUNT_FREE_FAILURES}
    async with client_at("127.0.0.61") as elsewhere:
        refused = await log_in(elsewhere, replicas[1], "bea@shop.test", PASSWORD)
    assert_limited(refused, "for this email from many network addresses")
    async with client_at("127.0.0.60") as owner:
        for server in replicas:
            answer = await log_in(owner, server, "bea@shop.test", PASSWORD)
            assert answer.status == 200, answer


async def test_a_sprayer_at_a_shared_address_holds_everyone_there_alike(
    replicas: list[TestServer],
) -> None:
    # One address shared by many people (a carrier NAT, an office): Ann logged in from it
    # before, Cy registered from it, Bob uses it for the first time. A sprayer there uses up
    # the address-wide limit, all at once at two replicas. Every email then answers alike:
    # none tells the sprayer that it is used at this address.
    shared = "127.0.0.70"
    await register(replicas[0], "ann@shop.test")
    await register(replicas[0], "bob@shop.test")
    await register(replicas[1], "cy@shop.test", at=shared)
    async with client_at(shared) as ann:
        assert (await log_in(ann, replicas[1], "ann@shop.test", PASSWORD)).status == 200
    emails = [f"someone{n}@shop.test" for n in range(ADDRESS_FREE_FAILURES + 5)]
    async with client_at(shared) as sprayer:
        answers = await asyncio.gather(
            *(log_in(sprayer, replicas[n % 2], email, WRONG) for n, email in enumerate(emails))
        )
        assert statuses(answers) == {401: ADDRESS_FREE_FAILURES, 429: 5}
        for email in ("ann@shop.test", "cy@shop.test", "bob@shop.test", "nobody@shop.test"):
            assert_limited(
                await log_in(sprayer, replicas[0], email, WRONG),
                "from your network address, whichever the email",
            )
    # Elsewhere, each of them logs in as usual.
    async with client_at("127.0.0.72") as elsewhere:
        for email in ("ann@shop.test", "cy@shop.test", "bob@shop.test"):
            assert (await log_in(elsewhere, replicas[1], email, PASSWORD)).status == 200


async def test_guessing_a_known_account_from_its_own_address_is_still_limited(
    replicas: list[TestServer],
) -> None:
    # Ann's known address lets her past the account-wide lock, never past the limit on her
    # email from that address: a guesser sharing it meets that one.
    shared = "127.0.0.71"
    await register(replicas[0], "ann@shop.test", at=shared)
    async with client_at(shared) as guesser:
        answers = await asyncio.gather(
            *(log_in(guesser, replicas[n % 2], "ann@shop.test", WRONG) for n in range(12))
        )
        assert statuses(answers) == {401: FREE_FAILURES, 429: 12 - FREE_FAILURES}
        for answer in answers:
            if answer.status == 429:
                assert_limited(answer, "for this email from your network address")
        # The right password, from Ann's own address, is now held too: nothing checks it.
        right = await log_in(guesser, replicas[1], "ann@shop.test", PASSWORD)
    assert_limited(right, "for this email from your network address")


async def test_the_limits_keep_the_same_words_for_unknown_emails(
    replicas: list[TestServer],
) -> None:
    await register(replicas[0], "ann@shop.test")
    async with client_at("127.0.0.6") as session:
        for email in ("ann@shop.test", "ghost@shop.test"):
            for _ in range(FREE_FAILURES):
                assert (await log_in(session, replicas[0], email, WRONG)).status == 401
        known = await log_in(session, replicas[0], "ann@shop.test", WRONG)
        unknown = await log_in(session, replicas[0], "ghost@shop.test", WRONG)
    assert known.body == unknown.body and known.status == unknown.status == 429


async def test_a_failed_check_is_counted_in_postgresql_and_a_success_clears_its_pair(
    replicas: list[TestServer], user_settings: UserSettings
) -> None:
    await register(replicas[0], "ann@shop.test")
    async with client_at("127.0.0.7") as session:
        for _ in range(FREE_FAILURES - 1):
            assert (await log_in(session, replicas[0], "ann@shop.test", WRONG)).status == 401
        assert (await log_in(session, replicas[1], "ann@shop.test", PASSWORD)).status == 200
    async with postgres(user_settings.database_url) as connection:
        rows = await connection.fetch(
            "SELECT scope, failures, pending FROM login_attempts ORDER BY scope"
        )
        known = await connection.fetch(
            "SELECT email, address FROM login_known_addresses ORDER BY address"
        )
    # The pair starts afresh; the account and the address keep what was tried (a success
    # must not wipe what others did), and no attempt is left under way.
    assert [tuple(row) for row in rows] == [
        ("account", FREE_FAILURES - 1, 0),
        ("address", FREE_FAILURES - 1, 0),
    ]
    # Known: where Ann registered, and where she has now logged in.
    assert [tuple(row) for row in known] == [
        ("ann@shop.test", "127.0.0.1"),
        ("ann@shop.test", "127.0.0.7"),
    ]


async def test_a_busy_answer_counts_toward_no_limit(
    aiohttp_server: Any, user_settings: UserSettings
) -> None:
    # Room for one password check at a time: the others are refused with 503 busy. Those
    # checked nothing, so they must give back the attempts they took.
    (server, _) = await replicas_of(
        aiohttp_server, user_settings, bcrypt_rounds=12, bcrypt_queue_limit=1
    )
    async with client_at("127.0.0.8") as session:
        answers = await asyncio.gather(
            *(log_in(session, server, ADMIN_EMAIL, WRONG) for _ in range(FREE_FAILURES))
        )
    counted = statuses(answers)
    assert counted.get(503, 0) >= 1 and set(counted) <= {401, 503}, counted
    for answer in answers:
        if answer.status == 503:
            assert answer.body["code"] == "busy" and answer.retry_after == "1"
    async with postgres(user_settings.database_url) as connection:
        rows = await connection.fetch("SELECT scope, failures, pending FROM login_attempts")
    assert {tuple(row) for row in rows} == {
        (scope, counted[401], 0) for scope in ("account", "address", "pair")
    }


async def test_counts_past_their_window_are_pruned(
    replicas: list[TestServer], user_settings: UserSettings
) -> None:
    async with client_at("127.0.0.9") as session:
        for email in ("old@shop.test", "locked@shop.test"):
            for _ in range(FREE_FAILURES if email.startswith("locked") else 1):
                assert (await log_in(session, replicas[0], email, WRONG)).status == 401
    async with postgres(user_settings.database_url) as connection:
        # Both windows started long ago; only the locked pair still holds anything.
        await connection.execute(
            "UPDATE login_attempts SET window_started_at = now() - interval '1 day'"
        )
        forgotten = await replicas[0].app[STORE].prune_login_attempts()
        left = await connection.fetch("SELECT scope, email FROM login_attempts")
    assert forgotten == 4  # both accounts, the address, the unlocked pair
    assert [tuple(row) for row in left] == [("pair", "locked@shop.test")]


async def test_a_removed_account_takes_its_known_addresses_with_it(
    replicas: list[TestServer], user_settings: UserSettings
) -> None:
    # Whoever registers the email next must not find the old owner's addresses known.
    async with client_at("127.0.0.12") as ann:
        body = {"email": "ann@shop.test", "password": PASSWORD}
        async with ann.post(replicas[0].make_url("/api/users/register"), json=body) as response:
            token = (await response.json())["data"]["token"]
        assert (await log_in(ann, replicas[1], "ann@shop.test", PASSWORD)).status == 200
        async with ann.delete(
            replicas[1].make_url("/api/users/profile"),
            json={"current_password": PASSWORD},
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            assert response.status == 200, await response.text()
    async with postgres(user_settings.database_url) as connection:
        known = await connection.fetchval("SELECT count(*) FROM login_known_addresses")
    assert known == 0


async def test_an_email_that_nfkc_stretches_past_an_index_entry_is_a_plain_401(
    replicas: list[TestServer],
) -> None:
    # 320 characters (the most a login takes) that NFKC turns into 10 kB: counted, not a 500.
    async with client_at("127.0.0.10") as session:
        answer = await log_in(session, replicas[0], "\ufdfa" * 320, WRONG)
    assert answer.status == 401, answer


# -- the client's address: through the gateway, and straight to the user service ------------


def gateway_settings(user_url: str, hops: int = 0) -> GatewaySettings:
    return GatewaySettings.from_env(
        {
            "JWT_SECRET": JWT_SECRET,
            "HOST": "127.0.0.1",
            "USER_SERVICE_URL": user_url,
            "TRUSTED_PROXY_HOPS": str(hops),
        }
    )


async def test_a_forged_x_forwarded_for_through_the_gateway_chooses_nothing(
    aiohttp_server: Any, user_settings: UserSettings
) -> None:
    user = await aiohttp_server(create_user_app(user_settings))
    gateway = await aiohttp_server(create_gateway_app(gateway_settings(str(user.make_url("")))))
    await register(user, "ann@shop.test")
    async with client_at("127.0.0.2") as attacker:
        answers = [
            await log_in(
                attacker,
                gateway,
                "ann@shop.test",
                WRONG,
                # A new address each time, as if from ever new clients: it must not count.
                headers={"X-Forwarded-For": f"203.0.113.{n}, 198.51.100.{n}"},
            )
            for n in range(FREE_FAILURES + 2)
        ]
    assert [a.status for a in answers] == [401] * FREE_FAILURES + [429] * 2
    # The user service told one client from another: a second one through the same gateway
    # is not held (were the gateway's own address used, it would be).
    async with client_at("127.0.0.3") as owner:
        assert (await log_in(owner, gateway, "ann@shop.test", PASSWORD)).status == 200


@asynccontextmanager
async def browser_at(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A browser at ``address``: it keeps the pages' cookies (set for an IP address host)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as session:
        yield session


async def log_in_on_the_page(
    browser: aiohttp.ClientSession, gateway: TestServer, email: str, password: str
) -> int:
    """Fill in and send the login form as a browser would; the answer's status (a success
    is a 303 to the shop, not followed: this gateway has no product service for it)."""
    async with browser.get(gateway.make_url("/login")) as response:
        html = await response.text()
    form = html[html.index('action="/login"') :]
    form = form[: form.index("</form>")]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))
    fields.update(email=email, password=password)
    login = gateway.make_url("/login")
    async with browser.post(login, data=fields, allow_redirects=False) as response:
        await response.read()
        return response.status


async def test_the_login_page_limits_the_shopper_not_the_gateway(
    aiohttp_server: Any, user_settings: UserSettings
) -> None:
    # The pages call the user service themselves: they too must name the shopper's address,
    # or every page login would count as the gateway's own, and one stranger would lock all.
    user = await aiohttp_server(create_user_app(user_settings))
    gateway = await aiohttp_server(create_gateway_app(gateway_settings(str(user.make_url("")))))
    await register(user, "ann@shop.test")
    async with browser_at("127.0.0.2") as stranger:
        statuses = [
            await log_in_on_the_page(stranger, gateway, "ann@shop.test", WRONG)
            for _ in range(FREE_FAILURES + 1)
        ]
    assert statuses == [401] * FREE_FAILURES + [429]
    async with browser_at("127.0.0.3") as owner:
        assert await log_in_on_the_page(owner, gateway, "ann@shop.test", PASSWORD) == 303


async def test_the_register_page_names_the_shopper_as_the_known_address(
    aiohttp_server: Any, user_settings: UserSettings
) -> None:
    # Registering makes the shopper's address, not the gateway's, known to the login limits.
    user = await aiohttp_server(create_user_app(user_settings))
    gateway = await aiohttp_server(create_gateway_app(gateway_settings(str(user.make_url("")))))
    async with browser_at("127.0.0.2") as shopper:
        async with shopper.get(gateway.make_url("/register")) as response:
            html = await response.text()
        form = html[html.index('action="/register"') :]
        form = form[: form.index("</form>")]
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))
        fields.update(email="ann@shop.test", password=PASSWORD, password_confirm=PASSWORD)
        register_url = gateway.make_url("/register")
        async with shopper.post(register_url, data=fields, allow_redirects=False) as response:
            await response.read()
            assert response.status == 303
    async with postgres(user_settings.database_url) as connection:
        known = await connection.fetch("SELECT email, address FROM login_known_addresses")
    assert [tuple(row) for row in known] == [("ann@shop.test", "127.0.0.2")]


async def test_the_user_service_believes_x_forwarded_for_only_from_trusted_proxies(
    aiohttp_server: Any, user_settings: UserSettings
) -> None:
    settings = user_settings.model_copy(update={"trusted_proxies": parse_networks("127.0.0.1/32")})
    user = await aiohttp_server(create_user_app(settings))
    await register(user, "ann@shop.test")
    async with client_at("127.0.0.2") as direct:  # not a trusted proxy: its header is ignored
        answers = [
            await log_in(
                direct, user, "ann@shop.test", WRONG, headers={"X-Forwarded-For": f"10.0.0.{n}"}
            )
            for n in range(FREE_FAILURES + 1)
        ]
    assert [a.status for a in answers] == [401] * FREE_FAILURES + [429]
    async with client_at("127.0.0.1") as proxy:  # trusted: the client it names is believed
        forwarded = {"X-Forwarded-For": "10.9.9.9"}
        answer = await log_in(proxy, user, "ann@shop.test", PASSWORD, headers=forwarded)
    assert answer.status == 200
    async with postgres(settings.database_url) as connection:
        known = await connection.fetch("SELECT address FROM login_known_addresses")
    # Where Ann registered (straight from the trusted peer, no header) and the client it named.
    assert {row["address"] for row in known} == {"127.0.0.1", "10.9.9.9"}


def _request(peer: str, forwarded: list[str]) -> web.Request:
    headers = [("X-Forwarded-For", value) for value in forwarded]
    return make_mocked_request("POST", LOGIN, headers=headers).clone(remote=peer)


@pytest.mark.parametrize(
    ("hops", "forwarded", "expected"),
    [
        (0, [], "192.0.2.1"),
        (0, ["6.6.6.6"], "192.0.2.1"),  # nothing a client sends counts without proxies
        (1, ["6.6.6.6, 198.51.100.7"], "198.51.100.7"),  # what our one proxy appended
        (1, ["6.6.6.6", "198.51.100.7"], "198.51.100.7"),  # two header lines are one list
        (2, ["6.6.6.6, 198.51.100.7, 10.0.0.2"], "198.51.100.7"),
        (2, ["10.0.0.2"], "192.0.2.1"),  # fewer entries than proxies: only the peer is sure
        (1, ["not-an-address"], "192.0.2.1"),
        (1, ["[2001:db8::1]:443"], "2001:db8::1"),
        (1, ["::ffff:198.51.100.7"], "198.51.100.7"),
    ],
)
def test_the_gateway_reads_x_forwarded_for_only_as_far_as_its_proxies(
    hops: int, forwarded: list[str], expected: str
) -> None:
    assert client_behind_hops(_request("192.0.2.1", forwarded), hops) == expected


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("192.0.2.1", ["6.6.6.6"], "192.0.2.1"),  # an untrusted peer's header is ignored
        ("10.0.0.2", ["198.51.100.7"], "198.51.100.7"),  # the gateway's is believed
        ("10.0.0.2", ["6.6.6.6, 198.51.100.7"], "198.51.100.7"),  # ...only its own entry
        ("10.0.0.2", ["6.6.6.6, 10.0.0.3"], "6.6.6.6"),  # through two trusted hops
        ("10.0.0.2", ["garbage"], "10.0.0.2"),
        ("10.0.0.2", [], "10.0.0.2"),
    ],
)
def test_the_user_service_believes_only_its_trusted_proxies(
    peer: str, forwarded: list[str], expected: str
) -> None:
    trusted = parse_networks("10.0.0.0/8, fd00::/8")
    assert client_from_trusted(_request(peer, forwarded), trusted) == expected


def test_an_ipv6_client_is_limited_by_its_64() -> None:
    assert limit_key("2001:db8:1:2:aaaa::1") == limit_key("2001:db8:1:2:ffff::9")
    assert limit_key("2001:db8:1:2::1") != limit_key("2001:db8:1:3::1")
    assert limit_key("198.51.100.7") == "198.51.100.7"
    assert ipaddress.ip_network(limit_key("2001:db8::1")).prefixlen == 64
