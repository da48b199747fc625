"""The gateway: the shop's one public entry point (API routing now, web pages later)."""
