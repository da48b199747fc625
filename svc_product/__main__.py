"""Run the product service: ``python -m svc_product``."""

from shopkit.app import run
from svc_product.app import ProductSettings, create_app

run(create_app, ProductSettings)
