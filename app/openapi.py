"""The words the OpenAPI document is written in: operations, parameters, bodies and answers.

Each feature describes its own routes with these, next to them (``app/<feature>/openapi.py``);
``app/docs/openapi.py`` puts the parts together and says why the document is written by hand.
This module imports no feature, so a feature's description never imports the assembly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

Schema = dict[str, Any]
JSON = "application/json"

# status -> (name of the shared response, the codes it carries, its description); the responses
# themselves are components of the assembled document.
ERRORS: dict[int, tuple[str, list[str], str]] = {
    400: ("BadRequest", ["validation_error"], "Malformed input (any route: also text that is not valid UTF-8)."),
    401: ("Unauthorized", ["auth_required", "invalid_credentials"], "No credentials, or a header that is wrong."),
    403: ("Forbidden", ["forbidden", "device_mismatch"], "Credentials that may not do this."),
    404: ("NotFound", ["not_found"], "Unknown resource."),
    409: ("Conflict", ["conflict"], "The pair is registered already."),
    413: ("PayloadTooLarge", ["payload_too_large"], "The body is over 64 KiB."),
    415: ("UnsupportedMediaType", ["unsupported_media_type"], "The body is not application/json."),
    422: ("Unprocessable", ["validation_error"], "opensensor's status for a body or query that does not fit."),
    503: ("Unavailable", ["db_unavailable", "cache_unavailable"], "MongoDB (or, for /cache, Redis) is unreachable."),
}

BEARER = [{"bearerAuth": []}]
DEVICE_KEY = [{"apiKeyAuth": []}]
OPTIONAL_READER = [{}, {"bearerAuth": []}, {"apiKeyAuth": []}]
TIMESTAMP: Schema = {"type": "string", "format": "date-time", "pattern": "Z$"}
# A link's parameters: the device pair of the answer (a new key, a push) for the next operation.
PAIR_FROM_RESPONSE = {"device_id": "$response.body#/device_id", "device_name": "$response.body#/device_name"}
# The types Flask serves a page's static files as.
STATIC_TYPES = (
    "text/javascript",
    "text/css",
    "text/plain",
    "text/markdown",
    "image/png",
    "image/svg+xml",
    "application/octet-stream",
)


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: Mapping[str, Schema], required: list[str] | tuple[str, ...] = (), closed: bool = True) -> Schema:
    schema: Schema = {"type": "object", "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def json_body(schema: Schema, example: Any | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["examples"] = {"example": {"value": example}}
    return {JSON: media}


def ok(description: str, schema: Schema, example: Any, links: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": json_body(schema, example)}
    if links:
        response["links"] = links
    return response


def operation(
    operation_id: str,
    summary: str,
    tag: str,
    responses: dict[int, dict[str, Any]],
    *,
    errors: tuple[int, ...] = (),
    security: list[dict[str, list[str]]] | None = None,
    parameters: list[Schema] | None = None,
    body: dict[str, Any] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """An operation; 400 is on every one (the input guard answers it on any route)."""
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = body
    op["security"] = security if security is not None else []
    codes = {str(status): response for status, response in responses.items()}
    for status in sorted({400, *errors}):
        codes.setdefault(str(status), {"$ref": f"#/components/responses/{ERRORS[status][0]}"})
    op["responses"] = dict(sorted(codes.items()))
    return op


def path_param(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def query_param(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def page_operation(operation_id: str, summary: str, tag: str) -> dict[str, Any]:
    """An HTML page (its script and styles are the page's static files)."""
    return operation(
        operation_id,
        summary,
        tag,
        {200: {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}},
    )


def files_in(folder: Path) -> list[str]:
    """Every file of a page's static folder, by its path in the folder."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def static_operation(operation_id: str, tag: str, folder: Path) -> dict[str, Any]:
    return operation(
        operation_id,
        "The page's assets",
        tag,
        {
            200: {
                "description": "The file.",
                "content": {media: {"schema": {"type": "string"}} for media in STATIC_TYPES},
            }
        },
        errors=(404,),
        parameters=[path_param("filename", {"enum": files_in(folder)}, "A file of the page.")],
    )
