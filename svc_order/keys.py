"""The order service's app keys, shared by its views, its saga and its data layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from shopkit.client import ServiceClient
from svc_order.delivery import DeliveryRules

if TYPE_CHECKING:
    from svc_order.mailer import EmailSender
    from svc_order.saga import Checkout
    from svc_order.store import OrderStore

STORE: web.AppKey[OrderStore] = web.AppKey("store")
CHECKOUT: web.AppKey[Checkout] = web.AppKey("checkout")
MAILER: web.AppKey[EmailSender] = web.AppKey("mailer")
PRODUCTS = web.AppKey("products", ServiceClient)
CARTS = web.AppKey("carts", ServiceClient)
USERS = web.AppKey("users", ServiceClient)
DELIVERY = web.AppKey("delivery", DeliveryRules)
