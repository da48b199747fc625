"""The order service's routes: thin handlers over the checkout saga and the store."""

from __future__ import annotations

from aiohttp import web

from shopkit.auth import Identity
from shopkit.errors import Conflict, Forbidden, NotFound, Refusal, Refusals
from shopkit.idempotency import PARAMETER as IDEMPOTENCY_KEY
from shopkit.idempotency import idempotency_key
from shopkit.keys import IDENTITY
from shopkit.money import cents_to_money
from shopkit.openapi import endpoint
from shopkit.parsing import parse_id
from shopkit.responses import json_response, ok, ok_page
from svc_order.delivery import LABELS as DELIVERY_LABELS
from svc_order.keys import CHECKOUT, DELIVERY, STORE
from svc_order.payments import Card, PaymentMethod, ProviderToken
from svc_order.saga import CheckoutRequest
from svc_order.schemas import (
    DELIVERY_OPTIONS,
    CheckoutBody,
    DeliveryOptionsOut,
    OrderOut,
    OrderPath,
    OrderQuery,
    StatusChange,
    UserOrdersPath,
)
from svc_order.store import OrderNotFound, TransitionRefused

routes = web.RouteTableDef()

# How a client hears what the store refuses.
REFUSALS: Refusals = {
    OrderNotFound: Refusal(NotFound, "order_not_found", "There is no order {id}."),
    TransitionRefused: Refusal(
        Conflict,
        "invalid_transition",
        "An order that is {status} cannot become {wanted}.",
        ("status",),
    ),
}


def _customer_id(identity: Identity) -> int:
    if identity.user_number is None:  # a service's token names no user
        raise Forbidden("Only a user can check out.", code="not_a_user")
    return identity.user_number


def _order_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    order_id = parse_id(raw)
    if order_id is None:
        raise OrderNotFound(raw)  # a malformed id is simply not found
    return order_id


def _checkout_request(request: web.Request, body: CheckoutBody) -> CheckoutRequest:
    token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    method: PaymentMethod | None = None
    if body.payment is not None and body.payment.card is not None:
        card = body.payment.card
        method = Card(card.number, card.exp_month, card.exp_year, card.cvc)
    elif body.payment is not None and body.payment.token is not None:
        method = ProviderToken(body.payment.token)
    return CheckoutRequest(
        token=token,
        address_id=body.address_id,
        address=None if body.address is None else body.address.model_dump(),
        delivery=body.delivery,
        payment=method,
    )


@routes.get("/api/orders/delivery-options")
@endpoint(
    "Delivery options, their prices, and the countries the shop delivers to",
    response=DeliveryOptionsOut,
    description="What a checkout's `delivery` may be and what it costs: `price` below "
    "`free_from` (goods subtotal), nothing from it. The order's own delivery line is "
    "computed at checkout from these rules. Public: a guest's cart shows them too.",
)
async def delivery_options(request: web.Request) -> web.Response:
    rules = request.app[DELIVERY]
    options = []
    for option in DELIVERY_OPTIONS:
        threshold = rules.free_from(option)
        options.append(
            {
                "option": option,
                "label": DELIVERY_LABELS[option],
                "price": cents_to_money(rules.prices[option]),
                "free_from": None if threshold is None else cents_to_money(threshold),
            }
        )
    return ok({"options": options, "countries": sorted(rules.countries)})


@routes.post("/api/orders")
@endpoint(
    "Check out explicit items, or the caller's cart",
    body=CheckoutBody,
    headers=(IDEMPOTENCY_KEY,),
    response=OrderOut,
    status=201,
    roles=(),
    errors=(402, 403, 404, 409, 503, 504),
    description="Names and prices come from the product service. On any failure there is "
    "no order, stock is as before and the cart untouched. With an address (`address_id` of "
    "a saved one, or an inline `address`), a `delivery` option and a `payment` (all three or "
    "none), the server prices delivery (GET /api/orders/delivery-options), the order keeps "
    "the address, the delivery line and the customer's name and e-mail as they are now, and "
    "the total (goods + delivery) is authorised on the card before the order is placed: "
    "402 payment_declined (with decline_code: card_declined, insufficient_funds, "
    "expired_card, incorrect_number) or 503 payment_unavailable (the provider failed) "
    "place no order, put the stock back and leave the cart. 400 country_not_delivered: "
    "the address is in a country the shop does not deliver to; 404 address_not_found: "
    "no such saved address of the caller's. A checkout without them is placed without "
    "delivery or payment, as before. With an Idempotency-Key header, "
    "a repeat by the same user answers the first order (header Idempotent-Replayed: true); "
    "while the first attempt is still running, 409 checkout_in_progress with Retry-After. "
    "The key is 1 to 255 visible ASCII characters (else 400 invalid_idempotency_key). "
    "A cart is bought once: while another checkout of the caller's cart runs (another tab, "
    "another key, no key), a cart checkout is 409 cart_checkout_in_progress with "
    "Retry-After and buys nothing; once that one placed its order the cart is empty (400 "
    "empty_cart). Other refusals: 400 empty_cart, 404 product_not_found, 409 "
    "insufficient_stock, idempotency_key_reused or idempotency_retry, 503 "
    "upstream_unavailable (no order was placed), 504 checkout_outcome_unknown (the database "
    "stopped answering while the order was placed: send it again with the same key). A "
    "placed order is e-mailed to the address in the caller's token, which the order keeps "
    "for its later e-mails.",
)
async def create_order(request: web.Request, body: CheckoutBody) -> web.Response:
    identity = request[IDENTITY]
    user_id = _customer_id(identity)
    key = idempotency_key(request.headers)
    explicit = [(line.product_id, line.quantity) for line in body.items or []]
    order_id, placed = await request.app[CHECKOUT].place(
        user_id, explicit or None, key, _checkout_request(request, body)
    )
    headers = {"Location": f"/api/orders/{order_id}"}
    if placed is None:  # a replay: the order placed before, as it is now
        headers["Idempotent-Replayed"] = "true"
    order = placed or await request.app[STORE].get(order_id)
    return json_response({"success": True, "data": order}, status=201, headers=headers)


@routes.get("/api/orders")
@endpoint(
    "Orders: an admin sees all, a customer its own",
    query=OrderQuery,
    response=list[OrderOut],
    paged=True,
    roles=(),
)
async def list_orders(request: web.Request, query: OrderQuery) -> web.Response:
    identity = request[IDENTITY]
    owner = None if identity.role in ("admin", "service") else _customer_id(identity)
    orders, total = await request.app[STORE].page(
        user_id=owner,
        status=query.status,
        customer=query.customer,
        page=query.page,
        limit=query.limit,
    )
    return json_response(ok_page(orders, total=total, page=query.page, limit=query.limit))


@routes.get("/api/orders/user/{userId}")
@endpoint(
    "One user's orders (that user or an admin)",
    path=UserOrdersPath,
    query=OrderQuery,
    response=list[OrderOut],
    paged=True,
    roles=(),
    errors=(403, 404),
)
async def orders_of_user(request: web.Request, query: OrderQuery) -> web.Response:
    raw = request.match_info["userId"]
    if not request[IDENTITY].may_act_for(raw):
        raise Forbidden("These are another user's orders.")
    user_id = parse_id(raw)
    if user_id is None:  # a malformed id is simply not found (only an admin gets here)
        raise NotFound(f"There is no user {raw[:40]!r}.", code="user_not_found")
    orders, total = await request.app[STORE].page(
        user_id=user_id,
        status=query.status,
        customer=query.customer,
        page=query.page,
        limit=query.limit,
    )
    return json_response(ok_page(orders, total=total, page=query.page, limit=query.limit))


async def _visible_order(request: web.Request) -> int:
    """The order id, if the caller may see it; another customer's order is not found."""
    order_id = _order_id(request)
    owner = await request.app[STORE].owner_of(order_id)
    if not request[IDENTITY].may_act_for(str(owner)):
        raise OrderNotFound(order_id)
    return order_id


@routes.get("/api/orders/{id}")
@endpoint(
    "One order, with its lines and history",
    path=OrderPath,
    response=OrderOut,
    roles=(),
    errors=(404,),
)
async def get_order(request: web.Request) -> web.Response:
    order_id = await _visible_order(request)
    return ok(await request.app[STORE].get(order_id))


@routes.patch("/api/orders/{id}/status")
@endpoint(
    "Move an order along its lifecycle",
    path=OrderPath,
    body=StatusChange,
    response=OrderOut,
    roles=(),
    errors=(403, 404, 409),
    description="pending -> processing -> shipped -> delivered; pending or processing -> "
    "cancelled; anything else is 409. Customers may only cancel their own pending orders. "
    "A cancel puts the stock back, once. The payment follows: shipping captures it, "
    "cancelling voids the hold (a refund if it was captured); if the provider is "
    "unavailable this is done by recovery later, and `payment.status` says which it is. "
    "Shipped and cancelled orders are e-mailed to their customer (the address they "
    "checked out with).",
)
async def change_status(request: web.Request, body: StatusChange) -> web.Response:
    identity = request[IDENTITY]
    order_id = await _visible_order(request)
    store = request.app[STORE]
    if identity.is_admin:
        await store.change_status(order_id, body.status)
    elif body.status == "cancelled":
        await store.change_status(order_id, body.status, only_from=frozenset({"pending"}))
    else:
        raise Forbidden("Only an admin moves an order along; you may cancel it while pending.")
    if body.status == "cancelled":
        await request.app[CHECKOUT].restock(order_id)  # or recovery, if the product service is down
    # Capture when it ships, void when it is cancelled (or recovery, if the provider is down).
    await request.app[CHECKOUT].settle_payment(order_id)
    return ok(await store.get(order_id))
