"""The API's documentation at /api/docs: one OpenAPI document of the public API, merged by
the gateway from the real services' own; Swagger UI's files from swagger-ui-py; and the
headers that keep the docs page as locked down as the shop's pages."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from importlib import resources
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate
from support import assert_matches_openapi, get_page, raw

from shopkit.app import SERVICE_PATHS
from svc_gateway.app import GatewaySettings
from svc_gateway.app import create_app as create_gateway_app
from svc_gateway.assets import CACHE_FOREVER
from svc_gateway.docs import DOCS_CONTENT_SECURITY_POLICY
from svc_gateway.pages.middleware import CONTENT_SECURITY_POLICY
from svc_gateway.proxy import API_PREFIXES
from svc_gateway.public_document import Part, UnreadableDocument, merge, public_part

DOCUMENT = "/api/docs/openapi.json"
BEARER = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}


@pytest.fixture
async def gateway(aiohttp_client: Any) -> TestClient:
    """A gateway with no backends: the docs page and its files need none."""
    return await aiohttp_client(create_gateway_app(GatewaySettings.from_env({})))


async def served_document(client: TestClient) -> tuple[dict[str, Any], aiohttp.ClientResponse]:
    """The merged document the gateway serves (checked to be valid OpenAPI 3.1, every
    reference resolving), and the answer it came in."""
    response = await client.get(DOCUMENT)
    text = await response.text()
    assert response.status == 200, text
    assert response.content_type == "application/json"
    document = json.loads(text)
    validate(document)
    return document, response


async def own_document(server: TestServer) -> dict[str, Any]:
    """A backend's own /openapi.json, asked for directly (the gateway never forwards it)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.make_url("/openapi.json")) as response,
    ):
        assert response.status == 200
        return await response.json()


def csp_directives(policy: str) -> dict[str, str]:
    """A Content-Security-Policy's directives and their values."""
    pairs = (directive.strip().partition(" ") for directive in policy.split(";"))
    return {name: value for name, _, value in pairs}


async def test_the_document_is_the_public_api_of_every_service(
    web_shop: TestClient, shop_services: dict[str, TestServer]
) -> None:
    document, response = await served_document(web_shop)
    paths = document["paths"]
    for path in (
        "/api/products",
        "/api/products/{id}",
        "/api/users/login",
        "/api/users/profile",
        "/api/cart/{userId}/items",
        "/api/orders",
        "/api/orders/{id}/status",
        "/images/catalogue/{name}",
        "/api/docs",
        DOCUMENT,
    ):
        assert path in paths, path
    # Only what the Ingress routes (/api, /images) and the gateway answers: no service
    # endpoint, no internal route, no catch-all of the proxies.
    for path in paths:
        assert path.startswith(("/api/", "/images/")), path
        assert "{tail}" not in path
    assert not SERVICE_PATHS & set(paths)
    # Nor the shape only an internal route answers with.
    assert "TokenStatusOut" not in document["components"]["schemas"]
    assert "AuthOut" in document["components"]["schemas"]

    # Each backend's public operations as its own document has them, tagged with its part.
    for prefix, service in API_PREFIXES.items():
        own = await own_document(shop_services[service])
        public = {
            path: item for path, item in own["paths"].items() if path.startswith(f"/api/{prefix}")
        }
        assert public, service
        for path, item in public.items():
            assert set(paths[path]) == set(item), path
            for method, operation in item.items():
                assert paths[path][method] == {**operation, "tags": [prefix]}, (method, path)
    assert [tag["name"] for tag in document["tags"]] == [*API_PREFIXES, "gateway"]
    assert all(op["tags"] for item in paths.values() for op in item.values())

    # "Try it out" calls the origin the document was read from; Authorize takes a token.
    assert [server["url"] for server in document["servers"]] == ["/"]
    assert document["components"]["securitySchemes"] == {"bearerAuth": BEARER}
    assert paths["/api/users/profile"]["get"]["security"] == [{"bearerAuth": []}]
    assert "x-missing-services" not in document
    assert "missing" not in document["info"]["description"]

    # Answers through the gateway are what the merged document says.
    with_decimals = json.loads(json.dumps(document), parse_float=Decimal)
    for path, route, status in (
        ("/api/products?limit=5", "/api/products", 200),
        ("/api/users/profile", "/api/users/profile", 401),
    ):
        answer = await web_shop.get(path)
        body = json.loads(await answer.text(), parse_float=Decimal)
        assert answer.status == status, body
        assert_matches_openapi(with_decimals, "GET", route, status, body)

    # Kept a while, revalidated by its ETag; never stored by a shared cache as it is.
    assert response.headers["Cache-Control"] == "no-cache"
    again = await web_shop.get(DOCUMENT, headers={"If-None-Match": response.headers["ETag"]})
    assert again.status == 304


async def test_a_backend_that_cannot_be_asked_is_left_out_and_named(
    aiohttp_client: Any, gateway_env: dict[str, str]
) -> None:
    env = {**gateway_env, "CART_SERVICE_URL": "http://127.0.0.1:9"}  # nothing listens there
    del env["ORDER_SERVICE_URL"]
    gateway = await aiohttp_client(create_gateway_app(GatewaySettings.from_env(env)))
    document, response = await served_document(gateway)
    assert document["x-missing-services"] == ["cart", "order"]
    description = document["info"]["description"]
    assert "the cart service's (`/api/cart/...`): it is not answering right now" in description
    assert "the order service's (`/api/orders/...`): it is not configured" in description
    paths = document["paths"]
    assert not [path for path in paths if path.startswith(("/api/cart", "/api/orders"))]
    assert "/api/products/{id}" in paths and "/api/users/login" in paths
    assert [tag["name"] for tag in document["tags"]] == ["products", "users", "gateway"]
    # Never a backend's address.
    assert "127.0.0.1" not in await response.text()


async def test_with_no_backend_at_all_the_document_still_answers(gateway: TestClient) -> None:
    document, _ = await served_document(gateway)
    assert document["x-missing-services"] == list(API_PREFIXES.values())
    assert sorted(document["paths"]) == [
        "/api/docs",
        DOCUMENT,
        "/images/catalogue/{name}",
        "/images/products/{name}",
    ]


async def test_the_docs_page_loads_only_its_own_files_under_a_csp_of_its_own(
    gateway: TestClient,
) -> None:
    page = await get_page(gateway, "/api/docs")
    assert page.headers["Content-Security-Policy"] == DOCS_CONTENT_SECURITY_POLICY
    directives = csp_directives(page.headers["Content-Security-Policy"])
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"  # no inline script, no eval, no CDN
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"  # "Try it out" reaches this origin only
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == directives["base-uri"] == "'none'"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert page.inline_scripts == 0
    assert page.tags("main")[0].attrs["data-document"] == DOCUMENT

    files = [script.attrs["src"] for script in page.tags("script")]
    files += [link.attrs["href"] for link in page.tags("link")]
    assert len(files) == 5, files
    for url in files:
        assert url.startswith(("/api/docs/assets/", "/static/")), url
        answer = await gateway.get(url)
        assert answer.status == 200, url
        assert answer.headers["Cache-Control"] == CACHE_FOREVER
        assert answer.headers["X-Content-Type-Options"] == "nosniff"

    # The shop's pages keep theirs, unchanged.
    login = await get_page(gateway, "/login")
    assert login.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert csp_directives(CONTENT_SECURITY_POLICY)["default-src"] == "'self'"


async def test_swagger_ui_comes_from_the_package_compressed_when_the_client_accepts_it(
    gateway: TestClient,
) -> None:
    page = await get_page(gateway, "/api/docs")
    (bundle,) = [
        script.attrs["src"] for script in page.tags("script") if "swagger-ui-bundle" in str(script)
    ]
    packaged = resources.files("swagger_ui").joinpath("static", "swagger-ui-bundle.js")
    original = packaged.read_bytes()

    plain = await gateway.get(bundle, headers={"Accept-Encoding": "identity"})
    assert await plain.read() == original
    assert plain.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert "Content-Encoding" not in plain.headers
    assert plain.headers["Vary"] == "Accept-Encoding"

    compressed = await gateway.get(
        bundle, headers={"Accept-Encoding": "br, gzip;q=0.8"}, auto_decompress=False
    )
    assert compressed.headers["Content-Encoding"] == "gzip"
    body = await compressed.read()
    assert gzip.decompress(body) == original and len(body) < len(original) / 2
    assert compressed.headers["ETag"] != plain.headers["ETag"]

    refused = await gateway.get(bundle, headers={"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers
    for answer, encoding in ((plain, "identity"), (compressed, "gzip")):
        headers = {"If-None-Match": answer.headers["ETag"], "Accept-Encoding": encoding}
        assert (await gateway.get(bundle, headers=headers)).status == 304


@pytest.mark.parametrize(
    "target",
    [
        "/api/docs/../../etc/passwd",
        "/api/docs/assets/../../../../etc/passwd",
        "/api/docs/assets/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/api/docs/assets/%2E%2E%2F%2E%2E%2Fapp.py",
        "/api/docs/assets/..%2f..%2f..%2fpyproject.toml",
        "/api/docs/assets/..%5c..%5cdocs.py",
        "/api/docs/assets/%252e%252e%252fdocs.py",
        "/api/docs/assets/%c0%ae%c0%ae/docs.py",
        "/api/docs/assets/%00",
        "/api/docs/assets/swagger-ui.css%00.js",
        "/api/docs/assets//etc/passwd",
        "/api/docs/assets/",
        "/api/docs/",
        "/api/docs/%2e%2e/%2e%2e/metrics",
        # In swagger-ui-py's folder, but not what the page uses: never served.
        "/api/docs/assets/swagger-ui-bundle.js",
        "/api/docs/assets/swagger-editor-bundle.js",
        "/api/docs/assets/oauth2-redirect.html",
        "/api/docs/assets/LICENSE",
    ],
)
async def test_nothing_but_the_docs_files_is_served(gateway: TestClient, target: str) -> None:
    answer = await raw(gateway, target)
    assert answer.status == 404, (target, answer.status, answer.text[:200])
    body = answer.json()
    assert body["success"] is False and body["code"] == "not_found", body
    assert "root:" not in answer.text


async def test_the_gateways_own_document_lists_the_docs(gateway: TestClient) -> None:
    document = await (await gateway.get("/openapi.json")).json()
    assert document["paths"]["/api/docs"]["get"]["responses"]["200"]["content"] == {
        "text/html": {"schema": {"type": "string"}}
    }
    assert "get" in document["paths"][DOCUMENT]
    # The files are like the shop's /static/ ones: addresses the page gives, not an API.
    assert not [path for path in document["paths"] if path.startswith("/api/docs/assets")]
    assert (await gateway.head("/api/docs")).status == 200


# -- merging, on documents written here: what the real services do not (yet) do -------------


def _error(field: str) -> dict[str, Any]:
    return {"type": "object", "properties": {field: {"type": "string"}}}


def _operation(schema: str, scheme: str = "bearerAuth") -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {
        "security": [{scheme: []}],
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": ref}}}
        },
    }


def test_a_name_two_services_use_for_different_things_gets_one_per_service() -> None:
    product = public_part(
        "product",
        {
            "paths": {"/api/products": {"get": _operation("Item")}},
            "components": {
                "schemas": {"Item": _error("name"), "Error": _error("error")},
                "securitySchemes": {"bearerAuth": BEARER},
            },
        },
        ["/api/products"],
        "products",
    )
    cart = public_part(
        "cart",
        {
            "paths": {"/api/cart/mine": {"get": _operation("Item", "token")}},
            "components": {
                "schemas": {"Item": {"$ref": "#/components/schemas/Line"}, "Line": _error("qty")},
                "securitySchemes": {"token": {"type": "http", "scheme": "basic"}},
            },
        },
        ["/api/cart"],
        "cart",
    )
    user = public_part(
        "user",
        {
            "paths": {"/api/users/x": {"get": _operation("Error")}},
            "components": {
                "schemas": {"Error": _error("error")},
                # The same name as the product service's scheme, for another scheme.
                "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "digest"}},
            },
        },
        ["/api/users"],
        "users",
    )
    document = merge([product, cart, user], [], "1")
    validate(document)
    schemas = document["components"]["schemas"]
    assert sorted(schemas) == ["Error", "Line", "cart.Item", "product.Item"]
    assert schemas["cart.Item"] == {"$ref": "#/components/schemas/Line"}
    paths = document["paths"]
    assert paths["/api/products"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/product.Item"}
    assert paths["/api/cart/mine"]["get"]["security"] == [{"token": []}]
    assert paths["/api/products"]["get"]["security"] == [{"product.bearerAuth": []}]
    assert paths["/api/users/x"]["get"]["security"] == [{"user.bearerAuth": []}]
    assert sorted(document["components"]["securitySchemes"]) == [
        "product.bearerAuth",
        "token",
        "user.bearerAuth",
    ]
    # Whatever order the answers came in.
    assert merge([user, cart, product], [], "1")["components"] == document["components"]


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        {"paths": []},
        {"paths": {"/api/cart": []}},
        {"paths": {"/api/cart": {"get": "nothing"}}},
        {"paths": {"/api/cart": {"get": {"security": "all"}}}},
        {"paths": {"/api/cart": {"get": _operation("Missing")}}, "components": {}},
        {"paths": {"/api/cart": {"get": {}}}, "components": {"schemas": []}},
        {"paths": {"/api/cart": {"get": {"schema": {"$ref": "https://example.com/x.json"}}}}},
    ],
)
def test_a_document_that_cannot_be_merged_is_refused(document: Any) -> None:
    with pytest.raises(UnreadableDocument):
        public_part("cart", document, ["/api/cart"], "cart")


def test_only_the_public_paths_and_methods_are_taken() -> None:
    part = public_part(
        "user",
        {
            "paths": {
                "/api/users/login": {"post": {"responses": {}}, "head": {"responses": {}}},
                "/api/usersx": {"get": {"responses": {}}},
                "/internal/users/{id}": {"get": _operation("Secret")},
                "/health": {"get": {"responses": {}}},
            },
            "components": {"schemas": {"Secret": _error("hash")}},
        },
        ["/api/users"],
        "users",
    )
    assert part.paths == {"/api/users/login": {"post": {"responses": {}, "tags": ["users"]}}}
    assert part.components == {}


def test_parts_are_merged_in_the_order_given() -> None:
    first = Part("product", {"/api/products": {"get": {"responses": {}, "tags": ["products"]}}}, {})
    second = Part("gateway", {"/api/docs": {"get": {"responses": {}, "tags": ["gateway"]}}}, {})
    assert list(merge([first, second], [], "1")["paths"]) == ["/api/products", "/api/docs"]
