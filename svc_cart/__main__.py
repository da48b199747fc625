"""Run the cart service: ``python -m svc_cart``."""

from shopkit.app import run
from svc_cart.app import CartSettings, create_app

run(create_app, CartSettings)
