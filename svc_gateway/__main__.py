"""Run the gateway: ``python -m svc_gateway``."""

from shopkit.app import run
from svc_gateway.app import GatewaySettings, create_app

run(create_app, GatewaySettings)
