"""The user service's app keys, shared by its views and its data layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from svc_user.passwords import PasswordHasher

if TYPE_CHECKING:
    from svc_user.routes import LoginCounts
    from svc_user.store import UserStore

HASHER = web.AppKey("hasher", PasswordHasher)
STORE: web.AppKey[UserStore] = web.AppKey("store")
LOGIN_COUNTS: web.AppKey[LoginCounts] = web.AppKey("login_counts")
