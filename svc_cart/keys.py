"""The cart service's app keys, shared by its views and its data layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from redis.asyncio import Redis

if TYPE_CHECKING:
    from prometheus_client import Counter

    from shopkit.metrics import Family
    from svc_cart.catalogue import Catalogue, PricedAnswers
    from svc_cart.store import CartStore

REDIS = web.AppKey("redis", Redis)
STORE: web.AppKey[CartStore] = web.AppKey("store")
CATALOGUE: web.AppKey[Catalogue] = web.AppKey("catalogue")
ANSWERS: web.AppKey[PricedAnswers] = web.AppKey("answers")
# Changes made to carts, by kind (routes.CHANGE_KINDS): shop_cart_changes_total.
CART_CHANGES: web.AppKey[Family[Counter]] = web.AppKey("cart_changes")
