"""The gateway: the shop's one public entry point, serving its web pages and routing
/api/* to the service that owns it."""
