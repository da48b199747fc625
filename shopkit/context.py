"""Per-request context that outlives the handler's arguments: the request id."""

from contextvars import ContextVar

# Set by the request middleware; read by logging and by outgoing service calls so that one
# request id follows a request across every service it touches.
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
