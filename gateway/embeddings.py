"""POST /v1/embeddings, served by the model's embeddings-mode runner."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.routing import Route

from gateway.errors import APIError
from gateway.payload import is_text_or_tokens, parse_object, require_model, take_keep_alive
from gateway.relay import Relay
from runner.scheduler import RunnerOptions

PATH = b"/v1/embeddings"
_EMBEDDINGS = RunnerOptions(embeddings=True)


async def embeddings(request: Request) -> Relay:
    body = await request.body()
    data = parse_object(body)
    model = require_model(data)
    if not is_text_or_tokens(data.get("input")):
        raise APIError(400, "'input' must be a string, an array of strings, or token arrays",
                       param="input")
    keep_alive, present = take_keep_alive(data)
    if present:
        body = orjson.dumps(data)
    return Relay.for_request(request, model, PATH, body, False, keep_alive, _EMBEDDINGS)


routes = [Route("/v1/embeddings", embeddings, methods=["POST"])]
