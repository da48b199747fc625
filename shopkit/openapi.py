"""Endpoints described once: the models that validate a route also document it.

``@endpoint(...)`` wraps a handler so that its query and body are validated against the
models it names (the handler receives them as ``query=`` / ``body=``), its roles are
checked, and ``build_openapi`` can later describe it in ``/openapi.json``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, TypeAdapter, WithJsonSchema, with_config
from pydantic.json_schema import GenerateJsonSchema
from typing_extensions import is_typeddict

from shopkit.keys import IDENTITY
from shopkit.parsing import TEXT_PATTERN
from shopkit.revocation import authorize
from shopkit.validation import read_json_object, validate_body, validate_query

Handler = Callable[..., Awaitable[web.StreamResponse]]

# Each answer's shape is a TypedDict marked ``@answer_shape``: the data layer builds the
# answer as a plain dict typed as that class (no model is made per request, the fast path the
# benchmarks measure), and the document describes the same class, listing every key an answer
# has (``extra="forbid"``: additionalProperties false). The tests check every answer against it.
answer_shape = with_config(ConfigDict(extra="forbid"))
# A moment in an answer, as shopkit.domain.timestamp writes it.
Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    304: "Not modified (the ETag matched)",
    400: "Malformed or invalid input",
    401: "Missing, malformed or expired token",
    402: "The payment was declined",
    403: "Authenticated but not allowed",
    404: "No such resource",
    409: "Conflict with the current state",
    413: "Body over 1 MiB (or over the larger limit the operation states)",
    415: "A body in a media type or Content-Encoding the service does not read",
    429: "Too many attempts",
    503: "A dependency is down or timed out",
}


@dataclass(frozen=True)
class EndpointSpec:
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None  # a model, list[model], or a plain JSON schema dict
    status: int = 200
    roles: tuple[str, ...] | None = None  # None: public; (): any authenticated caller
    paged: bool = False
    errors: tuple[int, ...] = ()
    description: str | None = None
    raw: bool = False  # the answer is not the JSON envelope (metrics, proxies)
    content_type: str = "application/json"
    # Raises (403, 404) when the caller may not reach what the path names; runs before the
    # query and body are read, so nobody learns how their input would have been judged.
    access: Callable[[web.Request], Any] | None = None
    # Documentation only: what each path parameter holds (the handlers read them with
    # shopkit.parsing, and a malformed one is a 404), and the request headers the route
    # reads, as OpenAPI parameter objects.
    path: type[BaseModel] | None = None
    headers: tuple[dict[str, Any], ...] = ()
    # Documentation only: a multipart/form-data body's schema (the handler reads it with
    # shopkit.uploads.read_form_data), and the encoding object of its parts.
    form: dict[str, Any] | None = None
    form_encoding: dict[str, Any] | None = None


def endpoint(
    summary: str,
    *,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: Any = None,
    status: int = 200,
    roles: tuple[str, ...] | None = None,
    paged: bool = False,
    errors: tuple[int, ...] = (),
    description: str | None = None,
    raw: bool = False,
    content_type: str = "application/json",
    access: Callable[[web.Request], Any] | None = None,
    path: type[BaseModel] | None = None,
    headers: tuple[dict[str, Any], ...] = (),
    form: dict[str, Any] | None = None,
    form_encoding: dict[str, Any] | None = None,
) -> Callable[[Handler], Handler]:
    spec = EndpointSpec(
        summary,
        body,
        query,
        response,
        status,
        roles,
        paged,
        errors,
        description,
        raw,
        content_type,
        access,
        path,
        headers,
        form,
        form_encoding,
    )

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def validated(request: web.Request) -> web.StreamResponse:
            kwargs: dict[str, Any] = {}
            if roles is not None:  # auth first: an anonymous caller learns nothing more
                request[IDENTITY] = await authorize(request, roles)
            if access is not None:  # then whether it may reach this resource
                access(request)
            if query is not None:
                kwargs["query"] = validate_query(query, request.query)
            if body is not None:
                kwargs["body"] = validate_body(body, await read_json_object(request))
            return await handler(request, **kwargs)

        validated.__endpoint__ = spec  # type: ignore[attr-defined]
        return validated

    return decorate


_PATH_PARAM = re.compile(r"{(\w+)}")
_REF = "#/components/schemas/{model}"


def _is_shape(value: Any) -> bool:
    return is_typeddict(value) or (isinstance(value, type) and issubclass(value, BaseModel))


def _models_in(value: Any) -> list[Any]:
    """The model or answer shape a response names (itself, or a list's items)."""
    if _is_shape(value):
        return [value]
    return [arg for arg in getattr(value, "__args__", ()) if _is_shape(arg)][:1]


def _response_schema(spec: EndpointSpec) -> dict[str, Any]:
    if isinstance(spec.response, dict):
        data: dict[str, Any] = spec.response
    elif spec.response is None:
        data = {}
    else:
        data = TypeAdapter(spec.response).json_schema(ref_template=_REF, mode="serialization")
    if spec.raw:
        return data
    schema: dict[str, Any] = {
        "type": "object",
        "required": ["success", "data"],
        "properties": {"success": {"const": True}, "data": data},
    }
    if spec.paged:
        for key in ("count", "total", "page", "limit"):
            schema["properties"][key] = {"type": "integer", "minimum": 0}
            schema["required"].append(key)
    return schema


def _text_rules(schema: Any, definitions: dict[str, Any], seen: set[str]) -> None:
    """Give every string a client sends, in ``schema`` and the definitions it refers to,
    the rule shopkit.validation applies to all of them (no control characters but tab and
    line breaks), unless it has a stricter pattern, an enum or a format of its own."""
    if isinstance(schema, list):
        for item in schema:
            _text_rules(item, definitions, seen)
        return
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF.format(model="")):
        name = ref.rsplit("/", 1)[1]
        if name not in seen and name in definitions:
            seen.add(name)
            _text_rules(definitions[name], definitions, seen)
    if schema.get("type") == "string" and not {"pattern", "enum", "const", "format"} & set(schema):
        schema["pattern"] = TEXT_PATTERN
    for key, value in schema.items():
        if key != "$ref":
            _text_rules(value, definitions, seen)


def _path_parameters(path: str, model: type[BaseModel] | None) -> list[dict[str, Any]]:
    properties = model.model_json_schema(by_alias=True)["properties"] if model else {}
    parameters = []
    for name in _PATH_PARAM.findall(path):
        schema = dict(properties.get(name, {"type": "string"}))
        description = schema.pop("description", None)
        schema.pop("title", None)
        parameter = {"name": name, "in": "path", "required": True, "schema": schema}
        parameters.append(parameter | ({"description": description} if description else {}))
    return parameters


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(by_alias=True)
    _text_rules(schema, {}, set())
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
            **({"description": prop["description"]} if "description" in prop else {}),
        }
        for name, prop in schema.get("properties", {}).items()
    ]


ERROR_SCHEMA = {
    "type": "object",
    "required": ["success", "error", "code"],
    "properties": {
        "success": {"const": False},
        "error": {"type": "string", "description": "A sentence for a person"},
        "code": {"type": "string", "description": "A snake_case machine code"},
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def build_openapi(app: web.Application, title: str, version: str) -> dict[str, Any]:
    """An OpenAPI 3.1 document of every route described with ``@endpoint``."""
    paths: dict[str, dict[str, Any]] = {}
    models: dict[tuple[Any, str], None] = {}
    for route in app.router.routes():
        spec: EndpointSpec | None = getattr(route.handler, "__endpoint__", None)
        if spec is None or route.method == "HEAD" or route.resource is None:
            continue
        path = route.resource.canonical
        method = route.method.lower() if route.method != "*" else "get"
        operation: dict[str, Any] = {"summary": spec.summary, "parameters": []}
        if spec.description:
            operation["description"] = spec.description
        operation["parameters"] += _path_parameters(path, spec.path)
        operation["parameters"] += [dict(header) for header in spec.headers]
        if spec.query is not None:
            operation["parameters"] += _query_parameters(spec.query)
        if spec.body is not None:
            models[(spec.body, "validation")] = None
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": _REF.format(model=spec.body.__name__)}}
                },
            }
        if spec.form is not None:
            media: dict[str, Any] = {"schema": spec.form}
            if spec.form_encoding:
                media["encoding"] = spec.form_encoding
            operation["requestBody"] = {"required": True, "content": {"multipart/form-data": media}}
        for model in _models_in(spec.response):
            models[(model, "serialization")] = None
        responses: dict[str, Any] = {
            str(spec.status): {
                "description": _STATUS_TEXT.get(spec.status, "Success"),
                "content": {spec.content_type: {"schema": _response_schema(spec)}},
            }
        }
        errors = set(spec.errors)
        if spec.body is not None or spec.query is not None:
            errors.add(400)
        if spec.body is not None or spec.form is not None:
            errors.update((400, 413, 415))
        if spec.roles is not None:
            errors.add(401)
            errors.add(503)  # whether the token was revoked could not be confirmed
            operation["security"] = [{"bearerAuth": []}]
            if spec.roles:
                errors.add(403)
        for status in sorted(errors):
            responses[str(status)] = {
                "description": _STATUS_TEXT.get(status, "Error"),
                "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}},
            }
        operation["responses"] = responses
        paths.setdefault(path, {})[method] = operation

    # As pydantic's models_json_schema, for answer shapes (TypedDicts) as well as models.
    inputs = [(key, key[1], TypeAdapter(key[0]).core_schema) for key in models]
    refs, definitions = GenerateJsonSchema(ref_template=_REF).generate_definitions(inputs)
    schemas = dict(definitions)
    accepted: set[str] = set()
    for ((_model, mode), _), ref in refs.items():
        if mode == "validation":
            _text_rules(ref, schemas, accepted)
    schemas["Error"] = ERROR_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
