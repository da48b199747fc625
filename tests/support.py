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
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient

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
    """Make a request, check its status and the envelope, and return the JSON body."""
    response = await client.request(method, path, **kwargs)
    text = await response.text()
    assert response.status == expected_status, text
    assert response.headers["X-Request-ID"]
    assert response.content_type == "application/json", text
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
    body = await response.json()
    return response.status, body.get("code")


async def undo(
    product: TestClient, headers: dict[str, str], product_id: str, reference: str
) -> int:
    response = await product.post(
        f"/api/products/{product_id}/stock/undo", json={"reference": reference}, headers=headers
    )
    await response.read()
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


# -- shopctl as a person runs it: real processes, a data directory of the test's own -----------

REPO = Path(__file__).resolve().parents[1]
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
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in NOT_INHERITED and not key.startswith("SHOP_")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "250"
    return {**env, **values}


def shopctl(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
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


def http(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request as a client outside the shop makes it; the status and the JSON answer."""
    headers = {"Accept": "application/json", **(headers or {})}
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


def admin_token(gateway: str, data_dir: Path) -> str:
    """The bootstrap admin's token, from a real login with the password `shopctl up` made
    and kept in the data dir."""
    password = (data_dir / "admin_password").read_text().strip()
    credentials = {"email": "admin@shop.local", "password": password}
    code, reply = http("POST", f"{gateway}/api/users/login", credentials)
    assert code == 200, reply
    assert reply["data"]["user"]["role"] == "admin"
    return reply["data"]["token"]
