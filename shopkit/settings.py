"""Settings read from environment variables, validated once at start-up.

Each service declares a ``ServiceSettings`` subclass whose fields are aliased to the
contract's variable names. ``from_env`` takes the environment as an argument (so tests pass
a plain dict) and turns the first problem into one line that names the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, ClassVar, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError

# More processes than this on one host only multiply pools and memory: run more replicas.
MAX_WORKERS = 32


class SettingsError(Exception):
    """A required setting is missing or malformed; the message is one line naming it."""


def _url_with_scheme(*schemes: str):
    def check(value: str) -> str:
        value = value.strip()
        if not value.startswith(tuple(f"{s}://" for s in schemes)):
            allowed = " or ".join(f"{scheme}://" for scheme in schemes)
            raise ValueError(f"must be a URL starting with {allowed}")
        return value

    return AfterValidator(check)


HttpUrl = Annotated[str, _url_with_scheme("http", "https")]
MongoUrl = Annotated[str, _url_with_scheme("mongodb", "mongodb+srv")]
PostgresUrl = Annotated[str, _url_with_scheme("postgresql", "postgres")]
RedisUrl = Annotated[str, _url_with_scheme("redis", "rediss", "unix")]


class ServiceSettings(BaseModel):
    """What every service reads. Subclasses add their own variables."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    service_name: ClassVar[str] = "service"
    default_port: ClassVar[int] = 8000
    # Variables whose values must never be echoed in an error message.
    secret_variables: ClassVar[frozenset[str]] = frozenset(
        {"JWT_SECRET", "ADMIN_PASSWORD", "DATABASE_URL", "MONGODB_URI", "REDIS_URL"}
    )

    host: str = Field("0.0.0.0", alias="HOST")
    port: int = Field(0, alias="PORT", ge=0, le=65535)
    log_level: Annotated[str, AfterValidator(str.upper)] = Field(
        "INFO", alias="LOG_LEVEL", pattern=r"(?i)^(debug|info|warning|error|critical)$"
    )
    jwt_secret: SecretStr = Field(alias="JWT_SECRET", min_length=32)
    # How long a request body may take to arrive (a client trickling it byte by byte would
    # otherwise hold a connection and a handler for as long as it likes): then 408.
    body_timeout_seconds: float = Field(30.0, alias="BODY_TIMEOUT_SECONDS", gt=0, le=600)
    # Processes serving this one port (SO_REUSEPORT), each with its own app, pools and
    # background loops: see shopkit.workers. 1 is one process, as without the setting.
    workers: int = Field(1, alias="WORKERS", ge=1, le=MAX_WORKERS)
    # Where this service writes the spans it records, as bounded JSON-lines files (see
    # shopkit.tracing); `shopctl up` sets it to its data directory's traces/. Unset: none.
    traces_dir: Path | None = Field(None, alias="TRACES_DIR")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Self:
        values = {
            field.alias: environ[field.alias]
            for field in cls.model_fields.values()
            if field.alias and environ.get(field.alias, "") != ""
        }
        try:
            settings = cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(cls._describe(exc, values)) from None
        if settings.port == 0:
            settings = settings.model_copy(update={"port": cls.default_port})
        return settings

    @classmethod
    def _describe(cls, exc: ValidationError, values: Mapping[str, str]) -> str:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "?"
        if error["type"] == "missing":
            return f"{name} is required but not set"
        message = error["msg"].removeprefix("Value error, ")
        if name in cls.secret_variables:
            return f"{name} is malformed: {message}"
        return f"{name} is malformed: {message} (got {values.get(name)!r})"
