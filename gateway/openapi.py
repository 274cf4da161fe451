"""GET /openapi.json: the gateway's own API, as clients and fuzzers see it."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.json_response import JSONBytes

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

_MESSAGES = {"type": "array", "minItems": 1, "items": {
    "type": "object", "required": ["role"],
    "properties": {"role": {"enum": ["system", "user", "assistant", "tool"]},
                   "content": _CONTENT}}}
RESPONSES: dict[str, Any] = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string"},
        "input": {"type": ["string", "array"]},
        "instructions": {"type": "string"},
        "stream": {"type": "boolean"},
        "max_output_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "keep_alive": _KEEP_ALIVE,
    },
}
MESSAGES: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages", "max_tokens"],
    "properties": {
        "model": {"type": "string"},
        "messages": _MESSAGES,
        "system": {"type": ["string", "array"]},
        "max_tokens": {"type": "integer", "minimum": 1},
        "stream": {"type": "boolean"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "stop_sequences": {"type": "array", "items": {"type": "string"}},
        "keep_alive": _KEEP_ALIVE,
    },
}
COUNT_TOKENS: dict[str, Any] = {
    "type": "object", "required": ["model", "messages"],
    "properties": {"model": {"type": "string"}, "messages": _MESSAGES},
}
RERANK: dict[str, Any] = {
    "type": "object",
    "required": ["model", "query", "documents"],
    "properties": {
        "model": {"type": "string"},
        "query": {"type": "string"},
        "documents": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "top_n": {"type": "integer", "minimum": 1},
        "return_documents": {"type": "boolean"},
        "keep_alive": _KEEP_ALIVE,
    },
}
TOKENIZE: dict[str, Any] = {
    "type": "object", "required": ["model", "content"],
    "properties": {"model": {"type": "string"}, "content": {"type": "string"},
                   "add_special": {"type": "boolean"}},
}
DETOKENIZE: dict[str, Any] = {
    "type": "object", "required": ["model", "tokens"],
    "properties": {"model": {"type": "string"},
                   "tokens": {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                         "maximum": 100000}}},
}
APPLY_TEMPLATE: dict[str, Any] = {
    "type": "object", "required": ["model", "messages"],
    "properties": {"model": {"type": "string"}, "messages": _MESSAGES},
}
_OLLAMA_OPTIONS = {"type": "object", "properties": {
    "num_ctx": {"type": "integer", "minimum": 1, "maximum": 4096},
    "num_predict": {"type": "integer", "minimum": -2, "maximum": 16},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_k": {"type": "integer", "minimum": 0},
    "seed": {"type": "integer"},
    "stop": {"type": "array", "items": {"type": "string"}},
}}
OLLAMA_CHAT: dict[str, Any] = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "items": {
            "type": "object", "required": ["role"],
            "properties": {"role": {"enum": ["system", "user", "assistant", "tool"]},
                           "content": {"type": "string"}}}},
        "stream": {"type": "boolean", "description": "NDJSON lines (default true)"},
        "format": {"type": ["string", "object"]},
        "options": _OLLAMA_OPTIONS,
        "keep_alive": _KEEP_ALIVE,
        "tools": {"type": "array"},
    },
}
OLLAMA_GENERATE: dict[str, Any] = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {"type": "string"},
        "prompt": {"type": "string", "description": "empty: load the model (unload with "
                                                    "keep_alive 0)"},
        "system": {"type": "string"},
        "raw": {"type": "boolean"},
        "stream": {"type": "boolean", "description": "NDJSON lines (default true)"},
        "format": {"type": ["string", "object"]},
        "options": _OLLAMA_OPTIONS,
        "keep_alive": _KEEP_ALIVE,
    },
}
OLLAMA_EMBED: dict[str, Any] = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string"},
        "input": {"type": ["string", "array"]},
        "dimensions": {"type": "integer", "minimum": 1},
        "options": _OLLAMA_OPTIONS,
        "keep_alive": _KEEP_ALIVE,
    },
}
OLLAMA_EMBEDDINGS: dict[str, Any] = {
    "type": "object", "required": ["model", "prompt"],
    "properties": {"model": {"type": "string"}, "prompt": {"type": "string"},
                   "keep_alive": _KEEP_ALIVE},
}
MODEL_ONLY: dict[str, Any] = {"type": "object", "required": ["model"],
                              "properties": {"model": {"type": "string"}}}

_DIGESTS: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
CREATE: dict[str, Any] = {
    "type": "object", "required": ["model"],
    "properties": {
        "model": {"type": "string"}, "from": {"type": "string"}, "files": _DIGESTS,
        "adapters": _DIGESTS, "system": {"type": "string"}, "template": {"type": "string"},
        "parameters": {"type": "object"}, "license": {"type": "string"},
        "messages": {"type": "array", "items": {"type": "object", "properties": {
            "role": {"type": "string"}, "content": {"type": "string"}}}},
        "quantize": {"type": "string", "description": "refused: GGUFs run as they are"},
        "stream": {"type": "boolean"},
    },
}
COPY: dict[str, Any] = {"type": "object", "required": ["source", "destination"],
                        "properties": {"source": {"type": "string"},
                                       "destination": {"type": "string"}}}

# Fuzzed by the tests; /api/pull is left out of that (it would reach for the network).
REQUEST_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETION,
    "/v1/embeddings": EMBEDDING,
    "/v1/responses": RESPONSES,
    "/v1/responses/input_tokens": RESPONSES,
    "/v1/messages": MESSAGES,
    "/v1/messages/count_tokens": COUNT_TOKENS,
    "/v1/rerank": RERANK,
    "/rerank": RERANK,
    "/tokenize": TOKENIZE,
    "/detokenize": DETOKENIZE,
    "/apply-template": APPLY_TEMPLATE,
    "/api/chat": OLLAMA_CHAT,
    "/api/generate": OLLAMA_GENERATE,
    "/api/embed": OLLAMA_EMBED,
    "/api/embeddings": OLLAMA_EMBEDDINGS,
    "/api/show": MODEL_ONLY,
    "/api/unload": UNLOAD,
    "/api/create": CREATE,
    "/api/copy": COPY,
}
DELETE_BODIES: dict[str, dict[str, Any]] = {"/api/delete": MODEL_ONLY}
_GETS = {
    "/v1/models": "the models clients may name",
    "/v1/models/{model}": "one model, by name or alias",
    "/api/ps": "loaded runners",
    "/api/nodes": "the fleet: each node with its models, loaded runners and free memory",
    "/api/tags": "the models clients may name, in Ollama's shape",
    "/api/version": "switchboard's version",
    "/health": "the gateway is up",
    "/": "'switchboard is running', for clients that probe the root as Ollama's",
    "/favicon.ico": "the console's icon (SVG)",
    "/metrics": "Prometheus metrics (text)",
    "/openapi.json": "this document",
    "/api/events": "server-sent events of runner, queue, memory, request, pull and log changes "
                   "(?logs=RUNNER adds that runner's output)",
    "/ui": "the operator console (redirects to /ui/)",
    "/ui/": "the operator console, a static page",
}


def _responses(ok: str) -> dict[str, Any]:
    error = {"description": "an error in the shape of the route's API family: OpenAI's, "
                            "Anthropic's on /v1/messages, Ollama's on /api",
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
    for path, schema in DELETE_BODIES.items():
        paths[path] = {"delete": {
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}},
            "responses": _responses("deleted"),
        }}
    paths["/api/pull"] = {"post": {
        "requestBody": {"required": True, "content": {"application/json": {"schema": PULL}}},
        "responses": _responses("NDJSON progress objects ending in success or an error"),
    }}
    digest = [{"name": "digest", "in": "path", "required": True, "schema": {"type": "string"},
               "description": "sha256:<64 hex digits>"}]
    paths["/api/blobs/{digest}"] = {
        "head": {"parameters": digest, "responses": _responses("200 if the blob is stored")},
        "post": {"parameters": digest,
                 "requestBody": {"required": True, "content": {
                     "application/octet-stream": {"schema": {"type": "string",
                                                             "format": "binary"}}}},
                 "responses": _responses("201 once stored (it must hash to its digest)")},
    }
    paths["/_node/{mode}/{path}"] = {"post": {
        "description": "node-to-node: a request another node of the fleet already translated, "
                       "run on this node's runner of that mode (chat, embeddings, reranking or "
                       "primary); needs the cluster key",
        "parameters": [{"name": name, "in": "path", "required": True,
                        "schema": {"type": "string"}} for name in ("mode", "path")],
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": _responses("the runner's answer, as it sent it"),
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
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header",
                                           "name": "x-api-key"}},
        },
    }


async def openapi(request: Request) -> Response:
    return JSONBytes(document())


routes = [Route("/openapi.json", openapi, methods=["GET"])]
