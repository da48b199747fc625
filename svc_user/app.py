"""The user service owns accounts (PostgreSQL database ``users``) and issues tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, ClassVar

from aiohttp import web
from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, model_validator

from shopkit.app import create_service_app
from shopkit.background import every
from shopkit.client_address import IpNetwork, parse_networks
from shopkit.keys import METRICS, POSTGRES, SETTINGS, TOKEN_STATUS
from shopkit.postgres import POSTGRES_UNAVAILABLE, postgres_ctx, postgres_ready
from shopkit.revocation import TokenStatus
from shopkit.settings import PostgresUrl, ServiceSettings
from svc_user.keys import HASHER, LOGIN_COUNTS, STORE
from svc_user.passwords import PasswordHasher
from svc_user.routes import REFUSALS, LoginCounts, routes
from svc_user.schemas import check_password, normalise_email
from svc_user.store import (
    ACCOUNT_FREE_FAILURES,
    ADDRESS_FREE_FAILURES,
    FREE_FAILURES,
    LOCK_BASE_SECONDS,
    LOCK_MAX_SECONDS,
    PRUNE_INTERVAL_SECONDS,
    WINDOW_SECONDS,
    LoginLimits,
    UserStore,
)

DEFAULT_TRUSTED_PROXIES = "127.0.0.0/8,::1/128"


def _networks(value: object) -> object:
    return parse_networks(value) if isinstance(value, str) else value


def _check_secret_password(value: SecretStr) -> SecretStr:
    check_password(value.get_secret_value())
    return value


class UserSettings(ServiceSettings):
    service_name: ClassVar[str] = "user"
    default_port: ClassVar[int] = 3002

    database_url: PostgresUrl = Field(alias="DATABASE_URL")
    bcrypt_rounds: int = Field(12, alias="BCRYPT_ROUNDS", ge=4, le=16)
    # Password checks taken on at once (running or waiting); past it, 503 busy.
    bcrypt_queue_limit: int = Field(32, alias="BCRYPT_QUEUE_LIMIT", ge=1, le=10_000)
    admin_email: Annotated[str, AfterValidator(normalise_email)] | None = Field(
        None, alias="ADMIN_EMAIL"
    )
    admin_password: Annotated[SecretStr, AfterValidator(_check_secret_password)] | None = Field(
        None, alias="ADMIN_PASSWORD"
    )
    # The login limits (README "Login limits"): failures free per email from one address,
    # per address over every email, per email from everywhere, within a window; past them
    # each failure locks for LOGIN_LOCK_SECONDS, doubling up to LOGIN_LOCK_MAX_SECONDS.
    login_free_failures: int = Field(FREE_FAILURES, alias="LOGIN_FREE_FAILURES", ge=1, le=10_000)
    login_address_free_failures: int = Field(
        ADDRESS_FREE_FAILURES, alias="LOGIN_ADDRESS_FREE_FAILURES", ge=1, le=100_000
    )
    login_account_free_failures: int = Field(
        ACCOUNT_FREE_FAILURES, alias="LOGIN_ACCOUNT_FREE_FAILURES", ge=1, le=100_000
    )
    login_window_seconds: int = Field(
        WINDOW_SECONDS, alias="LOGIN_WINDOW_SECONDS", ge=1, le=7 * 24 * 3600
    )
    login_lock_seconds: int = Field(LOCK_BASE_SECONDS, alias="LOGIN_LOCK_SECONDS", ge=1, le=86_400)
    login_lock_max_seconds: int = Field(
        LOCK_MAX_SECONDS, alias="LOGIN_LOCK_MAX_SECONDS", ge=1, le=7 * 24 * 3600
    )
    # Peers whose X-Forwarded-For names the client (CIDRs, or "none"). Loopback by default:
    # `shopctl up` runs the gateway beside us on 127.0.0.1, so any local process can name
    # the address its logins count under (README "Login limits": fine on one person's
    # machine). In Kubernetes the manifests set the cluster's private ranges: the
    # NetworkPolicy lets only the shop's own pods reach us (the gateway, and the services
    # that ask about revoked tokens, which hold JWT_SECRET anyway).
    trusted_proxies: Annotated[list[IpNetwork], BeforeValidator(_networks)] = Field(
        default_factory=lambda: parse_networks(DEFAULT_TRUSTED_PROXIES), alias="TRUSTED_PROXIES"
    )

    @model_validator(mode="after")
    def _admin_pair(self) -> UserSettings:
        if (self.admin_email is None) != (self.admin_password is None):
            missing = "ADMIN_PASSWORD" if self.admin_password is None else "ADMIN_EMAIL"
            raise ValueError(f"{missing} must be set together with the other admin setting")
        return self

    def login_limits(self) -> LoginLimits:
        return LoginLimits(
            free_failures=self.login_free_failures,
            address_free_failures=self.login_address_free_failures,
            account_free_failures=self.login_account_free_failures,
            window_seconds=self.login_window_seconds,
            lock_seconds=self.login_lock_seconds,
            lock_max_seconds=max(self.login_lock_seconds, self.login_lock_max_seconds),
        )


async def hasher_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the bcrypt threads, ready before the first login, stopped at the end."""
    await app[HASHER].start()
    yield
    app[HASHER].close()


async def users_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after the pool's): the store, and the configured admin account made
    sure of (it exists, with its configured password)."""
    settings = app[SETTINGS]
    store = app[STORE] = UserStore(app[POSTGRES], settings.login_limits())
    if settings.admin_email is not None:
        password, hasher = settings.admin_password.get_secret_value(), app[HASHER]

        async def hash_unless_current(current_hash: str | None) -> str | None:
            if current_hash and await hasher.verify(password, current_hash):
                return None
            return await hasher.hash(password)

        await store.ensure_admin(settings.admin_email, hash_unless_current)
    yield


def create_app(settings: UserSettings) -> web.Application:
    app = create_service_app(
        settings,
        ready_check=postgres_ready,
        unavailable_errors=POSTGRES_UNAVAILABLE,
        refusals=REFUSALS,
    )
    metrics = app[METRICS]
    app[HASHER] = PasswordHasher(
        settings.bcrypt_rounds,
        queue_limit=settings.bcrypt_queue_limit,
        taken=metrics.level(
            "shop_password_hashes_queued", "Password hashes and checks running or waiting"
        ),
    )
    app[LOGIN_COUNTS] = LoginCounts.declare(metrics)
    # The owner of tokens_valid_from checks it exactly, in its own database, every time.
    app[TOKEN_STATUS] = TokenStatus(lambda user_id: app[STORE].tokens_valid_from(user_id), 0)
    app.cleanup_ctx.append(hasher_ctx)
    app.cleanup_ctx.append(postgres_ctx("svc_user.migrations"))  # app[POSTGRES]
    app.cleanup_ctx.append(users_ctx)  # app[STORE]
    # Each replica prunes; twice changes nothing.
    app.cleanup_ctx.append(
        every(
            PRUNE_INTERVAL_SECONDS,
            "prune-login-attempts",
            lambda app: app[STORE].forget_old_login_counts(),
        )
    )
    app.router.add_routes(routes)
    return app
