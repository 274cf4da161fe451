"""POST /api/create and POST /api/copy: making models, in Ollama's current shapes.

/api/create takes ``{"model", "from" | "files", "system", "template", "parameters",
"messages", "adapters", "license", "stream"}`` and streams ``{"status": …}`` objects ending in
``{"status": "success"}`` (or one object, unstreamed); ``quantize`` is refused, since
switchboard serves GGUFs as they are. /api/copy takes ``{"source", "destination"}``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.errors import APIError, service_errors
from gateway.json_response import JSONBytes
from gateway.pull import progress_stream
from gateway.request_body import parse_object
from runner.service import CreateError, CreateProgress, CreateRequest, ModelService


def _text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise APIError(400, f"'{name}' must be a string", param=name)
    return value


def _digests(data: dict[str, Any], name: str) -> dict[str, str]:
    value = data.get(name) or {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise APIError(400, f"'{name}' must map file names to blob digests", param=name)
    return value


def _messages(data: dict[str, Any]) -> tuple[dict[str, str], ...]:
    value = data.get("messages") or []
    if not isinstance(value, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in value):
        raise APIError(400, "'messages' must be a list of {role, content} objects",
                       param="messages")
    return tuple({"role": m["role"], "content": m["content"]} for m in value)


def create_request(data: dict[str, Any]) -> CreateRequest:
    """Ollama's create body, checked before anything is done."""
    model = _text(data, "model") or _text(data, "name")  # older clients send "name"
    if not model:
        raise APIError(400, "'model' is required: the name of the model to make", param="model")
    if data.get("quantize"):
        raise APIError(400, "quantize is not supported: switchboard runs GGUFs as they are; "
                       "quantize with llama.cpp's llama-quantize, then create from that file",
                       param="quantize", code="not_supported")
    if data.get("modelfile") is not None:
        raise APIError(400, "'modelfile' is the old create body: send its parts (from, system, "
                       "parameters …), as ollama 0.5 and later do, or use `switchboard create "
                       "-f Modelfile`", param="modelfile")
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise APIError(400, "'parameters' must be an object", param="parameters")
    license_ = data.get("license") or []
    licenses = [license_] if isinstance(license_, str) else license_
    if not isinstance(licenses, list) or not all(isinstance(t, str) for t in licenses):
        raise APIError(400, "'license' must be a string or a list of strings", param="license")
    return CreateRequest(
        model=model, base=_text(data, "from"), files=_digests(data, "files"),
        system=_text(data, "system"), template=_text(data, "template"), parameters=parameters,
        messages=_messages(data), adapters=_digests(data, "adapters"), license=tuple(licenses))


async def create(request: Request) -> Response:
    data = parse_object(await request.body())
    creating = create_request(data)
    service: ModelService = request.app.state.service

    async def job(emit: CreateProgress) -> None:
        await service.create(creating, emit)

    if data.get("stream") is False:
        with service_errors(creating.model):
            await job(lambda event: None)
        return JSONBytes({"status": "success"})
    return StreamingResponse(progress_stream(job, lambda event: None, "create", (CreateError,)),
                             media_type="application/x-ndjson")


async def copy(request: Request) -> Response:
    data = parse_object(await request.body())
    source, destination = _text(data, "source"), _text(data, "destination")
    if not source or not destination:
        raise APIError(400, "'source' and 'destination' are both required",
                       param="destination" if source else "source")
    service: ModelService = request.app.state.service
    with service_errors(source):
        service.copy(source, destination)
    return Response(status_code=200)


routes = [Route("/api/create", create, methods=["POST"]),
          Route("/api/copy", copy, methods=["POST"])]
