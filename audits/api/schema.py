"""OpenAPI schema additions: the errors every operation can answer with, documented once."""

from __future__ import annotations

ERRORS = {
    "400": "The request is invalid; `detail` says what to send instead.",
    "401": "No valid token: send `Authorization: Token <key>`.",
    "403": "Your role does not allow this; `detail` names the roles that may.",
    "404": "No such object, or not one you may read (or a page past the last).",
    "429": "Too many requests, or too many failed authentications from your address; "
    "`detail` and the Retry-After header say how long to wait.",
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def add_error_responses(result, generator, request, public):
    """drf-spectacular post-processing hook: an `Error` component and, on each operation,
    the error responses it does not document already."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = {
        "type": "object",
        "properties": {
            "detail": {"type": "string"},
            "errors": {"type": "object", "additionalProperties": True},
            "problems": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["detail"],
    }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path in result.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            for code, description in ERRORS.items():
                responses.setdefault(code, {"description": description, "content": error})
            responses["429"].setdefault("headers", RETRY_AFTER)
    return result
