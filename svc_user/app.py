"""The user service owns accounts (PostgreSQL database ``users``) and issues tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, ClassVar

from aiohttp import web
from pydantic import AfterValidator, Field, SecretStr, model_validator

from shopkit.app import create_service_app
from shopkit.keys import SETTINGS, TOKEN_STATUS
from shopkit.postgres import POSTGRES_UNAVAILABLE, FairPool, postgres_ctx, postgres_ready
from shopkit.revocation import TokenStatus
from shopkit.settings import PostgresUrl, ServiceSettings
from svc_user.keys import HASHER, STORE
from svc_user.passwords import PasswordHasher
from svc_user.routes import routes
from svc_user.schemas import check_password, normalise_email
from svc_user.store import UserStore


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

    @model_validator(mode="after")
    def _admin_pair(self) -> UserSettings:
        if (self.admin_email is None) != (self.admin_password is None):
            missing = "ADMIN_PASSWORD" if self.admin_password is None else "ADMIN_EMAIL"
            raise ValueError(f"{missing} must be set together with the other admin setting")
        return self


async def hasher_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the bcrypt thread pool."""
    settings = app[SETTINGS]
    hasher = PasswordHasher(settings.bcrypt_rounds, queue_limit=settings.bcrypt_queue_limit)
    await hasher.start()
    app[HASHER] = hasher
    yield
    hasher.close()


async def bootstrap_admin(app: web.Application, pool: FairPool) -> None:
    """Make sure the configured admin account exists, with its configured password."""
    store = app[STORE] = UserStore(pool)
    settings = app[SETTINGS]
    if settings.admin_email is None:
        return
    password = settings.admin_password.get_secret_value()
    hasher = app[HASHER]

    async def hash_unless_current(current_hash: str | None) -> str | None:
        if current_hash and await hasher.verify(password, current_hash):
            return None
        return await hasher.hash(password)

    await store.ensure_admin(settings.admin_email, hash_unless_current)


def create_app(settings: UserSettings) -> web.Application:
    app = create_service_app(
        settings, ready_check=postgres_ready, unavailable_errors=POSTGRES_UNAVAILABLE
    )
    app.cleanup_ctx.append(hasher_ctx)
    app.cleanup_ctx.append(postgres_ctx("svc_user.migrations", after_migrations=bootstrap_admin))
    app.router.add_routes(routes)
    # The owner of tokens_valid_from checks it exactly, in its own database, every time.
    app[TOKEN_STATUS] = TokenStatus(lambda user_id: app[STORE].tokens_valid_from(user_id), 0)
    return app
