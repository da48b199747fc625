"""The gateway's route table: the pages' files, every page, the API it forwards, and the
API's documentation.

shopkit's app adds the service endpoints (/health, /ready, /metrics, /openapi.json). A GET
page answers HEAD too; a POST is a form (the page middleware checks its CSRF token). The API
forwards its METHODS, and HEAD wherever it forwards GET (as every service answers it).
"""

from __future__ import annotations

from aiohttp import web

from svc_gateway import docs, pictures
from svc_gateway.assets import CATALOGUE_PREFIX, STATIC_PREFIX, catalogue_image, static_file
from svc_gateway.pages import account, addresses, admin, cart, catalogue, checkout, orders
from svc_gateway.proxy import API_PREFIXES, METHODS, proxy_to

PAGE_ROUTES = [
    # The stylesheet, script and icons, by content-hashed name; the catalogue's pictures.
    web.get(STATIC_PREFIX + "{name}", static_file, name="static"),
    web.get(CATALOGUE_PREFIX + "{name}", catalogue_image, name="catalogue_image"),
    pictures.ROUTE,  # product pictures an admin uploaded, from the product service
    # The shop window.
    web.get("/", catalogue.home),
    web.get("/products/{id}", catalogue.product_page),
    # The shopper's account.
    web.get("/register", account.register_page),
    web.post("/register", account.register),
    web.get("/login", account.login_page),
    web.post("/login", account.login),
    web.post("/logout", account.logout),
    web.get("/profile", account.profile_page),
    web.post("/profile", account.update_profile),
    web.post("/profile/password", account.change_password),
    web.get("/profile/addresses", addresses.addresses_page),
    web.post("/profile/addresses", addresses.add_address),
    web.get("/profile/addresses/{id}/edit", addresses.edit_address_page),
    web.post("/profile/addresses/{id}", addresses.update_address),
    web.post("/profile/addresses/{id}/remove", addresses.remove_address),
    # The cart and checkout.
    web.get("/cart", cart.cart_page),
    web.post("/cart/items", cart.add_to_cart),
    web.post("/cart/items/{product_id}", cart.change_quantity),
    web.post("/cart/items/{product_id}/remove", cart.remove_from_cart),
    web.post("/cart/clear", cart.clear_cart),
    web.get("/checkout", checkout.checkout_page),
    web.post("/checkout", checkout.checkout),
    # The shopper's orders.
    web.get("/orders", orders.orders_page),
    web.get("/orders/{id}", orders.order_page),
    web.get("/orders/{id}/confirmation", orders.order_confirmation),
    web.post("/orders/{id}/cancel", orders.cancel_order),
    # The administrators' pages.
    web.get("/admin", admin.admin_home),
    web.get("/admin/products", admin.admin_products),
    web.get("/admin/products/new", admin.new_product_page),
    web.post("/admin/products/new", admin.create_product),
    web.get("/admin/products/{id}/edit", admin.edit_product_page),
    web.post("/admin/products/{id}/edit", admin.update_product),
    web.post("/admin/products/{id}/image", admin.upload_picture),
    web.post("/admin/products/{id}/stock", admin.restock_product),
    web.post("/admin/products/{id}/delete", admin.delete_product),
    web.get("/admin/orders", admin.admin_orders),
    web.post("/admin/orders/{id}/status", admin.change_order_status),
]


def _forwarded(prefix: str, backend: str) -> list[web.RouteDef]:
    """/api/<prefix> and every path below it, in each of the API's METHODS, forwarded
    unchanged to ``backend`` (svc_gateway/proxy.py)."""
    forward = proxy_to(prefix, backend)
    return [
        web.route(method, path, forward)  # GET is added with its HEAD route (add_get)
        for path in (f"/api/{prefix}", f"/api/{prefix}/{{tail:.*}}")
        for method in METHODS
    ]


# Each /api/<prefix> to the backend that owns it: products, users, cart, orders.
API_ROUTES = [
    route for prefix, backend in API_PREFIXES.items() for route in _forwarded(prefix, backend)
]

# The API's documentation (svc_gateway/docs.py), under /api so that the Ingress routes it.
# Answers keep the API's JSON for errors; the page and its files carry their own CSP.
DOCS_ROUTES = [
    web.get(docs.DOCS_PATH, docs.docs_page),
    web.get(docs.DOCUMENT_PATH, docs.docs_document),
    web.get(docs.DOCS_FILES_PREFIX + "{name}", docs.docs_file),
]
