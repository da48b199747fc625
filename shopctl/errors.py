"""The one exception type for expected failures: its message is for the user."""


class ShopctlError(Exception):
    """Something the user can act on went wrong; the command prints it and exits 1."""
