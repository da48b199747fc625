"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import aiohttp
import asyncpg
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, make_mocked_request
from jsonschema import Draft202012Validator
from yarl import URL

from shopctl import processes

JWT_SECRET = "test-secret-" + "x" * 60
ADMIN_EMAIL = "boss@shop.test"
ADMIN_PASSWORD = "correct horse battery staple"


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 30) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` once ``within`` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not happen within {within} s")
        await asyncio.sleep(0.01)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def forged(claims: dict[str, Any], *, secret: str = JWT_SECRET, algorithm: str = "HS256") -> str:
    """A token with an admin's claims, changed by ``claims``, signed as asked: for attacks."""
    import jwt

    now = datetime.now(UTC)
    base = {
        "sub": "1",
        "email": "admin@shop.test",
        "role": "admin",
        "iat": now,
        "exp": now + timedelta(hours=1),
    }
    return jwt.encode({**base, **claims}, secret, algorithm=algorithm)


def unsigned(claims: dict[str, Any]) -> str:
    """The same claims under ``alg: none``, with no signature."""
    import jwt

    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    return f"{header}.{forged(claims).split('.')[1]}."


# The user service the other services ask about tokens (conftest's user_server) holds the
# admin (id 1) and customers 2 .. TEST_ACCOUNTS - 1: the users test tokens name.
TEST_ACCOUNTS = 10_000
TEST_ACCOUNT_PASSWORD = "test-account-password"


async def add_accounts(connection: asyncpg.Connection, ids: Iterable[int]) -> None:
    """Customers with these ids (email u<id>@shop.test, password TEST_ACCOUNT_PASSWORD) in
    a user service's database, made directly so that thousands cost one statement."""
    import bcrypt

    password_hash = bcrypt.hashpw(TEST_ACCOUNT_PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    await connection.execute(
        """INSERT INTO users (id, email, password_hash) OVERRIDING SYSTEM VALUE
           SELECT id, 'u' || id || '@shop.test', $2 FROM unnest($1::bigint[]) AS id
           ON CONFLICT DO NOTHING""",
        list(ids),
        password_hash,
    )


def customer(user_id: int) -> dict[str, str]:
    """Headers of a customer with this id (a token as the user service would issue it); the
    services accept it when the user service they ask has the account (see TEST_ACCOUNTS)."""
    from shopkit.auth import issue_token

    token = issue_token(
        JWT_SECRET, sub=str(user_id), email=f"u{user_id}@shop.test", role="customer"
    )
    return bearer(token)


def as_service(name: str) -> dict[str, str]:
    """Headers of one of the shop's services (a service token), e.g. the order service's
    for stock changes with a reference, which are the services' alone."""
    from shopkit.auth import service_token

    return bearer(service_token(JWT_SECRET, name))


async def call(
    client: TestClient,
    method: str,
    path: str,
    *,
    expected_status: int,
    **kwargs: Any,
) -> dict[str, Any]:
    """Make a request, check its status, the envelope and that the answer is what the
    service's OpenAPI document declares, and return the JSON body."""
    response = await client.request(method, path, **kwargs)
    text = await response.text()
    assert response.status == expected_status, text
    assert response.headers["X-Request-ID"]
    assert response.content_type == "application/json", text
    await assert_documented(client, response, text)
    body = await response.json()
    if expected_status < 400:
        assert body["success"] is True, body
        assert "data" in body
    else:
        assert body["success"] is False, body
        assert isinstance(body["error"], str) and body["error"], body
        assert isinstance(body["code"], str) and body["code"].islower(), body
    return body


def product_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "name": "Enamel Mug",
        "description": "A sturdy camping mug",
        "price": 12.5,
        "category": "kitchen",
        "stock": 10,
    }
    body.update(overrides)
    return body


async def create_product(
    client: TestClient, headers: dict[str, str], **overrides: Any
) -> dict[str, Any]:
    body = await call(
        client,
        "POST",
        "/api/products",
        json=product_body(**overrides),
        headers=headers,
        expected_status=201,
    )
    return body["data"]


@asynccontextmanager
async def postgres(uri: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to a database, closed afterwards."""
    connection = await asyncpg.connect(uri)
    try:
        yield connection
    finally:
        await connection.close()


async def stock_of(client: TestClient, product_id: str) -> int:
    """A product's stock, as its public read shows it."""
    reply = await call(client, "GET", f"/api/products/{product_id}", expected_status=200)
    return reply["data"]["stock"]


async def change_stock(
    client: TestClient,
    headers: dict[str, str],
    product_id: str,
    quantity: int,
    *,
    reference: str | None = None,
    expected_status: int = 200,
) -> dict[str, Any]:
    """PATCH a product's stock by `quantity` (with a saga `reference` when given)."""
    body: dict[str, Any] = {"quantity": quantity}
    if reference is not None:
        body["reference"] = reference
    return await call(
        client,
        "PATCH",
        f"/api/products/{product_id}/stock",
        json=body,
        headers=headers,
        expected_status=expected_status,
    )


REPO = Path(__file__).resolve().parent.parent


def manifests_with_secrets(destination: Path) -> Path:
    """A copy of manifests/ at `destination` whose overlays have their secrets files, made
    from the committed `*.env.example` with every empty value filled in, as an operator
    would (the real files are never committed)."""
    shutil.copytree(REPO / "manifests", destination, ignore=shutil.ignore_patterns("*.env"))
    for example in destination.glob("overlays/*/secrets/*.env.example"):
        lines = []
        for line in example.read_text().splitlines():
            key, equals, value = line.partition("=")
            if equals and not line.startswith("#") and not value:
                line = f"{key}=test-{key.lower().replace('_', '-')}-{'x' * 32}"
            lines.append(line)
        example.with_suffix("").write_text("\n".join(lines) + "\n")
    return destination


class OrderProcess:
    """The order service as a real process on a fixed port, killed and started at will."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "svc_order"],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    async def ready(self) -> None:
        async with aiohttp.ClientSession() as session:

            async def answers() -> bool:
                assert self.process is not None and self.process.poll() is None, "it exited"
                try:
                    async with session.get(f"{self.url}/ready") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(answers, "the order service's readiness")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


# -- stock changes with a reference (the checkout saga's steps) ------------------------------


async def take(
    product: TestClient, headers: dict[str, str], product_id: str, units: int, reference: str
) -> int:
    return (await take_answer(product, headers, product_id, units, reference))[0]


async def take_answer(
    product: TestClient, headers: dict[str, str], product_id: str, units: int, reference: str
) -> tuple[int, str | None]:
    """The status of a referenced stock change and, for a refusal, its code."""
    response = await product.patch(
        f"/api/products/{product_id}/stock",
        json={"quantity": units, "reference": reference},
        headers=headers,
    )
    text = await response.text()
    await assert_documented(product, response, text)
    return response.status, json.loads(text).get("code")


async def undo(
    product: TestClient, headers: dict[str, str], product_id: str, reference: str
) -> int:
    response = await product.post(
        f"/api/products/{product_id}/stock/undo", json={"reference": reference}, headers=headers
    )
    await assert_documented(product, response, await response.text())
    return response.status


def log_lines(path: Path) -> list[dict[str, Any]]:
    """A service's log file as records: its JSON lines, and any other line as {"msg": ...}."""
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            lines.append({"msg": text})
    return lines


# -- a whole shop from `shopctl up`, driven as a user would ---------------------------------

SHOP_ADMIN_EMAIL = "admin@shop.local"  # the admin `shopctl up` makes
# Settings the shell may carry that would make shopctl use something other than what it
# starts itself on a fresh machine.
NOT_INHERITED = {
    "MONGODB_URI",
    "DATABASE_URL",
    "REDIS_URL",
    "JWT_SECRET",
    "ADMIN_EMAIL",
    "ADMIN_PASSWORD",
}


def shop_env(**values: str) -> dict[str, str]:
    """The environment `shopctl` runs with: this shell's, less what would change its choices."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in NOT_INHERITED and not key.startswith("SHOP_")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "250"
    return {**env, **values}


def shopctl(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m shopctl` as a user would; its output is captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "shopctl", *map(str, args)],
        capture_output=True,
        text=True,
        env=env or shop_env(),
        cwd=REPO,
        timeout=180,
    )


def free_base_port() -> int:
    """A base port whose five service ports are all free."""
    while True:
        base = processes.free_port()
        if base + 4 < 65536 and not any(processes.port_in_use(base + k) for k in range(5)):
            return base


@contextmanager
def running_shop(data_dir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A whole shop from `shopctl up --detach` on free ports: its gateway URL and the
    environment shopctl runs with; stopped afterwards, whatever happened."""
    base = free_base_port()
    # Few bcrypt rounds keep sign-ups quick; the default (12) is measured in benchmarks/.
    env = shop_env(BCRYPT_ROUNDS="4")
    try:
        up = shopctl("up", "--detach", "--data-dir", data_dir, "--base-port", base, env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        yield f"http://127.0.0.1:{base}", env
    finally:
        down = shopctl("down", "--data-dir", data_dir, env=env)
        assert down.returncode == 0, down.stdout + down.stderr


def http(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    """A blocking JSON request (no proxy), for tests without an event loop: status and body."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with opener.open(request, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def shop_admin_token(gateway: str, data_dir: Path) -> str:
    """The token of the admin `shopctl up` made, from a real login with its password."""
    password = (data_dir / "admin_password").read_text().strip()
    credentials = {"email": SHOP_ADMIN_EMAIL, "password": password}
    code, reply = http("POST", f"{gateway}/api/users/login", credentials)
    assert code == 200, reply
    assert reply["data"]["user"]["role"] == "admin"
    return reply["data"]["token"]


# -- answers checked against the OpenAPI document of the service that gave them -------------
# As backendschool2019's helpers validate every answer, `call` (and the other helpers that
# make requests) check each one against the document the service serves at /openapi.json.
# Numbers are read as decimals on both sides: `multipleOf: 0.01` is about the 19.99 written
# in the answer, which its nearest binary float is not.

# Refusals the services give on routes whose document does not declare that status: gaps
# in the documents, each checked as the error envelope until its route declares it.
UNDECLARED_ERRORS: dict[tuple[str, str, int], str] = {
    ("POST", "/api/users/login", 415): "a body in an encoding nobody decodes (no route "
    "that reads a body declares 415)",
    ("GET", "/api/users/profile", 403): "a service token, which has no profile (the route "
    "declares 401 only)",
}

_DOCUMENTS: WeakKeyDictionary[web.Application, dict[str, Any]] = WeakKeyDictionary()
_FORWARDED_DOCUMENTS: WeakKeyDictionary[web.Application, dict[str, Any]] = WeakKeyDictionary()


def openapi_document(app: web.Application) -> dict[str, Any]:
    """The document the app serves at /openapi.json, numbers as Decimal (built once per app)."""
    if app not in _DOCUMENTS:
        from shopkit.openapi import build_openapi

        document = build_openapi(app, "under test", "0")
        _DOCUMENTS[app] = json.loads(json.dumps(document), parse_float=Decimal)
    return _DOCUMENTS[app]


async def route_of(app: web.Application, method: str, path: str) -> str | None:
    """The route template the app's router takes ``path`` to; None when no route does."""
    match = await app.router.resolve(make_mocked_request(method, path, app=app))
    return None if match.http_exception is not None else match.route.resource.canonical


def documented_route(document: dict[str, Any], path: str) -> str | None:
    """The document's path template that ``path`` falls under (literal segments first)."""
    segments = path.split("/")
    candidates = []
    for template in document["paths"]:
        parts = template.split("/")
        if len(parts) == len(segments) and all(
            part == segment or (part.startswith("{") and segment)
            for part, segment in zip(parts, segments, strict=True)
        ):
            candidates.append((sum(part.startswith("{") for part in parts), template))
    return min(candidates)[1] if candidates else None


def declared_schema(
    document: dict[str, Any], method: str, route: str | None, status: int
) -> dict[str, Any] | None:
    """The JSON schema the document gives the answer, or None when it declares none."""
    if route is None:  # no route took the request: the envelope every error answer has
        return {"$ref": "#/components/schemas/Error"} if status >= 400 else None
    operation = document["paths"].get(route, {}).get(method.lower())
    answer = (operation or {}).get("responses", {}).get(str(status))
    if answer is None:
        return None
    return answer["content"]["application/json"]["schema"]


def assert_matches_openapi(
    document: dict[str, Any], method: str, route: str | None, status: int, body: Any
) -> None:
    """Fail unless ``body`` is what ``document`` declares ``method route`` answers with
    ``status`` (an answer no route took: the document's error envelope)."""
    schema = declared_schema(document, method, route, status)
    if schema is None and (method, route, status) in UNDECLARED_ERRORS:
        schema = {"$ref": "#/components/schemas/Error"}
    assert schema is not None, f"the document declares no {status} answer to {method} {route}"
    validator = Draft202012Validator(
        {**schema, "components": document["components"]},
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    problems = [
        f"{'/'.join(map(str, error.absolute_path)) or 'the body'}: {error.message}"
        for error in validator.iter_errors(body)
    ]
    assert not problems, f"{method} {route} {status} is not as documented: {problems}"


async def _served_document(base_url: str) -> dict[str, Any] | None:
    """The document a service at ``base_url`` serves, numbers as Decimal; None if it does not."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.get(f"{base_url}/openapi.json") as answer,
        ):
            if answer.status != 200:
                return None
            return json.loads(await answer.text(), parse_float=Decimal)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def forwarded_document(app: web.Application, path: str) -> dict[str, Any] | None:
    """For a gateway, the document of the backend it forwards ``path`` to: the one whose
    document has routes under the path's /api/<prefix>; None for any other app or path."""
    from svc_gateway.keys import BACKENDS

    prefix = "/".join(path.split("/")[:3])
    if BACKENDS not in app or not prefix.startswith("/api/"):
        return None
    documents = _FORWARDED_DOCUMENTS.setdefault(app, {})
    for backend in app[BACKENDS].values():
        if backend.name not in documents:  # asked once it answers (it may be down for now)
            document = await _served_document(backend.base_url)
            if document is None:
                continue
            documents[backend.name] = document
        if any(
            template == prefix or template.startswith(f"{prefix}/")
            for template in documents[backend.name]["paths"]
        ):
            return documents[backend.name]
    return None


async def assert_documented(client: TestClient, response: ClientResponse, text: str) -> None:
    """Fail unless the JSON answer ``text`` is what the document of the service that gave it
    declares: the app's own, or for what a gateway forwards unchanged (its document claims
    nothing about it), the document of the backend that answered."""
    app = client.app
    assert app is not None, "the answer's document is read from the app the client is of"
    method, status, path = response.method, response.status, response.url.raw_path
    body = json.loads(text, parse_float=Decimal)
    document = openapi_document(app)
    route = await route_of(app, method, path)
    if not declared_schema(document, method, route, status):
        backend = await forwarded_document(app, URL(path).path)
        if backend is not None:
            document, route = backend, documented_route(backend, URL(path).path)
    assert_matches_openapi(document, method, route, status, body)
