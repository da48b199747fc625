"""Secrets shopctl makes up once and keeps in the data directory (mode 0600)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def read_or_create(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    """The secret kept at `path`, made with `make()` and written (0600) if there is none yet;
    the flag says whether it was just made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        kept = path.read_text(encoding="utf-8").strip()
        if kept:
            return kept, False
        # Left empty by an interrupted first run: make it now.
        descriptor = os.open(path, os.O_WRONLY | os.O_TRUNC)
    value = make()
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(value + "\n")
    return value, True


def new_jwt_secret() -> str:
    return secrets.token_urlsafe(48)


def new_password() -> str:
    return secrets.token_urlsafe(18)
