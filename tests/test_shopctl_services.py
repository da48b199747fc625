"""The service table: which services exist, and the environment each is started with."""

from __future__ import annotations

import stat
from pathlib import Path

from shopctl import local_secrets
from shopctl.services import (
    SERVICES,
    Backend,
    Service,
    backends_needed,
    database_uri,
    is_present,
    present_services,
    service_environment,
)

BY_NAME = {service.name: service for service in SERVICES}
SERVER_URIS = {
    Backend.MONGODB: "mongodb://127.0.0.1:27017",
    Backend.POSTGRES: "postgresql://postgres:@/postgres?host=/tmp/pg",
    Backend.REDIS: "redis://127.0.0.1:6379/0",
}
SHARED = {"JWT_SECRET": "s" * 64, "LOG_LEVEL": "INFO"}
ADMIN = {"ADMIN_EMAIL": "admin@shop.local", "ADMIN_PASSWORD": "correct horse"}


def environment(name: str, present: list[str], base_env: dict[str, str] | None = None):
    return service_environment(
        BY_NAME[name],
        present=[BY_NAME[other] for other in present],
        base_port=5000,
        server_uris=SERVER_URIS,
        shared=SHARED,
        admin=ADMIN,
        base_env=base_env or {},
    )


def test_ports_follow_the_contract() -> None:
    assert {service.name: service.port(3000) for service in SERVICES} == {
        "gateway": 3000,
        "product": 3001,
        "user": 3002,
        "order": 3003,
        "cart": 3004,
    }


def test_product_and_gateway_are_present() -> None:
    names = {service.name for service in present_services()}
    assert {"product", "gateway"} <= names


def test_a_package_without_main_or_at_all_is_absent() -> None:
    assert not is_present(Service("ghost", "svc_ghost_that_does_not_exist", 9))
    assert not is_present(Service("shopkit", "shopkit", 9))


def test_only_the_backends_present_services_use_are_needed() -> None:
    assert backends_needed([BY_NAME["gateway"], BY_NAME["product"]]) == [Backend.MONGODB]
    assert backends_needed(SERVICES) == [Backend.MONGODB, Backend.POSTGRES, Backend.REDIS]


def test_each_service_gets_its_own_database() -> None:
    assert database_uri(BY_NAME["product"], SERVER_URIS) == "mongodb://127.0.0.1:27017/products"
    users = database_uri(BY_NAME["user"], SERVER_URIS)
    assert users == "postgresql://postgres:@/users?host=/tmp/pg"
    orders = database_uri(BY_NAME["order"], SERVER_URIS)
    assert orders == "postgresql://postgres:@/orders?host=/tmp/pg"
    assert database_uri(BY_NAME["cart"], SERVER_URIS) == "redis://127.0.0.1:6379/0"


def test_a_mongodb_uri_naming_a_database_is_kept() -> None:
    given = {Backend.MONGODB: "mongodb://db.internal:27017/catalogue?replicaSet=rs0"}
    assert database_uri(BY_NAME["product"], given) == given[Backend.MONGODB]


def test_the_gateway_gets_urls_of_present_services_only() -> None:
    stale = {"USER_SERVICE_URL": "http://old:1", "PATH": "/usr/bin", "MONGODB_URI": "x"}
    env = environment("gateway", ["gateway", "product"], base_env=stale)
    assert env["PRODUCT_SERVICE_URL"] == "http://127.0.0.1:5001"
    assert "USER_SERVICE_URL" not in env
    assert "MONGODB_URI" not in env
    assert env["PATH"] == "/usr/bin"
    assert (env["HOST"], env["PORT"]) == ("127.0.0.1", "5000")
    assert env["JWT_SECRET"] == SHARED["JWT_SECRET"]
    assert "ADMIN_PASSWORD" not in env


def test_the_product_service_gets_its_database() -> None:
    env = environment("product", ["gateway", "product"])
    assert env["MONGODB_URI"] == "mongodb://127.0.0.1:27017/products"
    assert env["PORT"] == "5001" and env["LOG_LEVEL"] == "INFO"


def test_only_the_user_service_gets_the_admin_account() -> None:
    everyone = [service.name for service in SERVICES]
    user = environment("user", everyone)
    assert {key: user[key] for key in ADMIN} == ADMIN
    assert user["DATABASE_URL"].startswith("postgresql://postgres:@/users")
    for name in ("gateway", "product", "order", "cart"):
        assert "ADMIN_PASSWORD" not in environment(name, everyone, base_env=dict(ADMIN))


def test_order_and_cart_get_the_services_they_call() -> None:
    everyone = [service.name for service in SERVICES]
    order = environment("order", everyone)
    assert order["PRODUCT_SERVICE_URL"] == "http://127.0.0.1:5001"
    assert order["CART_SERVICE_URL"] == "http://127.0.0.1:5004"
    assert order["DATABASE_URL"].startswith("postgresql://postgres:@/orders")
    cart = environment("cart", everyone)
    assert cart["REDIS_URL"] == SERVER_URIS[Backend.REDIS]
    assert cart["PRODUCT_SERVICE_URL"] == "http://127.0.0.1:5001"


def test_a_secret_is_made_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "jwt_secret"
    first, created = local_secrets.read_or_create(path, local_secrets.new_jwt_secret)
    assert created and len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created = local_secrets.read_or_create(path, local_secrets.new_jwt_secret)
    assert (again, created) == (first, False)
