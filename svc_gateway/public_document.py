"""The public API's one OpenAPI document: each backend's own document cut to the routes the
gateway forwards to it, merged with the gateway's own public routes.

A client sees one shop at one address, so it gets one document: every path in it is one the
gateway answers (never a backend's /health, /ready, /metrics, /openapi.json or /internal
routes, nor their schemas), every operation is tagged with the part of the shop it belongs
to, and ``servers`` is this same origin, so a "Try it out" in the docs page calls the shop
it is read on. A backend that is down or not configured leaves its paths out and the
document says so (``info.description`` and ``x-missing-services``) rather than failing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from shopkit.app import SERVICE_PATHS, package_version
from shopkit.errors import UpstreamUnavailable
from shopkit.openapi import build_openapi
from svc_gateway.keys import BACKENDS
from svc_gateway.pages.rendering import SHOP_NAME
from svc_gateway.proxy import API_PREFIXES, METHODS

log = logging.getLogger("shop.gateway.docs")

GATEWAY = "gateway"
# What each part of the shop is, as its tag says (also the order Swagger UI shows them in).
TAG_DESCRIPTIONS = {
    "products": "The catalogue and its stock (the product service)",
    "users": "Accounts, logins and tokens (the user service)",
    "cart": "Each customer's cart (the cart service)",
    "orders": "Checkout and orders (the order service)",
    GATEWAY: "The gateway's own: the catalogue's and the products' pictures, and this "
    "documentation",
}
_OPERATIONS = frozenset(method.lower() for method in METHODS)  # what the gateway forwards
_REF_PREFIX = "#/components/"

DESCRIPTION = (
    "The shop's public API as this gateway serves it: the routes of the product, user, cart "
    "and order services, each from that service's own document. Every answer is JSON in one "
    'envelope: `{"success": true, "data": ...}`, or `{"success": false, "error": "<a '
    'sentence>", "code": "<snake_case>"}` for a refusal. Routes marked with a lock need a '
    "token: get one from `POST /api/users/login` (or `/api/users/register`) and give it to "
    "**Authorize**."
)


class UnreadableDocument(Exception):
    """A backend answered with something that is not an OpenAPI document we can merge."""


@dataclass(frozen=True)
class Part:
    """The public part of one service's document: its paths (each operation tagged) and the
    components they use."""

    service: str
    paths: dict[str, dict[str, Any]]
    components: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class MissingPart:
    """A backend whose routes are not in the document this time, and why (for people)."""

    service: str
    prefix: str
    reason: str


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _objects_in(value: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object anywhere in ``value``, itself included."""
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _objects_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _objects_in(item)


def _refs_in(value: Any) -> list[str]:
    return [obj["$ref"] for obj in _objects_in(value) if isinstance(obj.get("$ref"), str)]


def _used_components(
    paths: dict[str, dict[str, Any]], components: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The components the paths refer to, directly or through other components: a schema
    only an internal route answers with is not the public's business."""
    used: dict[str, dict[str, Any]] = {}
    waiting = _refs_in(paths)
    # shopkit.openapi writes each answer's shape into its operation (titled with the shape's
    # name) and lists it among the schemas as well: those of public routes are kept too, so
    # the docs' list of schemas shows them.
    schemas = components.get("schemas", {})
    titles = {obj["title"] for obj in _objects_in(paths) if isinstance(obj.get("title"), str)}
    waiting += [f"{_REF_PREFIX}schemas/{title}" for title in sorted(titles) if title in schemas]
    # A security requirement names its scheme rather than referring to it.
    for item in paths.values():
        for operation in item.values():
            for requirement in operation.get("security", []):
                waiting += [f"{_REF_PREFIX}securitySchemes/{name}" for name in requirement]
    while waiting:
        ref = waiting.pop()
        if not ref.startswith(_REF_PREFIX):
            raise UnreadableDocument(f"{ref} is not a component of the document")
        kind, _, name = ref.removeprefix(_REF_PREFIX).partition("/")
        if name in used.get(kind, {}):
            continue
        if name not in components.get(kind, {}):
            raise UnreadableDocument(f"{ref} refers to nothing")
        used.setdefault(kind, {})[name] = components[kind][name]
        waiting.extend(_refs_in(components[kind][name]))
    return used


def public_part(service: str, document: Any, prefixes: Iterable[str], tag: str) -> Part:
    """The paths of ``document`` under any of ``prefixes`` (only the methods the gateway
    forwards), tagged ``tag``, with the components they use. Raises ``UnreadableDocument``
    for anything that is not a document of the shape shopkit.openapi builds."""
    if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
        raise UnreadableDocument("no paths")
    components = document.get("components", {})
    if not isinstance(components, dict) or not all(
        isinstance(entries, dict) for entries in components.values()
    ):
        raise UnreadableDocument("components that are not named objects")
    prefixes = tuple(prefixes)
    paths: dict[str, dict[str, Any]] = {}
    for path, item in document["paths"].items():
        if not any(_under(path, prefix) for prefix in prefixes):
            continue
        if not isinstance(item, dict):
            raise UnreadableDocument(f"{path} is not a path item")
        operations = {}
        for method, operation in item.items():
            if method not in _OPERATIONS:
                continue
            security = operation.get("security", []) if isinstance(operation, dict) else None
            if not isinstance(security, list) or not all(isinstance(r, dict) for r in security):
                raise UnreadableDocument(f"{method} {path} is not an operation")
            # Tagged by the part of the shop it belongs to: the docs group operations by it.
            operations[method] = {**operation, "tags": [tag]}
        if operations:
            paths[path] = operations
    return Part(service, paths, _used_components(paths, components))


def gateway_part(app: web.Application) -> Part:
    """The gateway's own public routes: what it answers itself (the catalogue's pictures,
    these docs), less its service endpoints and the proxies the backends' parts replace."""
    document = build_openapi(app, "", "")
    proxied = tuple(f"/api/{prefix}" for prefix in API_PREFIXES)
    public = [
        path
        for path in document["paths"]
        if path not in SERVICE_PATHS and not any(_under(path, prefix) for prefix in proxied)
    ]
    return public_part(GATEWAY, document, public, GATEWAY)


async def backend_part(app: web.Application, prefix: str, service: str) -> Part | MissingPart:
    """The public part of a backend's document, asked for with the gateway's client (and
    so its timeouts); what is missing instead, and why, when it cannot be had."""
    client = app[BACKENDS].get(service)
    if client is None:
        return MissingPart(service, prefix, "it is not configured on this gateway")
    try:
        reply = await client.get("/openapi.json")
    except UpstreamUnavailable:
        return MissingPart(service, prefix, "it is not answering right now")
    if reply.status != 200:
        return MissingPart(service, prefix, f"it answered {reply.status}")
    try:
        return public_part(service, reply.body, [f"/api/{prefix}"], prefix)
    except UnreadableDocument as exc:
        log.warning("the %s service's OpenAPI document cannot be merged: %s", service, exc)
        return MissingPart(service, prefix, "its document could not be read")


def _renamed_refs(value: Any, renames: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            key: renames.get(item, item)
            if key == "$ref" and isinstance(item, str)
            else _renamed_refs(item, renames)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_renamed_refs(item, renames) for item in value]
    return value


def _merged_components(parts: list[Part]) -> tuple[dict[str, dict[str, Any]], list[Part]]:
    """One set of components for every part. A name two services use for the same thing
    is kept once; for different things, each service's gets its own name,
    ``<service>.<name>``, and that service's references follow (deterministic, whatever
    order the answers came in)."""
    renames: dict[str, dict[str, str]] = {part.service: {} for part in parts}
    merged: dict[str, dict[str, Any]] = {}
    kinds = sorted({kind for part in parts for kind in part.components})
    for kind in kinds:
        names = sorted({name for part in parts for name in part.components.get(kind, {})})
        for name in names:
            holders = [part for part in parts if name in part.components.get(kind, {})]
            first = holders[0].components[kind][name]
            if all(part.components[kind][name] == first for part in holders):
                continue
            for part in holders:
                renames[part.service][f"{_REF_PREFIX}{kind}/{name}"] = (
                    f"{_REF_PREFIX}{kind}/{part.service}.{name}"
                )
    renamed_parts = []
    for part in parts:
        ref_renames = renames[part.service]
        components: dict[str, dict[str, Any]] = {}
        for kind, entries in part.components.items():
            for name, value in entries.items():
                new = ref_renames.get(f"{_REF_PREFIX}{kind}/{name}", f"{_REF_PREFIX}{kind}/{name}")
                components.setdefault(kind, {})[new.rsplit("/", 1)[1]] = _renamed_refs(
                    value, ref_renames
                )
        paths = _renamed_refs(part.paths, ref_renames)
        schemes = {
            old.rsplit("/", 1)[1]: new.rsplit("/", 1)[1]
            for old, new in ref_renames.items()
            if old.startswith(f"{_REF_PREFIX}securitySchemes/")
        }
        for item in paths.values():  # requirements name their scheme, not a $ref
            for operation in item.values():
                if "security" in operation:
                    operation["security"] = [
                        {schemes.get(name, name): scopes for name, scopes in requirement.items()}
                        for requirement in operation["security"]
                    ]
        renamed_parts.append(Part(part.service, paths, components))
        for kind, entries in components.items():
            merged.setdefault(kind, {}).update(entries)
    return {kind: dict(sorted(merged[kind].items())) for kind in sorted(merged)}, renamed_parts


def _description(missing: list[MissingPart]) -> str:
    if not missing:
        return DESCRIPTION
    lines = [
        f"- the {part.service} service's (`/api/{part.prefix}/...`): {part.reason}"
        for part in missing
    ]
    return (
        f"{DESCRIPTION}\n\n**Routes missing from this document right now**, whose service "
        "could not be asked for its own (they may still work; reload this page in a few "
        "seconds to ask again):\n\n" + "\n".join(lines)
    )


def merge(parts: list[Part], missing: list[MissingPart], version: str) -> dict[str, Any]:
    """The one document of ``parts`` (in the order given), naming what is ``missing``."""
    components, parts = _merged_components(parts)
    paths: dict[str, dict[str, Any]] = {}
    for part in parts:
        paths.update(part.paths)
    tags_used = {tag for item in paths.values() for op in item.values() for tag in op["tags"]}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": f"{SHOP_NAME} API",
            "version": version,
            "description": _description(missing),
        },
        # Relative: calls go to the origin the document was read from, the gateway itself.
        "servers": [{"url": "/", "description": "This shop"}],
        "tags": [
            {"name": tag, "description": text}
            for tag, text in TAG_DESCRIPTIONS.items()
            if tag in tags_used
        ],
        "paths": paths,
        "components": components,
    }
    if missing:
        document["x-missing-services"] = [part.service for part in missing]
    return document


async def public_document(app: web.Application) -> dict[str, Any]:
    """The merged document as of now: every backend asked at once; never raises for a
    backend that is down, slow or answers nonsense."""
    answers = await asyncio.gather(
        *(backend_part(app, prefix, service) for prefix, service in API_PREFIXES.items())
    )
    parts = [answer for answer in answers if isinstance(answer, Part)]
    missing = [answer for answer in answers if isinstance(answer, MissingPart)]
    return merge([*parts, gateway_part(app)], missing, package_version())
