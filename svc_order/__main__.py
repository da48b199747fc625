"""Run the order service: ``python -m svc_order``."""

from shopkit.app import run
from svc_order.app import OrderSettings, create_app

run(create_app, OrderSettings)
