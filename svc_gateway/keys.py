"""The gateway's app and request keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from shopkit.auth import ServiceCredential
from shopkit.client import ServiceClient

if TYPE_CHECKING:
    from svc_gateway.assets import Assets
    from svc_gateway.docs import ApiDocs
    from svc_gateway.session import PageSession, SessionKeys

# Backend name -> client, for the backends this gateway is configured with.
BACKENDS = web.AppKey("backends", dict[str, ServiceClient])
# How long a checkout may take, retries included, before its outcome is called unknown.
CHECKOUT_DEADLINE = web.AppKey("checkout_deadline", float)
# The keys that sign the pages' CSRF tokens and flash messages (and verify logins).
SESSION_KEYS: web.AppKey[SessionKeys] = web.AppKey("session_keys")
# The pages' static files, by their content-hashed names (loaded at start-up).
ASSETS: web.AppKey[Assets] = web.AppKey("assets")
# The demo catalogue's pictures, by their own (unhashed) names (loaded at start-up).
CATALOGUE_IMAGES: web.AppKey[Assets] = web.AppKey("catalogue_images")
# What /api/docs serves: Swagger UI's files and the public API's merged document.
API_DOCS: web.AppKey[ApiDocs] = web.AppKey("api_docs")

# The gateway's own service token, for what the pages do for guests (their carts: the cart
# service's internal routes); None without JWT_SECRET, and then guests have no cart.
GATEWAY_CREDENTIAL = web.AppKey("gateway_credential", ServiceCredential | None)

# Who is browsing and what goes back into the page cookies, for a page request.
PAGE_SESSION: web.RequestKey[PageSession] = web.RequestKey("page_session")
# Units in the browsing cart, for the header; None when the cart service could not say.
CART_COUNT = web.RequestKey("cart_count", int | None)
