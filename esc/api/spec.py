"""The served OpenAPI document, and the 405 answer that follows it.

Two things FastAPI cannot see are added here, once for every operation, so
no route has to repeat them: the descriptor's schema (its body is read raw,
YAML or JSON), and the errors every operation may answer with, each an
application/problem+json body. A 405 names in `Allow` the methods the
document lists for the path, so the two cannot disagree.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from esc.api.problems import PROBLEM_JSON, problem
from esc.descriptor import Descriptor
from esc.engine.idempotency import HEADER, REPLAYED_HEADER

PROBLEM_SCHEMA = {
    "type": "object",
    "description": "An error (RFC 9457): what went wrong and what to do about it.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail"],
}

# status -> (description, response headers); 401 and 429 only where credentials are asked for.
ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: (
        "Malformed request: an unparsable body, nesting deeper than allowed, an unknown "
        "or repeated query parameter, or a NUL in the URL",
        {},
    ),
    401: (
        "Missing or wrong credentials (HTTP basic)",
        {"WWW-Authenticate": {"schema": {"type": "string"}}},
    ),
    404: ("No such resource", {}),
    409: ("Conflict: a write in flight for the deployment, or a duplicate name", {}),
    413: ("Request body larger than [api] max_body_bytes", {}),
    422: ("Invalid content: the detail names each invalid field", {}),
    429: (
        "Too many failed logins from this client address",
        {
            "Retry-After": {
                "description": "Seconds until this client may try again.",
                "schema": {"type": "integer"},
            }
        },
    ),
    431: ("Request headers larger than [api] max_header_bytes or more than max_headers", {}),
    503: ("Temporarily unavailable: MAINTENANCE, or the controller is starting", {}),
}
_NEEDS_CREDENTIALS = {401, 429}


def _error_response(status: int) -> dict[str, Any]:
    description, headers = ERRORS[status]
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def _declare_errors(operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    # FastAPI's own 422 describes its default JSON error body, which this API never sends.
    if "HTTPValidationError" in str(responses.get("422", "")):
        del responses["422"]
    secured = bool(operation.get("security"))
    for status in ERRORS:
        if status in _NEEDS_CREDENTIALS and not secured:
            continue
        responses.setdefault(str(status), _error_response(status))


# The API refuses a NUL anywhere in the URL (no database stores one): say so.
_NO_NUL = "^[^\\x00]*$"


def _string_schemas(schema: dict[str, Any]) -> list[dict[str, Any]]:
    if schema.get("type") == "string":
        return [schema]
    return [s for option in schema.get("anyOf", []) for s in _string_schemas(option)]


def _describe_parameters(operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        # A query string cannot carry a JSON null: an optional parameter that
        # is absent is the null, so the null alternative FastAPI adds is dropped.
        options = schema.get("anyOf")
        if options and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            if len(rest) == 1:
                schema.pop("anyOf")
                schema.update(rest[0])
        for string in _string_schemas(schema):
            if "pattern" not in string and "enum" not in string and "format" not in string:
                string["pattern"] = _NO_NUL


REPLAYED = {
    "description": "`true` on the answer to a retry with an Idempotency-Key already used "
    "for this request: the first answer again, the write not done twice.",
    "schema": {"type": "string", "enum": ["true"]},
}


def _declare_replays(operation: dict[str, Any]) -> None:
    """The replay header on the success answers of an operation that takes a key."""
    parameters = operation.get("parameters", [])
    if not any(p["in"] == "header" and p["name"] == HEADER for p in parameters):
        return
    for status, response in operation.get("responses", {}).items():
        if status.startswith("2"):
            response.setdefault("headers", {})[REPLAYED_HEADER] = REPLAYED


# What a created resource is addressed by afterwards (OpenAPI links), so a
# client or a stateful fuzzer follows the name and not, say, the tenant's id.
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, str]]] = {
    ("/v0/tenants", "post", "201"): {
        "DeleteTenant": ("/v0/tenants/{tenant}", "delete", "tenant=name"),
    },
    ("/v0/subscriptions", "post", "201"): {
        "DeleteSubscription": ("/v0/subscriptions/{sub_id}", "delete", "sub_id=id"),
    },
    ("/v0/scripts/{name}", "put", "200"): {
        "GetScript": ("/v0/scripts/{name}", "get", "name=name"),
        "DeleteScript": ("/v0/scripts/{name}", "delete", "name=name"),
    },
    ("/v0/deployments", "post", "202"): {
        "GetTransaction": ("/v0/transactions/{tx_id}", "get", "tx_id=transaction_id"),
    },
}


def _operation_ref(path: str, method: str) -> str:
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def _declare_links(paths: dict[str, Any]) -> None:
    for (path, method, status), links in LINKS.items():
        response = paths[path][method]["responses"][status]
        response["links"] = {
            name: {
                "operationRef": _operation_ref(target, target_method),
                "parameters": {binding.split("=")[0]: f"$response.body#/{binding.split('=')[1]}"},
            }
            for name, (target, target_method, binding) in links.items()
        }


def build(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    descriptor = Descriptor.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(descriptor.pop("$defs", {}))
    components["Descriptor"] = descriptor
    components["Problem"] = PROBLEM_SCHEMA
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            _declare_errors(operation)
            _describe_parameters(operation)
            _declare_replays(operation)
    _declare_links(schema["paths"])
    return schema


_HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def _template(path: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", path)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


def allowed_methods(schema: dict[str, Any], path: str) -> list[str]:
    """The methods `schema` lists for the paths that `path` matches."""
    methods: set[str] = set()
    for template, operations in schema.get("paths", {}).items():
        if _template(template).fullmatch(path):
            methods |= {m.upper() for m in operations if m in _HTTP_METHODS}
    return sorted(methods)


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(405)
    async def _method_not_allowed(request: Request, exc: HTTPException) -> JSONResponse:
        allowed = allowed_methods(app.openapi(), request.url.path)
        detail = f"{request.method} is not served at {request.url.path}; use {', '.join(allowed)}"
        return problem(405, "Method not allowed", detail, headers={"Allow": ", ".join(allowed)})
