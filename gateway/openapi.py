"""GET /openapi.json: the gateway's own API, as clients and fuzzers see it."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.responses import JSONBytes

_NULLABLE_STR: dict[str, Any] = {"type": ["string", "null"]}
ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": _NULLABLE_STR, "code": _NULLABLE_STR},
    }},
}
_KEEP_ALIVE = {"type": ["string", "number"], "description": "seconds or e.g. '5m'; 0 unloads"}
_CONTENT = {"type": ["string", "array", "null"]}
CHAT: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["role"],
            "properties": {"role": {"enum": ["system", "developer", "user", "assistant",
                                             "tool"]},
                           "content": _CONTENT}}},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "n": {"type": "integer", "minimum": 1},
        "seed": {"type": "integer"},
        "stop": {"type": ["string", "array"]},
        "response_format": {"type": "object"},
        "tools": {"type": "array"},
        "keep_alive": _KEEP_ALIVE,
    },
}
COMPLETION: dict[str, Any] = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        "model": {"type": "string"},
        "prompt": {"type": ["string", "array"]},
        "stream": {"type": "boolean"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "n": {"type": "integer", "minimum": 1},
        "keep_alive": _KEEP_ALIVE,
    },
}
EMBEDDING: dict[str, Any] = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string"},
        "input": {"type": ["string", "array"]},
        "encoding_format": {"enum": ["float", "base64"]},
        "keep_alive": _KEEP_ALIVE,
    },
}
UNLOAD: dict[str, Any] = {"type": "object", "required": ["model"],
                          "properties": {"model": {"type": "string"}}}
PULL: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string", "description": "[host/][namespace/]name[:tag]"},
        "insecure": {"type": "boolean", "description": "plain HTTP to the registry"},
        "stream": {"type": "boolean", "description": "NDJSON progress (default true)"},
        "url": {"type": "string", "description": "a .gguf URL instead of a registry name"},
        "sha256": {"type": "string", "description": "the file's digest, required with url"},
    },
}

# Fuzzed by the tests; /api/pull is left out of that (it would reach for the network).
REQUEST_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETION,
    "/v1/embeddings": EMBEDDING,
    "/api/unload": UNLOAD,
}
_GETS = {
    "/v1/models": "the models clients may name",
    "/v1/models/{model}": "one model, by name or alias",
    "/api/ps": "loaded runners",
    "/health": "the gateway is up",
    "/metrics": "Prometheus metrics (text)",
}


def _responses(ok: str) -> dict[str, Any]:
    error = {"description": "an OpenAI-shaped error",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {"200": {"description": ok}, "default": error}


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, schema in REQUEST_BODIES.items():
        paths[path] = {"post": {
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}},
            "responses": _responses("JSON, or an SSE stream when stream is true"),
        }}
    paths["/api/pull"] = {"post": {
        "requestBody": {"required": True, "content": {"application/json": {"schema": PULL}}},
        "responses": _responses("NDJSON progress objects ending in success or an error"),
    }}
    for path, what in _GETS.items():
        operation: dict[str, Any] = {"responses": _responses(what)}
        if "{model}" in path:
            operation["parameters"] = [{"name": "model", "in": "path", "required": True,
                                        "schema": {"type": "string"}}]
        paths[path] = {"get": operation}
    return {
        "openapi": "3.1.0",
        "info": {"title": "switchboard", "version": "0.1.0"},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi(request: Request) -> Response:
    return JSONBytes(document())


routes = [Route("/openapi.json", openapi, methods=["GET"])]
