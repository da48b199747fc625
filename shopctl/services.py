"""The shop's services in one table: module, port, and what each needs to run."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from shopctl.embedded import database_url

HOST = "127.0.0.1"
# The ports the contract gives the services (gateway 3000 ... cart 3004): images and
# manifests use them; `shopctl up --base-port` may move them on this machine.
CONTRACT_BASE_PORT = 3000
ADMIN_VARIABLES = ("ADMIN_EMAIL", "ADMIN_PASSWORD")
MAIL_VARIABLES = ("SMTP_URL", "STOREFRONT_URL")


class Backend(StrEnum):
    """A backing server kind; the value is the environment variable that points at one."""

    MONGODB = "MONGODB_URI"
    POSTGRES = "DATABASE_URL"
    REDIS = "REDIS_URL"


@dataclass(frozen=True)
class Service:
    name: str
    module: str
    port_offset: int
    backend: Backend | None = None
    # The database within the backend (MongoDB: the URI's path; PostgreSQL: its own database).
    database: str | None = None
    # Services whose URL it is given, as <NAME>_SERVICE_URL, when they are present.
    calls: tuple[str, ...] = ()
    # It makes sure the admin account exists at start-up, so it gets ADMIN_EMAIL/PASSWORD.
    owns_admin_account: bool = False
    # It e-mails customers, so it gets SMTP_URL (and STOREFRONT_URL for the links in them).
    sends_email: bool = False

    @property
    def url_variable(self) -> str:
        return f"{self.name.upper()}_SERVICE_URL"

    def port(self, base_port: int) -> int:
        return base_port + self.port_offset

    def url(self, base_port: int) -> str:
        return f"http://{HOST}:{self.port(base_port)}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module]


SERVICES: tuple[Service, ...] = (
    Service("gateway", "svc_gateway", 0, calls=("product", "user", "order", "cart")),
    # Every service that verifies users' tokens calls the user service: has it revoked them?
    Service("product", "svc_product", 1, Backend.MONGODB, "products", calls=("user",)),
    Service("user", "svc_user", 2, Backend.POSTGRES, "users", owns_admin_account=True),
    Service(
        "order",
        "svc_order",
        3,
        Backend.POSTGRES,
        "orders",
        calls=("product", "cart", "user"),
        sends_email=True,
    ),
    Service("cart", "svc_cart", 4, Backend.REDIS, calls=("product", "user")),
)


def is_present(service: Service) -> bool:
    """Whether the service's package is installed here with a `__main__` to run."""
    try:
        return importlib.util.find_spec(f"{service.module}.__main__") is not None
    except ModuleNotFoundError:
        return False


def present_services(services: Iterable[Service] = SERVICES) -> list[Service]:
    return [service for service in services if is_present(service)]


def backends_needed(services: Iterable[Service]) -> list[Backend]:
    needed = {service.backend for service in services if service.backend is not None}
    return [backend for backend in Backend if backend in needed]


def database_uri(service: Service, server_uris: Mapping[Backend, str]) -> str:
    """The URI `service` gets for its own database on the server of its backend kind.

    A PostgreSQL URL names a server: each service gets its own database on it. A MongoDB
    URI without a database gets the service's; one that names a database is kept as given.
    A Redis URL is used as given."""
    assert service.backend is not None
    server_uri = server_uris[service.backend]
    if service.database is None or service.backend is Backend.REDIS:
        return server_uri
    if service.backend is Backend.MONGODB and urlsplit(server_uri).path.strip("/"):
        return server_uri
    return database_url(server_uri, service.database)


def service_environment(
    service: Service,
    *,
    present: Iterable[Service],
    base_port: int,
    server_uris: Mapping[Backend, str],
    shared: Mapping[str, str],
    admin: Mapping[str, str],
    base_env: Mapping[str, str],
    mail: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment `service` runs with.

    It is `base_env` (PATH, BCRYPT_ROUNDS, ...) with every setting shopctl decides put in:
    HOST, PORT, the `shared` settings (JWT_SECRET, LOG_LEVEL), its database URI, the URL of
    each service it calls that is present, the `admin` account (ADMIN_EMAIL,
    ADMIN_PASSWORD) only for the service that creates it, and the `mail` settings
    (SMTP_URL, STOREFRONT_URL) only for the service that sends e-mails. Backend URIs and
    service URLs it should not have are taken out, so a stale one from the shell never
    misleads it."""
    present_by_name = {other.name: other for other in present}
    env = dict(base_env)
    for name in [other.url_variable for other in SERVICES] + [kind.value for kind in Backend]:
        env.pop(name, None)
    for name in (*ADMIN_VARIABLES, *MAIL_VARIABLES):
        env.pop(name, None)

    env.update({"HOST": HOST, "PORT": str(service.port(base_port)), **shared})
    if service.owns_admin_account:
        env.update(admin)
    if service.sends_email:
        env.update(mail or {})
    if service.backend is not None:
        env[service.backend.value] = database_uri(service, server_uris)
    for name in service.calls:
        if name in present_by_name:
            env[present_by_name[name].url_variable] = present_by_name[name].url(base_port)
    return env
