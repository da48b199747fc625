"""The gateway's app keys."""

from aiohttp import web

from shopkit.client import ServiceClient

# Backend name -> client, for the backends this gateway is configured with.
BACKENDS = web.AppKey("backends", dict[str, ServiceClient])
